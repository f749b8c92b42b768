"""The base model as a GGUF, built like the versions', for the base+retrieval row.

The baseline must differ from vN only by the fine-tune: same converter, same outtype,
same quant type (export.quants[0]), same chat template (the base folder's own). The
GGUF is built once per base content hash and kept in runs/<model>/base/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from loraship import paths
from loraship.base import model as base_model
from loraship.config import Config
from loraship.errors import VersionError
from loraship.store.versions import Version

BASE_DIR = "base"


def base_gguf_path(cfg: Config, version: Version) -> Path:
    train = version.stage("train")
    if not train:
        raise VersionError(f"{version.model} {version.id} is not trained, so its base is unknown: "
                           f"run `loraship train --model {version.model}`")
    quant = cfg.export.quants[0].upper()
    return paths.model_dir(version.model) / BASE_DIR / f"base-{train['base']['sha256'][:12]}-{quant}.gguf"


def build_base_gguf(cfg: Config, version: Version, log: Callable[[str], None] = lambda s: None) -> Path:
    """The cached GGUF of `version`'s training base; converted and quantized on first use."""
    from loraship.export import gguf_tools

    out = base_gguf_path(cfg, version)
    if out.is_file():
        return out
    base_path = base_model.check_unchanged(version.stage("train")["base"])
    quant = out.stem.rsplit("-", 1)[-1]
    work = out.parent / f"{paths.TMP_PREFIX}{out.stem}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        ref = work / f"base-{cfg.export.outtype.upper()}.gguf"
        log(f"converting the base model {base_path} to GGUF for the base+retrieval row (once)")
        meta = {"general.name": f"{version.model} base", "general.basename": version.model,
                "general.version": "base", "general.base_models": [{"name": base_path.name}]}
        gguf_tools.convert(base_path, ref, cfg.export.outtype, meta, log)
        gguf_tools.quantize(ref, work / out.name, quant, threads=os.cpu_count() or 1)
        os.replace(work / out.name, out)  # a killed build leaves only the temp folder behind
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
