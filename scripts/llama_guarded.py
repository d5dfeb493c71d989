#!/usr/bin/env python3
"""Run llama-cpp-python code with termlm's AMX guard, as termlm's own engines load models.

Usage:  python scripts/llama_guarded.py -m llama_cpp.server --model M ...   (a module)
        python scripts/llama_guarded.py -c 'from llama_cpp import Llama; ...' ARGS  (code)
        python scripts/llama_guarded.py script.py ARGS                      (a script)

The setting comes from TERMLM_CPU_EXTRA_BUFFERS (auto, on or off; default auto), so the
test suite's llama_cpp.server and the benchmark's Llama baselines load exactly as termlm
does on the same machine. llama-cpp-python's Llama has no option for llama.cpp's
use_extra_bufts; termlm.engine.backend.patch_llama_defaults sets it on the defaults.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    from termlm.engine.backend import patch_llama_defaults
    from termlm.engine.llama_common import package

    if len(sys.argv) < 2:
        sys.exit(__doc__)
    patch_llama_defaults(os.environ.get("TERMLM_CPU_EXTRA_BUFFERS", "auto") or "auto")
    package()  # the whole llama_cpp package (Llama, the server), not only its bindings
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "-m" and rest:
        sys.argv = [rest[0], *rest[1:]]
        runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
    elif what == "-c" and rest:
        sys.argv = ["-c", *rest[1:]]
        exec(compile(rest[0], "<guarded>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = [what, *rest]
        runpy.run_path(what, run_name="__main__")


if __name__ == "__main__":
    main()
