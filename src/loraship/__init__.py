"""loraship: incremental LoRA versions of a local LLM, shipped to Ollama behind a gate."""

__version__ = "0.1.0"
