#!/usr/bin/env python3
"""Build the tiny checkpoint of every supported model family into build/cache/families/ (`make families`).

Each is a family's real transformers architecture at a tiny width with its real vocabulary and chat
template, taken from llama.cpp's test material in the cached llama-cpp-python sdist
(loraship.base.families). Idempotent: a second run costs nothing.
"""

import sys

from loraship.base import families
from loraship.errors import LorashipError
from loraship.export.toolchain import llama_models_dir

if __name__ == "__main__":
    def log(s: str) -> None:
        print(s, file=sys.stderr)

    try:
        models = llama_models_dir(log)
        for name in families.FAMILIES:
            print(f"{name}: {families.build_fixture(name, models, log=log)}")
    except LorashipError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
