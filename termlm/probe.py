"""The live check behind ``termlm doctor``, run as a child: ``python -m termlm.probe JSON``.

It loads the model through the same engine every command uses, decodes a prompt
and generates up to 32 tokens, and prints one JSON object with the timings. If
llama.cpp crashes, only this child dies; the doctor reports the signal.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

PROBE_TOKENS = 32
PROBE_PROMPT = "Count from one to one hundred in words, separated by commas."


def probe(args: dict[str, Any]) -> dict[str, Any]:
    from termlm.engine.batched import BatchedEngine
    from termlm.engine.types import ChatRequest, Message, SamplingParams

    started = time.perf_counter()
    engine = BatchedEngine(
        args["path"], name=args["name"], n_ctx=int(args["n_ctx"]),
        n_ctx_train=int(args.get("n_ctx_train") or 0), parallel=1,
        threads=args.get("threads"), n_gpu_layers=args.get("n_gpu_layers", "auto"),
        flash_attn=args.get("flash_attn", "auto"),
        cpu_extra_buffers=args.get("cpu_extra_buffers", "auto"))
    load_s = time.perf_counter() - started
    try:
        request = ChatRequest((Message("user", PROBE_PROMPT),),
                              SamplingParams(temperature=0.0, max_tokens=PROBE_TOKENS))
        completion = engine.complete(request)
    finally:
        engine.close()
    usage, timings = completion.usage, completion.timings
    prompt_rate = usage.prompt_tokens / timings.ttft_s if timings.ttft_s > 0 else 0.0
    return {"ok": True, "load_s": round(load_s, 3), "prompt_tokens": usage.prompt_tokens,
            "prompt_tokens_per_s": round(prompt_rate, 1),
            "tokens": usage.completion_tokens,
            "tokens_per_s": round(timings.completion_tokens_per_s, 1),
            "text": completion.text}


def main(argv: list[str]) -> int:
    from termlm.errors import TermlmError

    try:
        result = probe(json.loads(argv[1]))
    except TermlmError as exc:
        result = {"ok": False, "error": exc.message}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
