"""The base model: resolve and fingerprint it, build it from a GGUF, the demo (SmolLM2) and tiny test models."""
