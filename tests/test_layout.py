"""The code reads as the pipeline: one package per stage, and no stage reaches up to a later one."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "loraship"

# Pipeline order. A module may import from its own layer and the ones before it, never after.
LAYERS = ["errors", "paths", "config", "store", "data", "base", "train", "export", "serve", "evaluate",
          "release", "review", "pipeline", "inspect", "demo", "cli"]


def _layer(module: str) -> str:
    """'loraship.evaluate.compare' -> 'evaluate'; 'loraship' (its __init__) -> 'errors' (no imports)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "loraship":  # from loraship import pipeline, paths
                found += [(node.lineno, f"loraship.{a.name}") for a in node.names]
            elif node.module.startswith(("loraship.", "benchmarks")):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith(("loraship.", "benchmarks"))]
    return found


def _modules() -> list[tuple[str, Path]]:
    return [("loraship." + ".".join(p.relative_to(SRC).with_suffix("").parts), p) for p in sorted(SRC.rglob("*.py"))]


def test_every_module_belongs_to_a_known_layer():
    unknown = {m for m, _ in _modules() if _layer(m.removesuffix(".__init__")) not in LAYERS}
    assert not unknown, f"modules outside the pipeline's layers: {sorted(unknown)}"


def test_no_stage_imports_a_later_stage():
    upward = []
    for module, path in _modules():
        own = LAYERS.index(_layer(module.removesuffix(".__init__")))
        for line, target in _imports(path):
            if target.startswith("benchmarks"):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
                continue
            layer = _layer(target)
            if layer in LAYERS and LAYERS.index(layer) > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({layer} comes after {_layer(module)})")
    assert not upward, "\n".join(upward)


def test_benchmarks_are_not_part_of_the_package():
    assert (ROOT / "benchmarks" / "bench.py").is_file()
    assert not list(SRC.rglob("bench*.py"))


@pytest.mark.slow
def test_the_wheel_ships_no_benchmark_or_test_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("loraship-*.whl"))).namelist()
    assert "loraship/evaluate/compare.py" in names
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/")) or "/bench" in n]
