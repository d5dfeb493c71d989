"""termlm: local GGUF language models in your terminal."""

__version__ = "0.1.0"
