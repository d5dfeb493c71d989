"""Models: the catalog, pulling and verifying files, GGUF header inspection, resolution.

Nothing here imports llama_cpp: a model is checked from its header alone.
"""
