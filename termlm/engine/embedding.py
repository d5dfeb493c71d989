"""Embedding engines: texts in, L2-normalised vectors out.

The protocol every embedder follows (in-process llama.cpp in
``termlm.engine.embed_llama``, ``/v1/embeddings`` in ``termlm.engine.embed_remote``,
and ``FakeEmbedder`` for tests). Long texts are never cut silently: a text over
the model's context is split into pieces that fit, each piece is embedded,
and the pieces' vectors are mean-pooled (then normalised again); the result
says how many pieces there were. ``on_overflow="error"`` refuses such a text,
``"truncate"`` keeps only what fits.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from termlm.errors import EngineError, TermlmError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vector = npt.NDArray[np.float32]

POOLINGS = ("mean", "cls", "last")
OVERFLOWS = ("chunk", "error", "truncate")


@dataclass(frozen=True)
class EmbedInfo:
    name: str  # the model as the catalog (or the user) names it
    path: str  # the file, or the server URL
    dims: int
    n_ctx: int  # the most tokens one piece may have
    pooling: str  # mean, cls or last
    query_prefix: str = ""  # prepended to a search query (nomic: "search_query: ")
    document_prefix: str = ""  # prepended to each text stored (nomic: "search_document: ")


@dataclass(frozen=True)
class Embedded:
    vector: Vector  # float32, unit length
    chunks: int  # pieces the text was split into (1: it fit)
    tokens: int  # tokens embedded, over all pieces
    truncated: bool = False


class TooLong(TermlmError):
    """A text over the context with --on-overflow error."""


class Embedder(Protocol):
    @property
    def info(self) -> EmbedInfo: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as embedded (special tokens the model adds included)."""
        ...

    def embed_pieces(self, pieces: Sequence[str]) -> list[Vector]:
        """One unit vector per piece; every piece fits the context."""
        ...

    def close(self) -> None: ...


def embed_texts(embedder: Embedder, texts: Sequence[str], *, on_overflow: str = "chunk",
                kind: str = "document") -> list[Embedded]:
    """Embed ``texts`` (with the model's prefix for ``kind``: document or query), each in
    as many pieces as it needs; all the pieces go to the engine together."""
    import numpy as np

    info = embedder.info
    prefix = info.query_prefix if kind == "query" else info.document_prefix
    plans: list[tuple[list[str], int, bool]] = []
    for text in texts:
        plans.append(_plan(embedder, prefix + text, on_overflow))
    flat = [piece for pieces, _, _ in plans for piece in pieces]
    vectors = embedder.embed_pieces(flat) if flat else []
    out: list[Embedded] = []
    at = 0
    for pieces, tokens, truncated in plans:
        part = vectors[at:at + len(pieces)]
        at += len(pieces)
        # several pieces: their mean, each weighted alike, then unit length again
        vector = part[0] if len(part) == 1 else normalise(np.mean(np.stack(part), axis=0))
        out.append(Embedded(vector.astype(np.float32), len(pieces), tokens, truncated))
    return out


def _plan(embedder: Embedder, text: str, on_overflow: str) -> tuple[list[str], int, bool]:
    """The pieces of one text, its token count, and whether it was cut."""
    from termlm.chunking import split_text

    limit = embedder.info.n_ctx
    tokens = embedder.count_tokens(text)
    if tokens <= limit:
        return [text], tokens, False
    if on_overflow == "error":
        raise TooLong(f"the text is {tokens} tokens, more than the model's context of {limit}"
                      " (use --on-overflow chunk or truncate)")
    overhead = embedder.count_tokens("")  # the special tokens each piece gets
    budget = max(1, limit - overhead)
    pieces = [p for p in split_text(text, budget, _bare(embedder, overhead)) if p.strip()]
    if on_overflow == "truncate":
        return pieces[:1], embedder.count_tokens(pieces[0]), True
    return pieces, sum(embedder.count_tokens(p) for p in pieces), False


def _bare(embedder: Embedder, overhead: int) -> Callable[[str], int]:
    return lambda text: embedder.count_tokens(text) - overhead


def normalise(vector: Vector) -> Vector:
    import numpy as np

    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise EngineError("the model returned an empty (zero) embedding")
    return (vector / norm).astype(np.float32)


def check_pooling(value: str | None) -> str | None:
    if value is not None and value not in POOLINGS:
        raise UsageError(f"--pooling must be one of {', '.join(POOLINGS)}, not {value!r}")
    return value


def content_hash(text: str, model: str) -> str:
    """What identifies an embedding: the model and the exact text."""
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()


class FakeEmbedder:
    """For tests: a bag of hashed words, so texts sharing words point the same way.

    ``n_ctx`` is counted in words plus one (a [CLS]-like token)."""

    def __init__(self, *, dims: int = 256, n_ctx: int = 64, name: str = "fake-embed",
                 query_prefix: str = "", document_prefix: str = "") -> None:
        self._info = EmbedInfo(name=name, path="(fake)", dims=dims, n_ctx=n_ctx,
                               pooling="mean", query_prefix=query_prefix,
                               document_prefix=document_prefix)
        self.calls: list[list[str]] = []
        self.closed = False

    @property
    def info(self) -> EmbedInfo:
        return self._info

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text)) + 1

    def embed_pieces(self, pieces: Sequence[str]) -> list[Vector]:
        import numpy as np

        self.calls.append(list(pieces))
        out: list[Vector] = []
        for piece in pieces:
            vector = np.zeros(self._info.dims, dtype=np.float32)
            for word in set(_WORD.findall(piece.lower())) - _STOP:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                vector[int.from_bytes(digest[:4], "little") % self._info.dims] += 1.0
            vector[0] += 0.01  # never all zero
            out.append(normalise(vector))
        return out

    def close(self) -> None:
        self.closed = True


_WORD = re.compile(r"\w+")
_STOP = frozenset(["a", "an", "and", "the", "on", "of", "in", "is", "to", "as"])
