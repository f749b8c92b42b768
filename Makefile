# loraship — `make help` lists every target.
# Stage targets call the CLI; pass MODEL=, VERSION=, TAGS=, ALIAS=, DATA=, ARGS= as needed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LORASHIP := $(VENV)/bin/loraship
TORCH_VERSION ?= 2.13.0
EXTRAS ?= train,export
MODEL ?= demo
VERSION ?=
TAGS ?=
ALIAS ?= latest
DATA ?=
ARGS ?=
PYTEST_ARGS ?=

include build/docker.mk

.PHONY: help setup data train export verify register compare promote rollback versions doctor demo test lint bench bench-forgetting clean

help: ## Show this help
	@echo "loraship: incremental LoRA versions of a local LLM, shipped to Ollama behind a gate"
	@echo
	@echo "Usage: make <target> [MODEL=name] [VERSION=vN] [ARGS='--extra flags']"
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Typical run:  make demo        (everything, on the bundled SmolLM2-135M)"
	@echo "              make data MODEL=mining DATA=new.jsonl && make train export register MODEL=mining"

$(VENV)/.installed: pyproject.toml
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	# CPU torch from the local wheel; an unpinned torch would pull GBs of CUDA packages.
	$(PY) -m pip install torch==$(TORCH_VERSION)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -e '.[$(EXTRAS),dev]'
	$(PY) build/provision_llamacpp.py
	touch $@

setup: $(VENV)/.installed ## Create .venv, install loraship with its extras, provision llama.cpp's converter

data: ## Prepare the next version's data: make data MODEL=m DATA=file.jsonl
	$(STAGE_SETUP)
	$(RUN_CLI) data -m $(MODEL) $(DATA) $(ARGS)

train: ## Train the newest version (RUNNER=docker runs it in the GPU image)
	$(STAGE_SETUP)
	$(RUN_TRAIN) -m $(MODEL) $(VERSION) $(ARGS)

export: ## Merge, convert to GGUF, quantize to Q4_K_M, verify
	$(STAGE_SETUP)
	$(RUN_GPU_CLI) export -m $(MODEL) $(VERSION) $(ARGS)

verify: ## Re-check checksums of an exported version
	$(STAGE_SETUP)
	$(RUN_CLI) verify -m $(MODEL) $(VERSION) $(ARGS)

register: ## Write the Modelfile and create MODEL:vN in Ollama
	$(STAGE_SETUP)
	$(RUN_CLI) register -m $(MODEL) $(VERSION) $(ARGS)

compare: ## Compare tags: make compare TAGS="m:v1 m:v2" (exit 1 when the gate fails)
	$(STAGE_SETUP)
	$(RUN_CLI) compare $(or $(TAGS),$(error TAGS="model:vA model:vB" is required)) $(ARGS)

promote: ## Move MODEL:ALIAS to VERSION behind a passed gate
	$(STAGE_SETUP)
	$(RUN_CLI) promote $(MODEL):$(or $(VERSION),$(error VERSION=vN is required)) --alias $(ALIAS) $(ARGS)

rollback: ## Move MODEL:ALIAS back to the previously promoted version
	$(STAGE_SETUP)
	$(RUN_CLI) rollback -m $(MODEL) --alias $(ALIAS) $(ARGS)

versions: ## Table of MODEL's versions, gates and tags
	$(STAGE_SETUP)
	$(RUN_CLI) versions -m $(MODEL)

doctor: setup ## What is installed, the training device, converter and Ollama status
	$(LORASHIP) doctor

demo: setup ## The whole pipeline end to end on SmolLM2-135M-Instruct (about 10 min on 2 CPU cores)
	$(PY) -m loraship.demo $(ARGS)

test: setup ## Run the test suite (what CI runs)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup lint-docker ## ruff + hadolint
	$(VENV)/bin/ruff check src tests

bench: setup ## Benchmarks vs the plain way, JSON in bench-results/
	$(PY) -m benchmarks.bench $(ARGS)

bench-forgetting: setup ## The forgetting experiment on the demo model (JSON + PNG)
	$(PY) -m benchmarks.bench_forgetting $(ARGS)

clean: ## Remove caches (keeps runs/ and .venv)
	rm -rf .pytest_cache .ruff_cache bench-results
