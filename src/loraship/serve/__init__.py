"""Serve stage: Modelfile and chat template for Ollama, registration, the Ollama client."""
