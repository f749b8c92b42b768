#!/usr/bin/env python3
"""Provision llama.cpp's converter (convert_hf_to_gguf.py + matching gguf-py) into build/cache.

Run by `make setup` and the Dockerfile. Idempotent: a second run costs nothing.
The converter comes from the sdist of the llama-cpp-python version that is installed,
so converter, gguf-py and the compiled quantizer are one llama.cpp revision.
"""

import sys

from loraship.errors import LorashipError
from loraship.export.toolchain import provision

if __name__ == "__main__":
    try:
        path = provision(log=lambda s: print(s, file=sys.stderr))
    except LorashipError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(path)
