"""Reciprocal-rank fusion: several rankings of the same items made into one.

Each ranker contributes ``1 / (k + rank)`` for every item in its first
``depth`` places (rank counted from 1), and items are ordered by the sum. Only
ranks are used, never the rankers' scores, so BM25's unbounded scores and
cosine similarities in [-1, 1] need no scaling to be combined; an item that
both rankers place high beats one that only one of them likes, and an item that
only one ranker found can still come first when it is that ranker's best.

k = 60 is the constant of Cormack, Clarke and Buettcher, "Reciprocal rank fusion
outperforms Condorcet and individual rank learning methods" (SIGIR 2009): it damps
the weight of the very first places, so no one ranker's top item decides alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = 60
DEPTH = 50  # places of each ranking that count

T = TypeVar("T", bound=Hashable)


def rrf(rankings: Sequence[Sequence[T]], *, k: int = K, depth: int = DEPTH
        ) -> list[tuple[T, float]]:
    """The items of ``rankings`` (each best first, no repeats), by fused score, best first.

    Ties keep the order in which the items were first seen (the first ranking first)."""
    scores: dict[T, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking[:depth], 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])  # stable: ties keep their order
