"""Open the embedding engine a command asked for: resolve the model, check it, load it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from termlm.config import Settings
from termlm.output import notice

if TYPE_CHECKING:
    from termlm.engine.embedding import Embedder


def open_embedder(settings: Settings, pooling: str | None = None) -> Embedder:
    """The embedder for ``settings.embed_model``: in-process, or ``/v1/embeddings``."""
    from termlm.activity import Activity

    if settings.engine == "openai":
        from termlm.engine.embed_remote import RemoteEmbedder

        return RemoteEmbedder.from_settings(settings)
    from termlm.engine.embed_llama import LlamaEmbedder
    from termlm.models.resolve import resolve_embedding_model

    model = resolve_embedding_model(settings.embed_model, settings,
                                    allow_pull=not settings.offline, notify=notice,
                                    pooling=pooling)
    with Activity() as activity:
        activity.say(f"loading {model.name}...")
        return LlamaEmbedder(
            str(model.path), name=model.name, pooling=model.pooling,
            threads=settings.threads, n_gpu_layers=settings.n_gpu_layers,
            cpu_extra_buffers=settings.cpu_extra_buffers, flash_attn=settings.flash_attn,
            max_tokens=model.context,
            query_prefix=model.query_prefix, document_prefix=model.document_prefix)
