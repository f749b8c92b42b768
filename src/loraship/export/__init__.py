"""Export stage: merge the adapter chain, convert to GGUF, quantize with llama.cpp, verify."""
