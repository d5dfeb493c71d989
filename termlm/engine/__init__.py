"""The inference seam: termlm's own request/result types and engine implementations.

Only :mod:`termlm.engine.llama` imports ``llama_cpp``; callers speak the types in
:mod:`termlm.engine.types`.
"""
