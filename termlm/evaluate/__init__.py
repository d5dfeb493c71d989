"""Measuring models on this machine: speed sweeps (``termlm bench``), each in child processes.

Nothing here imports llama_cpp: the measurements run in children (``bench_probe``) on
the engine layer's own code.
"""
