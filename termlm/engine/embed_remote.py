"""Embeddings from an OpenAI-compatible server: ``POST /v1/embeddings``.

The same HTTP client as chat requests (``termlm.engine.remote``): the same
timeouts, retries, credentials and ``--concurrency`` requests in flight. The
server's vectors are L2-normalised here, as in-process ones are, so the two
compare alike. Long texts are split by ``termlm.engine.embedding`` first, with
the server's tokenizer when it has one (llama-server's ``/tokenize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from termlm.config import DEFAULT_EMBED_MODEL, Settings
from termlm.engine.embedding import EmbedInfo, normalise
from termlm.errors import EngineError

if TYPE_CHECKING:
    from termlm.engine.embedding import Vector
    from termlm.engine.remote import RemoteEngine

PER_REQUEST = 32  # texts per request
DEFAULT_CTX = 512  # tokens per text when the server does not say (BERT-sized models)


class RemoteEmbedder:
    def __init__(self, engine: RemoteEngine, *, n_ctx: int = DEFAULT_CTX) -> None:
        self.engine = engine
        self._info: EmbedInfo | None = None
        self._n_ctx = n_ctx

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteEmbedder:
        from termlm.engine.remote import RemoteEngine

        explicit = settings.embed_model != DEFAULT_EMBED_MODEL or \
            settings.source.get("embed_model", "default") != "default"
        chat = replace(settings, model=settings.embed_model,
                       source={**settings.source,
                               "model": "flag" if explicit else "default"})
        engine = RemoteEngine.from_settings(chat)
        reported = engine.info.n_ctx_train if engine.info.n_ctx_train != chat.n_ctx else 0
        return cls(engine, n_ctx=reported or DEFAULT_CTX)

    @property
    def info(self) -> EmbedInfo:
        if self._info is None:  # the dimensions are known once the server has answered
            probe = self.engine.embeddings(["dimensions"])
            self._info = EmbedInfo(name=self.engine.info.name, path=self.engine.info.path,
                                   dims=len(probe[0]), n_ctx=self._n_ctx, pooling="server")
        return self._info

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text) + 2  # the [CLS] and [SEP] the server adds

    def embed_pieces(self, pieces: Sequence[str]) -> list[Vector]:
        import numpy as np

        batches = [list(pieces[i:i + PER_REQUEST]) for i in range(0, len(pieces), PER_REQUEST)]
        out: list[Vector] = []
        dims = self.info.dims
        for result in self.engine.embeddings_many(batches):
            if isinstance(result, Exception):
                raise result if isinstance(result, EngineError) else EngineError(str(result))
            for vector in result:
                if len(vector) != dims:
                    raise EngineError(f"server {self.engine.info.path} sent {len(vector)} "
                                      f"numbers for a {dims}-dimension embedding")
                out.append(normalise(np.asarray(vector, dtype=np.float32)))
        return out

    def close(self) -> None:
        self.engine.close()
