"""Unit vectors in, clusters out: k-means (k chosen by silhouette) or HDBSCAN.

Pure computation on a (n, dims) matrix of unit vectors, with scikit-learn:

* ``kmeans``: ``-k N`` clusters, or every k of a range (default 2 to
  min(12, n - 1)) tried and the one with the best silhouette kept (ties: the
  smaller k). Silhouette is on cosine distance. Past ``SAMPLE`` records, k is
  chosen on a random sample of that many (a full silhouette is O(n^2), and 11
  fits on the sample cost less than one on 100,000 records); the chosen k is
  then fitted on every record. Each fit keeps the best of ``N_INIT`` k-means++
  starts (one start often merges two topics and splits a third).
* ``density``: HDBSCAN, which finds the number of clusters itself and leaves
  records in no dense region unassigned (outliers, ``OUTLIER``). It runs on a
  PCA projection to ``DENSITY_DIMS`` dimensions: on 384 its neighbour search
  degenerates to brute force (95 s at 10,000 records, against 2 s). HDBSCAN
  never returns a single cluster by default; when it finds none, it runs again
  allowing one, so one dense topic among a few outliers is a cluster.

Clusters are numbered from 0 by size, largest first (ties: the one whose
first member comes first), so a run repeats. A record's distance is the cosine
distance to its cluster's centre (the members' mean, made unit length again).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from termlm.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float32]
    Labels = npt.NDArray[np.int64]

METHODS = ("kmeans", "density")
OUTLIER = -1
MIN_RECORDS = 3
DEFAULT_K_MAX = 12
SAMPLE = 2000  # records k is chosen on (and the silhouette measured on), at most
N_INIT = 4  # k-means++ starts per fit, the best kept
DENSITY_DIMS = 32
MIN_SIZE_SHARE = 100  # density's default smallest cluster: 1 % of the records (at least 5)
MIN_SIZE_LEAST = 5


@dataclass(frozen=True)
class ClusterOptions:
    method: str = "kmeans"
    k: int | None = None  # None: chosen by silhouette over k_range
    k_range: tuple[int, int] | None = None  # None: 2 to min(12, n - 1)
    min_size: int | None = None  # density: the smallest cluster (None: 1 %, at least 5)
    seed: int = 0


@dataclass
class Clustering:
    assign: list[int]  # per record: its cluster, or OUTLIER
    distance: list[float | None]  # per record: cosine distance to its centre (None: outlier)
    members: list[list[int]]  # per cluster: its records, nearest the centre first
    method: str
    silhouette: float | None  # of the clustering kept (None: not defined)
    tried: dict[int, float] = field(default_factory=dict)  # k -> silhouette, when k was chosen
    k_range: tuple[int, int] | None = None  # the range k was chosen from

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def outliers(self) -> list[int]:
        return [i for i, c in enumerate(self.assign) if c == OUTLIER]


def parse_k_range(text: str) -> tuple[int, int]:
    """``2..12`` (or ``2-12``) as (2, 12)."""
    sep = ".." if ".." in text else "-"
    low, _, high = text.partition(sep)
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise UsageError(f"--k-range must look like 2..12, not {text!r}") from None
    if lo < 2 or hi < lo:
        raise UsageError(f"--k-range {text}: give LOW..HIGH with 2 <= LOW <= HIGH")
    return lo, hi


def cluster(matrix: Matrix, options: ClusterOptions) -> Clustering:
    """Cluster the rows of ``matrix`` (unit vectors)."""
    import numpy as np

    n = int(matrix.shape[0])
    if n < MIN_RECORDS:
        raise UsageError(f"{n} record{'' if n == 1 else 's'} to cluster: need at least "
                         f"{MIN_RECORDS}")
    distinct = len(np.unique(matrix, axis=0))
    if distinct < 2:
        raise UsageError(f"all {n} records have the same vector: there is nothing to cluster")
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # a duplicate-heavy input is not the user's problem
        warnings.simplefilter("ignore", ConvergenceWarning)
        if options.method == "density":
            return _density(matrix, options)
        if options.method != "kmeans":
            raise UsageError(f"--method must be one of {', '.join(METHODS)}, "
                             f"not {options.method!r}")
        return _kmeans(matrix, options, distinct)


def choose_clusters(matrix: Matrix, *, k: int | None = None, seed: int = 0,
                    method: str = "kmeans", k_range: tuple[int, int] | None = None,
                    min_size: int | None = None) -> Clustering:
    """``cluster`` with its options as keywords (scripts/bench calls this)."""
    return cluster(matrix, ClusterOptions(method=method, k=k, k_range=k_range,
                                          min_size=min_size, seed=seed))


def _kmeans(matrix: Matrix, options: ClusterOptions, distinct: int) -> Clustering:
    n = int(matrix.shape[0])
    if options.k is not None:
        if options.k < 1:
            raise UsageError("-k must be 1 or more")
        if options.k > distinct:
            raise UsageError(f"-k {options.k} is more clusters than the {distinct} distinct "
                             "records")
        labels = _fit_kmeans(matrix, options.k, options.seed)
        return _finish(matrix, labels, "kmeans", _silhouette(matrix, labels, options.seed))
    lo, hi = options.k_range or (2, DEFAULT_K_MAX)
    top = min(hi, n - 1, distinct)
    if top < lo:
        raise UsageError(f"k from {lo} to {hi} asks for more clusters than {n} records "
                         f"({distinct} distinct) allow", hint="give a smaller --k-range, or -k")
    part = matrix if n <= SAMPLE else matrix[_sample(n, options.seed)]
    best: tuple[int, float, Labels] | None = None
    tried: dict[int, float] = {}
    for k in range(lo, top + 1):
        labels = _fit_kmeans(part, k, options.seed)
        score = _silhouette(part, labels, options.seed)
        if score is None:
            continue
        tried[k] = score
        if best is None or score > best[1]:
            best = (k, score, labels)
    if best is None:  # no k split the records in two or more (cannot happen with 2 distinct)
        raise UsageError("the records could not be split into clusters")
    k, score, labels = best
    if part is not matrix:
        labels = _fit_kmeans(matrix, k, options.seed)
        score = _silhouette(matrix, labels, options.seed) or score
    return _finish(matrix, labels, "kmeans", score, tried, (lo, top))


def _sample(n: int, seed: int) -> npt.NDArray[np.int64]:
    import numpy as np

    rows: npt.NDArray[np.int64] = np.sort(
        np.random.default_rng(seed).choice(n, SAMPLE, replace=False))
    return rows


def _fit_kmeans(matrix: Matrix, k: int, seed: int) -> Labels:
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(matrix)
    labels: Labels = model.labels_.astype("int64")
    return labels


def _density(matrix: Matrix, options: ClusterOptions) -> Clustering:
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA

    n, dims = int(matrix.shape[0]), int(matrix.shape[1])
    min_size = options.min_size or max(MIN_SIZE_LEAST, n // MIN_SIZE_SHARE)
    if min_size < 2:
        raise UsageError("--min-size must be 2 or more")
    if min_size > n:
        if options.min_size is None:
            raise UsageError(f"--method density needs at least {min_size} records (its "
                             f"smallest cluster), not {n}",
                             hint="give a smaller --min-size, or use --method kmeans")
        raise UsageError(f"--min-size {min_size} is more than the {n} records")
    # euclidean: on unit vectors it orders pairs as cosine distance does, and the tree
    # searches take it; a projection of at most n dimensions keeps every distance
    reduced = min(DENSITY_DIMS, dims, n)
    points = PCA(n_components=reduced, random_state=options.seed).fit_transform(matrix) \
        if reduced < dims else matrix
    model = HDBSCAN(min_cluster_size=min_size, metric="euclidean", copy=True)
    labels: Labels = model.fit_predict(points).astype("int64")
    if not (labels != OUTLIER).any():  # no split found: is it one dense group, with outliers?
        single = HDBSCAN(min_cluster_size=min_size, metric="euclidean", copy=True,
                         allow_single_cluster=True)
        labels = single.fit_predict(points).astype("int64")
    inside = labels != OUTLIER
    score = _silhouette(matrix[inside], labels[inside], options.seed) \
        if int(inside.sum()) > 2 else None
    return _finish(matrix, labels, "density", score)


def _silhouette(matrix: Matrix, labels: Labels, seed: int) -> float | None:
    from sklearn.metrics import silhouette_score

    n = int(matrix.shape[0])
    groups = len(set(labels.tolist()))
    if groups < 2 or groups > n - 1:
        return None
    sample = SAMPLE if n > SAMPLE else None
    return float(silhouette_score(matrix, labels, metric="cosine", sample_size=sample,
                                  random_state=seed))


def _finish(matrix: Matrix, labels: Labels, method: str, score: float | None,
            tried: dict[int, float] | None = None,
            k_range: tuple[int, int] | None = None) -> Clustering:
    """Number the clusters by size, and measure each record against its centre."""
    import numpy as np

    found = sorted({int(c) for c in labels.tolist()} - {OUTLIER})
    first = {c: int(np.argmax(labels == c)) for c in found}
    sizes = {c: int((labels == c).sum()) for c in found}
    order = sorted(found, key=lambda c: (-sizes[c], first[c]))
    renumber = {old: new for new, old in enumerate(order)}
    assign = [renumber.get(int(c), OUTLIER) for c in labels.tolist()]
    distance: list[float | None] = [None] * len(assign)
    members: list[list[int]] = []
    for old in order:
        rows = np.flatnonzero(labels == old)
        centre = matrix[rows].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(centre))
        if norm > 0:
            centre /= norm
        dists = np.clip(1.0 - matrix[rows].astype(np.float64) @ centre, 0.0, 2.0)
        for row, d in zip(rows.tolist(), dists.tolist(), strict=True):
            distance[row] = float(d)
        members.append([int(rows[i]) for i in np.argsort(dists, kind="stable")])
    return Clustering(assign, distance, members, method, score, dict(tried or {}), k_range)
