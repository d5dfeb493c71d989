"""Open the engine a command asked for: resolve the model, check its file, load it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from termlm.config import Settings
from termlm.engine.types import Engine
from termlm.output import notice

if TYPE_CHECKING:
    from termlm.models.resolve import ResolvedModel


def effective_ctx(requested: int, trained: int | None) -> int:
    """The context window: the model's trained context, capped by the setting."""
    if trained and trained > 0:
        return min(requested, trained)
    return requested


def default_parallel(n_ctx: int) -> int:
    """Sequence slots for batch work: one per 512 tokens of context, at most 8."""
    return max(1, min(8, n_ctx // 512))


def open_engine(settings: Settings, *, batch: bool = False) -> Engine:
    """The engine for ``settings``; ``batch`` commands get a multi-sequence engine."""
    if settings.engine == "openai":
        from termlm.engine.remote import RemoteEngine

        return RemoteEngine.from_settings(settings)
    from termlm.models.resolve import resolve_chat_model

    model = resolve_chat_model(settings.model, settings, allow_pull=not settings.offline,
                               notify=notice)
    trained = model.header.context_length or 0  # resolve_model checked the GGUF header
    n_ctx = effective_ctx(settings.n_ctx, trained)
    parallel = (settings.parallel or default_parallel(n_ctx)) if batch else 1
    # One engine for everything: at parallel 1 it evaluates exactly like LlamaEngine (the
    # reference implementation on llama-cpp-python's Llama, kept for tests), but it needs
    # only llama.cpp's ctypes bindings, which start ~0.15 s faster than the full package.
    from termlm.activity import Activity
    from termlm.runstats import record

    with Activity() as activity:
        activity.say(f"loading {model.name}...")
        engine = _load(model, settings, n_ctx, trained, parallel)
    record(model=model.name, path=str(model.path), file_size=model.header.file_size,
           quant=model.header.quantization, load_s=engine.load_s, n_ctx=n_ctx,
           parallel=parallel)
    return engine


def _load(model: ResolvedModel, settings: Settings, n_ctx: int, trained: int,
          parallel: int) -> Engine:
    from termlm.engine.batched import BatchedEngine

    return BatchedEngine(
        str(model.path),
        name=model.name,
        n_ctx=n_ctx,
        n_ctx_train=trained,
        parallel=parallel,
        threads=settings.threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
        cpu_extra_buffers=settings.cpu_extra_buffers,
        seed=settings.seed,
        turn_format=model.turn_format,
        notify=notice,
    )
