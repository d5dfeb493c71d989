"""What `termlm cluster` tells besides its JSONL: the summary table, the summary JSON,
the scores against a gold field, and the 2-D map (all on stderr or in a file)."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from termlm.output import plural
from termlm.vectors.cluster import OUTLIER
from termlm.vectors.cluster_labels import OUTLIERS, flat

if TYPE_CHECKING:
    from termlm.vectors.cluster import Clustering, Matrix

EXAMPLES = 3  # texts shown per cluster
EXAMPLE_CHARS = 70
MAP_POINTS = 2000  # records drawn on the map, at most
MAP_HEIGHT = 22
_MARKS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Group:
    """One line of the summary: a cluster (or the outliers: ``cluster`` None)."""

    cluster: int | None
    label: str
    size: int
    examples: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "label": self.label, "size": self.size,
                "examples": list(self.examples)}


def groups(result: Clustering, labels: Sequence[str], texts: Sequence[str | None]
           ) -> list[Group]:
    """The clusters in order (the outliers last), each with its most central examples."""
    out = [Group(c, labels[c], len(members),
                 tuple(flat(texts[i] or "", EXAMPLE_CHARS) for i in members[:EXAMPLES]))
           for c, members in enumerate(result.members)]
    outliers = result.outliers
    if outliers:
        out.append(Group(None, OUTLIERS, len(outliers),
                         tuple(flat(texts[i] or "", EXAMPLE_CHARS)
                               for i in outliers[:EXAMPLES])))
    return out


def gold_scores(gold: Sequence[Any], assign: Sequence[int]) -> dict[str, Any]:
    """Purity, NMI and ARI of the clusters against the records' true topics.

    A record without a gold value is left out (and counted); the outliers count
    as one more cluster of their own."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    pairs = [(str(g).strip(), c) for g, c in zip(gold, assign, strict=True)
             if g is not None and str(g).strip()]
    missing = len(gold) - len(pairs)
    if not pairs:
        return {"records": 0, "missing_gold": missing, "purity": None, "nmi": None,
                "ari": None}
    truth = [g for g, _ in pairs]
    found = [c for _, c in pairs]
    by_cluster: dict[int, Counter[str]] = {}
    for g, c in pairs:
        by_cluster.setdefault(c, Counter())[g] += 1
    purity = sum(max(counts.values()) for counts in by_cluster.values()) / len(pairs)
    return {"records": len(pairs), "missing_gold": missing, "purity": round(purity, 4),
            "nmi": round(float(normalized_mutual_info_score(truth, found)), 4),
            "ari": round(float(adjusted_rand_score(truth, found)), 4)}


def gold_line(scores: dict[str, Any]) -> str:
    if scores["purity"] is None:
        return f"no record has the gold field ({scores['missing_gold']} without it)"
    line = (f"purity {scores['purity']:.3f}   NMI {scores['nmi']:.3f}   "
            f"ARI {scores['ari']:.3f}   records {scores['records']}")
    return line + (f"   without gold {scores['missing_gold']}" if scores["missing_gold"] else "")


def choice_line(result: Clustering, seconds: float) -> str:
    """How the clustering was made, in one line."""
    sil = f"silhouette {result.silhouette:.3f}" if result.silhouette is not None \
        else "silhouette n/a"
    took = f" in {seconds:.1f}s"
    if result.method == "density":
        return (f"{plural(result.k, 'cluster')} by density, "
                f"{plural(len(result.outliers), 'outlier')} ({sil}){took}")
    if result.k_range is not None:
        lo, hi = result.k_range
        return f"{plural(result.k, 'cluster')}: k chosen from {lo}..{hi} by {sil}{took}"
    return f"{plural(result.k, 'cluster')} (k given, {sil}){took}"


def summary_json(result: Clustering, rows: Sequence[Group], records: int,
                 gold: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "clusters": [g.to_dict() for g in rows], "k": result.k, "method": result.method,
        "silhouette": None if result.silhouette is None else round(result.silhouette, 4),
        "records": records, "outliers": len(result.outliers)}
    if result.tried:
        data["silhouette_by_k"] = {str(k): round(v, 4) for k, v in result.tried.items()}
    if gold is not None:
        data["gold"] = gold
    return data


def print_table(rows: Sequence[Group], stream: IO[str] | None = None) -> None:
    """The summary: a rich table on a terminal, aligned plain text otherwise."""
    from termlm import output

    stream = stream or sys.stderr
    if output.is_tty(stream):
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("cluster", justify="right", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("label", no_wrap=True)
        table.add_column("examples", overflow="fold")
        for g in rows:  # Text: labels and examples are data, never markup
            table.add_row(Text("-" if g.cluster is None else str(g.cluster)), Text(str(g.size)),
                          Text(g.label), Text("\n".join(g.examples)))
        Console(file=stream, no_color=output.no_color(), highlight=False).print(table)
        return
    stream.write(plain_table(rows))
    stream.flush()


def plain_table(rows: Sequence[Group]) -> str:
    width = max([len(g.label) for g in rows] + [5])
    lines = [f"cluster   size  {'label':<{width}}  examples"]
    pad = " " * (16 + width + 2)
    for g in rows:
        name = "-" if g.cluster is None else str(g.cluster)
        first, *rest = g.examples or ("",)
        lines.append(f"{name:>7}  {g.size:>5}  {g.label:<{width}}  {first}".rstrip())
        lines.extend(pad + example for example in rest)
    return "\n".join(lines) + "\n"


def render_map(matrix: Matrix, result: Clustering, labels: Sequence[str], *, seed: int,
               width: int | None = None, color: bool = False) -> str:
    """A scatter plot of a 2-D PCA projection, each record drawn as its cluster's mark."""
    import numpy as np
    import plotext as plt
    from sklearn.decomposition import PCA

    n = int(matrix.shape[0])
    rows = np.arange(n)
    if n > MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(n, MAP_POINTS, replace=False))
    points = PCA(n_components=2, random_state=seed).fit_transform(matrix[rows])
    assign = np.array([result.assign[i] for i in rows.tolist()])
    plt.clear_figure()
    if not color:
        plt.theme("clear")
    plt.plotsize(width or _width(), MAP_HEIGHT)
    key = []
    for c in [*range(result.k), OUTLIER]:
        where = assign == c
        if not where.any():
            continue
        mark = "." if c == OUTLIER else _MARKS[c % len(_MARKS)]
        key.append(f"{mark} {OUTLIERS if c == OUTLIER else labels[c]}")
        # no plotext legend: it would hide points; each point is its cluster's mark
        plt.scatter(points[where, 0].tolist(), points[where, 1].tolist(), marker=mark)
    plt.title(f"{plural(result.k, 'cluster')}, 2-D projection (PCA)"
              + (f", {MAP_POINTS} of {n} records" if n > MAP_POINTS else ""))
    text: str = plt.build()
    plt.clear_figure()
    if not color:
        text = plt.uncolorize(text)
    return text.rstrip("\n") + "\n" + "   ".join(key)


def _width() -> int:
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 80
    return max(40, min(columns, 120))
