"""The training image, built and run for real: `make image`, then the tiny model's data → train →
export inside it through `make ... RUNNER=docker`, with the engine the Makefile finds (Docker
where its daemon answers, else Podman, as on this project's CI machines).

`make test-image` runs these (marker `container`); the image is built once per session and
cached by the engine's layers, so a second run rebuilds only what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import qa_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("LORASHIP_TEST_IMAGE", "loraship:cpu")
UID = "4321"  # not the caller's: files the container writes must belong to the uid it was given

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _make(*args: str, timeout: float = 1800, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "RUNNER"}}
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], env=env, text=True,
                          capture_output=True, timeout=timeout, **kw)
    if check:
        assert proc.returncode == 0, f"make {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _engine() -> list[str]:
    """The engine command make uses (with its CONTAINERS_CONF), as an argv prefix."""
    out = _make("-s", "print-engine").stdout.split()
    env = [w for w in out if "=" in w]
    return ["env", *env, *[w for w in out if "=" not in w]]


@pytest.fixture(scope="module")
def image():
    if shutil.which("podman") is None and subprocess.run(["docker", "info"], capture_output=True).returncode:
        assert not os.environ.get("CI"), "CI must build the image: build/system_packages.sh installs podman"
        pytest.skip("no container engine: neither a Docker daemon nor podman")
    if os.geteuid() != 0:
        pytest.skip("these tests run the container as another uid and chown its folder: run them as root (CI does)")
    started = time.monotonic()
    _make("image", "IMAGE_VARIANT=cpu", f"IMAGE={IMAGE}")
    print(f"make image: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return IMAGE


@pytest.fixture
def project(tmp_path, tiny_base):
    """A project folder as a user has it: the base model, train/tiny.yaml and a batch of rows,
    owned by a uid that is not root."""
    proj = tmp_path / "proj"
    shutil.copytree(tiny_base, proj / "bases" / "tiny")
    (proj / "train").mkdir()
    cfg = {"base_model": "bases/tiny",
           "train": {"num_train_epochs": 2, "max_seq_length": 96, "early_stopping_patience": 0}}
    (proj / "train" / "tiny.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    write_jsonl(proj / "b1.jsonl", qa_rows("alpha", 24, "alpha"))
    # make creates these as the caller, who is that uid on a real machine (here: root, acting for it)
    (proj / "runs").mkdir()
    (proj / ".hf").mkdir()
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(proj)], check=True)
    return proj


def _stage_args(proj: Path, image: str) -> list[str]:
    return ["RUNNER=docker", "IMAGE_VARIANT=cpu", f"IMAGE={image}", f"WORKSPACE={proj}",
            f"RUNS_DIR={proj / 'runs'}", f"HF_CACHE={proj / '.hf'}", f"DOCKER_USER={UID}:{UID}", "MODEL=tiny"]


def _host_cli(proj: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loraship.cli", *args], cwd=proj, text=True, capture_output=True,
                          env={**os.environ, "LORASHIP_PROJECT": str(proj), "LORASHIP_HOME": str(proj / "runs")})


def test_train_and_export_in_the_image_give_a_finished_version_owned_by_the_caller(image, project, tmp_path):
    started = time.monotonic()
    _make(*_stage_args(project, image), "data", "DATA=b1.jsonl")
    _make(*_stage_args(project, image), "train", "export")
    print(f"data, train, export in the container: {time.monotonic() - started:.0f} s", file=sys.stderr)

    (version,) = (project / "runs" / "tiny").glob("v1_*")
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["stages"]["train"] and manifest["stages"]["export"]["verified"], manifest["stages"]["export"]
    assert (version / manifest["stages"]["export"]["ggufs"]["Q4_K_M"]).stat().st_size > 0
    # Every file the container wrote belongs to the uid it ran as: nothing root-owned is left.
    wrong = [str(p) for p in (project / "runs").rglob("*") if p.stat().st_uid != int(UID)]
    assert not wrong, wrong[:5]
    # The host's own loraship reads the version and its checksums as finished and intact.
    verified = _host_cli(project, "verify", "-m", "tiny", "v1")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The same stages run locally on a copy of the project write the same files and stages.
    local = tmp_path / "local"
    shutil.copytree(project, local, ignore=shutil.ignore_patterns("runs", ".hf"))
    for stage in (["data", "-m", "tiny", "b1.jsonl"], ["train", "-m", "tiny"], ["export", "-m", "tiny"]):
        done = _host_cli(local, *stage)
        assert done.returncode == 0, done.stdout + done.stderr
    (local_version,) = (local / "runs" / "tiny").glob("v1_*")

    def files(v: Path) -> set[str]:
        return {str(p.relative_to(v)) for p in v.rglob("*") if p.is_file() and "checkpoints" not in p.parts}

    assert files(version) == files(local_version)
    local_manifest = json.loads((local_version / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(local_manifest["stages"])
    # the same split to the byte (the recorded seed), the same artifacts recorded with checksums
    assert manifest["stages"]["data"]["files"] == local_manifest["stages"]["data"]["files"]
    assert manifest["stages"]["data"]["dataset_sha256"] == local_manifest["stages"]["data"]["dataset_sha256"]
    assert set(manifest["artifacts"]) == set(local_manifest["artifacts"])


def test_doctor_in_the_image_loads_a_portable_llama_cpp(image):
    out = subprocess.run([*_engine(), "run", "--rm", image, "doctor"], text=True, capture_output=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    # llama.cpp built for every x86-64 CPU: a variant chosen at load time, never AMX after torch
    assert "CPU variant" in text and "amx" not in text.split("CPU variant", 1)[1].split("\n", 1)[0], text


def test_ctrl_c_stops_the_container_and_leaves_no_finished_version(image, project):
    _make(*_stage_args(project, image), "data", "DATA=b1.jsonl")
    args = [*_stage_args(project, image), "train", "ARGS=--set train.num_train_epochs=300"]
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "RUNNER"}}
    # A terminal's Ctrl-C goes to the whole foreground process group: make and the engine's client.
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while not list((project / "runs" / "tiny").glob("v1_*/checkpoints/checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, out
    (version,) = (project / "runs" / "tiny").glob("v1_*")
    manifest = json.loads((version / "manifest.json").read_text())
    assert not manifest["stages"].get("train"), "an interrupted run must not look trained"
    running = subprocess.run([*_engine(), "ps", "-q", "--filter", f"ancestor={image}"], text=True,
                             capture_output=True).stdout.split()
    assert not running, f"containers still running: {running}"
