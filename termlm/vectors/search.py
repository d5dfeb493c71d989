"""Exact nearest neighbours: one matrix-vector product and a partial sort."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def top_k(matrix: npt.NDArray[np.float32], query: npt.NDArray[np.float32], k: int,
          exclude: int | None = None) -> list[tuple[int, float]]:
    """The ``k`` rows most similar to ``query`` (unit vectors: the dot product is the
    cosine), best first, as (row, score); ``exclude`` leaves one row out."""
    import numpy as np

    if matrix.shape[0] == 0 or k <= 0:
        return []
    scores = matrix @ query.astype(np.float32)
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k]
    best = part[np.argsort(-scores[part], kind="stable")]
    return [(int(i), float(scores[i])) for i in best]
