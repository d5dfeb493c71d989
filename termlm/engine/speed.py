"""Prompt and generation speed on termlm's own native context, measured as llama-bench does.

llama-bench's ``pp512`` decodes a prompt of 512 tokens in batches; its ``tg128``
generates 128 tokens one at a time from an empty context. :func:`measure_speed`
does the same on :class:`~termlm.engine.llama_common.NativeContext` (the context
``BatchedEngine`` runs every command on), with the same load path (the AMX guard,
GPU layers, flash attention, one unified KV cache) and termlm's own greedy sampler
chain, so the figures are what termlm's engine gets, sampling included. It also
times ``parallel`` sequences generating side by side in one context, one token each
per decode, as ``BatchedEngine`` batches them. Generation runs a fixed number of
tokens: an end-of-generation token is fed back like any other.

Prompt tokens are random (fixed seed), as llama-bench's: speed does not depend on
which tokens they are.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from termlm.engine.types import SamplingParams
from termlm.errors import EngineError

if TYPE_CHECKING:
    from termlm.engine.llama_common import NativeContext

_WARMUP_TOKENS = 32  # a short prompt and one step first: thread pool up, weights paged in
_GREEDY = SamplingParams(temperature=0.0)  # what `ask --temperature 0` samples with


@dataclass(frozen=True)
class SpeedTest:
    """One configuration to measure: the model file, the context and the sizes."""

    path: str
    n_ctx: int
    threads: int
    parallel: int = 1
    flash_attn: str = "auto"
    n_gpu_layers: int | str = "auto"
    cpu_extra_buffers: str = "auto"
    pp: int = 512  # prompt tokens
    tg: int = 128  # generated tokens (per sequence, when parallel > 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedTest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Speed:
    """Tokens per second; ``batched_tokens_per_s`` is summed over the sequences (None: one)."""

    load_s: float
    pp_tokens_per_s: float
    tg_tokens_per_s: float
    batched_tokens_per_s: float | None
    n_ctx: int  # the context llama.cpp made

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def misfit(pp: int, tg: int, parallel: int, n_ctx: int) -> str | None:
    """Why these sizes cannot run in a context of ``n_ctx`` tokens (None: they can)."""
    if pp > n_ctx:
        return f"a prompt of {pp} tokens does not fit in a context of {n_ctx}"
    if tg > n_ctx:
        return f"{tg} generated tokens do not fit in a context of {n_ctx}"
    if parallel > 1 and parallel * tg > n_ctx:
        return (f"{parallel} sequences of {tg} generated tokens do not fit in a context of "
                f"{n_ctx}")
    return None


def measure_speed(test: SpeedTest) -> Speed:
    """Load the model, then time the prompt, one stream and (parallel > 1) the batch."""
    from termlm.engine.backend import extra_buffers
    from termlm.engine.llama_common import (
        NativeContext,
        bindings,
        resolve_gpu_layers,
        route_llama_logs,
    )

    problem = misfit(test.pp, test.tg, test.parallel, test.n_ctx)
    if problem:
        raise EngineError(problem)
    started = time.perf_counter()
    lib = bindings()
    route_llama_logs(lib)
    native = NativeContext(
        lib, test.path, n_ctx=test.n_ctx, n_seq_max=test.parallel, threads=test.threads,
        n_gpu_layers=resolve_gpu_layers(test.n_gpu_layers), flash_attn=test.flash_attn,
        extra_buffers=extra_buffers(test.cpu_extra_buffers).use)
    load_s = time.perf_counter() - started
    try:
        if test.parallel > native.n_batch:
            raise EngineError(f"parallel {test.parallel} is more than the batch of "
                              f"{native.n_batch} tokens")
        rng = random.Random(0)
        bos = int(lib.llama_vocab_bos(native.vocab_ptr))
        start = bos if 0 <= bos < native.n_vocab else 0
        prompt = [start] + [rng.randrange(native.n_vocab) for _ in range(test.pp - 1)]
        _prompt(native, lib, prompt[:_WARMUP_TOKENS])
        native.clear()
        _generate(native, [start], 1)
        native.clear()
        pp_rate = test.pp / _prompt(native, lib, prompt)
        native.clear()
        tg_rate = test.tg / _generate(native, [start], test.tg)
        batched_rate: float | None = None
        if test.parallel > 1:
            native.clear()
            starts = [start] + [rng.randrange(native.n_vocab) for _ in range(test.parallel - 1)]
            batched_rate = test.parallel * test.tg / _generate(native, starts, test.tg)
        return Speed(load_s, pp_rate, tg_rate, batched_rate, native.n_ctx)
    finally:
        native.close()


def _prompt(native: NativeContext, lib: Any, tokens: list[int]) -> float:
    """Seconds to decode ``tokens`` into sequence 0, a batch at a time."""
    began = time.perf_counter()
    for at in range(0, len(tokens), native.n_batch):
        native.add(0, at, tokens[at : at + native.n_batch], "last")
        native.decode()
    lib.llama_synchronize(native.ctx)
    return max(time.perf_counter() - began, 1e-9)


def _generate(native: NativeContext, starts: list[int], n: int) -> float:
    """Seconds for each sequence ``i`` to generate ``n`` tokens greedily after ``starts[i]``."""
    samplers = [native.sampler(_GREEDY, 0, None) for _ in starts]
    try:
        last = list(starts)
        began = time.perf_counter()
        for pos in range(n):
            rows = [native.add_one(seq, pos, token) for seq, token in enumerate(last)]
            native.decode()
            last = [native.sample(sampler, row) for sampler, row in zip(samplers, rows,
                                                                         strict=True)]
        return max(time.perf_counter() - began, 1e-9)
    finally:
        for sampler in samplers:
            native.free_sampler(sampler)
