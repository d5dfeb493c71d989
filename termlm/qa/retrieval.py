"""Which passages answer a question: BM25, vector similarity, or both fused.

``bm25``: FTS5 finds the chunks sharing the question's words, ordered by how much
of the question (its words weighted by rarity) each contains; ``--min-score`` is
that share, below which a chunk does not count.

``vector``: the chunks nearest the question's embedding (cosine similarity).

``hybrid``: the first ``DEPTH`` chunks of each of those two rankings, ordered by
reciprocal-rank fusion (``termlm.qa.fusion``).

With ``vector`` and ``hybrid``, a passage counts only when its cosine similarity
to the question reaches ``min_similarity``; when none does, the documents don't
contain the answer. The cut-off is calibrated on a labelled set of questions by
``scripts/calibrate_qa_cutoff.py`` (for the default model, minilm).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from termlm.errors import ModelMissing, TermlmError
from termlm.qa.fusion import DEPTH, rrf

if TYPE_CHECKING:
    from termlm.engine.embedding import Embedder
    from termlm.qa.index import Index
    from termlm.qa.vectors import ChunkVectors

log = logging.getLogger("termlm.qa")
DEFAULT_MIN_SCORE = 0.35  # bm25: the share of the question's (weighted) words
# vector and hybrid: the cosine similarity a passage needs, calibrated for minilm
# (all-MiniLM-L6-v2) by scripts/calibrate_qa_cutoff.py: on its 35 questions with an
# answer, the answer scored 0.233-0.788 (median 0.54; all but one 0.30 or more); the
# best passage for its 17 off-topic questions scored 0.072-0.280 (median 0.15). 0.29
# puts one of the 52 on the wrong side. Other models spread cosines differently.
DEFAULT_MIN_SIMILARITY = 0.29


class Mode(str, enum.Enum):
    bm25 = "bm25"
    vector = "vector"
    hybrid = "hybrid"


@dataclass(frozen=True)
class Passage:
    key: str  # the file's real path
    name: str  # the path as shown and cited
    start: int
    end: int
    text: str
    score: float  # what ordered it: coverage (bm25), cosine (vector), fused (hybrid)
    bm25_rank: int | None = None  # its place in the BM25 ranking (1 is first)
    cosine: float | None = None  # its cosine similarity to the question
    fused: float | None = None  # its reciprocal-rank fusion score (hybrid)
    coverage: float | None = None  # the share of the question's words it has (bm25)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.start}-{self.end}"

    def scores(self) -> dict[str, Any]:
        return {"path": self.name, "start": self.start, "end": self.end,
                "bm25_rank": self.bm25_rank,
                "coverage": None if self.coverage is None else round(self.coverage, 4),
                "cosine": None if self.cosine is None else round(self.cosine, 4),
                "fused": None if self.fused is None else round(self.fused, 6)}


def choose_mode(requested: Mode | None, open_embedder: Callable[[], Embedder],
                notify: Callable[[str], None]) -> tuple[Mode, Embedder | None]:
    """The retrieval to use, and its embedder (None for bm25).

    An embedding model is available when it opens: it is pulled, or it can be (not
    offline), or it is injected (tests). Asked for nothing, a run uses hybrid when
    one is available and bm25 otherwise, with a one-line notice; asked for vector or
    hybrid, it fails when none is. bm25 never opens one.
    """
    if requested is Mode.bm25:
        return Mode.bm25, None
    try:
        embedder = open_embedder()
    except TermlmError as exc:
        if requested is not None:
            raise ModelMissing(f"--retrieval {requested.value} needs an embedding model: "
                               f"{exc.message}", hint=exc.hint or "or use --retrieval bm25"
                               ) from None
        notify(f"no embedding model ({exc.message}): ranking passages by BM25 only")
        return Mode.bm25, None
    return requested or Mode.hybrid, embedder


@dataclass
class Ranker:
    """The candidate passages for a question, best first, already cut off: the passages
    still have to be checked against their files (``termlm.qa.answer.retrieve``)."""

    index: Index
    mode: Mode = Mode.bm25
    vectors: ChunkVectors | None = None
    min_score: float = DEFAULT_MIN_SCORE
    min_similarity: float = DEFAULT_MIN_SIMILARITY
    depth: int = DEPTH
    # hybrid chosen by default (no --retrieval): a question that cannot be embedded
    # (a server that stops answering /v1/embeddings) turns the run to BM25, saying so here
    on_fallback: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.mode is not Mode.bm25 and self.vectors is None:
            raise ValueError(f"{self.mode.value} retrieval needs the chunk vectors")

    def candidates(self, question: str) -> list[Passage]:
        if self.mode is Mode.bm25:
            return self._bm25(question)
        try:
            return self._with_vectors(question)
        except TermlmError as exc:
            if self.on_fallback is None:
                raise
            self.on_fallback(f"cannot embed the question ({exc.message}): ranking passages "
                             "by BM25 only")
            self.mode = Mode.bm25
            return self._bm25(question)

    def refreshed(self) -> None:
        """The index changed under a search (files read again): embed what is new."""
        if self.vectors is not None:
            self.vectors.update()
            self.vectors.invalidate()

    def _bm25(self, question: str) -> list[Passage]:
        out = []
        for rank, hit in enumerate(self.index.search(question), 1):
            if hit.coverage < self.min_score or hit.coverage <= 0.0:
                continue
            out.append(Passage(hit.key, hit.name, hit.start, hit.end, hit.text, hit.coverage,
                               bm25_rank=rank, coverage=hit.coverage))
        return out

    def _with_vectors(self, question: str) -> list[Passage]:
        assert self.vectors is not None
        query = self.vectors.query(question)
        near = self.vectors.search(query, self.depth)
        hits = self.index.search(question, self.depth) if self.mode is Mode.hybrid else []
        cosine = dict(near)
        cosine.update(self.vectors.cosines(query, [h.id for h in hits if h.id not in cosine]))
        ranks = {h.id: rank for rank, h in enumerate(hits, 1)}
        if self.mode is Mode.hybrid:
            order = rrf([[h.id for h in hits], [chunk for chunk, _ in near]], depth=self.depth)
        else:
            order = near
        best = max(cosine.values(), default=None)
        log.info("%s retrieval: best cosine %s, cut-off %.3f", self.mode.value,
                 "none" if best is None else f"{best:.3f}", self.min_similarity)
        kept = [(chunk, score) for chunk, score in order
                if cosine.get(chunk, -1.0) >= self.min_similarity]
        rows = self.index.chunks(chunk for chunk, _ in kept)
        coverage = {h.id: h.coverage for h in hits}
        out = []
        for chunk, score in kept:
            if chunk not in rows:  # pragma: no cover - a chunk dropped meanwhile
                continue
            key, name, start, end, text = rows[chunk]
            out.append(Passage(key, name, start, end, text, score, bm25_rank=ranks.get(chunk),
                               cosine=cosine[chunk], coverage=coverage.get(chunk),
                               fused=score if self.mode is Mode.hybrid else None))
        return out
