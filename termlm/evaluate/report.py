"""`termlm eval`'s table (best value per column marked, the quality/speed front) and chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from termlm.evaluate.runs import RunResult
from termlm.evaluate.scoring import PRIMARY, pareto


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    higher_is_better: bool | None  # None: not ranked


def columns(task: str, results: Sequence[RunResult]) -> list[Column]:
    primary = PRIMARY[task]
    names: list[str] = [primary]
    for result in results:
        for key in result.quality:
            if key not in names:
                names.append(key)
    lower = {"not_found_when_answerable"}
    quality = [Column(f"q:{k}", k.replace("_", " "), k not in lower) for k in names]
    return [*quality,
            Column("records_per_s", "records/s", True), Column("tokens_per_s", "tokens/s", True),
            Column("load_s", "load s", False), Column("peak_rss_mb", "peak RSS MB", False),
            Column("size_mb", "file MB", False)]


def _value(result: RunResult, key: str) -> float | None:
    if not result.ok:
        return None
    data = result.to_dict()
    if key.startswith("q:"):
        return result.quality.get(key[2:])
    if key == "size_mb":
        size = data["file"]["size"]
        return round(size / 1e6) if size else None
    value = data["speed"].get(key)
    return float(value) if value is not None else None


def summarize(task: str, results: Sequence[RunResult]) -> dict[str, Any]:
    """Rows with their values, the best row per column, and the quality/speed front."""
    cols = columns(task, results)
    ok = [r for r in results if r.ok]
    best: dict[str, list[int]] = {}
    for col in cols:
        if col.higher_is_better is None:
            continue
        values = [(i, _value(r, col.key)) for i, r in enumerate(results)]
        known = [(i, v) for i, v in values if v is not None]
        if len(known) < 2:
            continue
        target = max(v for _, v in known) if col.higher_is_better else min(v for _, v in known)
        winners = [i for i, v in known if v == target]
        if len(winners) < len(known):  # when every run ties, no run is the best
            best[col.key] = winners
    primary = f"q:{PRIMARY[task]}"
    points = [(_value(r, primary) or 0.0, _value(r, "records_per_s") or 0.0) for r in ok]
    front_ok = pareto(points)
    front = {results.index(r) for r, on in zip(ok, front_ok, strict=True) if on}
    return {"columns": cols, "best": best, "front": front}


def label(result: RunResult, variants: int) -> str:
    return result.model if variants <= 1 else f"{result.model} ({result.variant})"


def _cell(result: RunResult, col: Column) -> str:
    value = _value(result, col.key)
    if value is None:
        return "-"
    if col.key in ("load_s",):
        return f"{value:.2f}"
    if col.key.startswith("q:") and col.key != "q:chrf":
        return f"{value:.3f}"
    return f"{value:g}"


def markdown_table(task: str, results: Sequence[RunResult], variants: int) -> str:
    """A Markdown table: the best value per column in bold, the front marked with a star."""
    info = summarize(task, results)
    cols: list[Column] = info["columns"]
    head = ["model", "quant", *[c.title for c in cols], "front"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, result in enumerate(results):
        quant = str(result.stats.get("quant") or "-")
        cells = []
        for col in cols:
            text = _cell(result, col)
            cells.append(f"**{text}**" if i in info["best"].get(col.key, []) else text)
        front = "*" if i in info["front"] else ""
        if not result.ok:
            cells = [f"failed: {result.error}"] + [""] * (len(cols) - 1)
        lines.append("| " + " | ".join([label(result, variants), quant, *cells, front]) + " |")
    lines.append("")
    lines.append(f"**bold**: the best in its column; front (*): no other run has both higher "
                 f"{PRIMARY[task].replace('_', ' ')} and more records/s.")
    return "\n".join(lines)


def rich_table(task: str, results: Sequence[RunResult], variants: int) -> Any:
    from rich.table import Table

    info = summarize(task, results)
    cols: list[Column] = info["columns"]
    table = Table(box=None, pad_edge=False, header_style="bold",
                  caption="bold: best in its column; *: on the quality/speed front",
                  caption_justify="left")
    table.add_column("model")
    table.add_column("quant")
    for col in cols:
        table.add_column(col.title, justify="right")
    table.add_column("front")
    for i, result in enumerate(results):
        if not result.ok:
            table.add_row(label(result, variants), "-", f"failed: {result.error}")
            continue
        cells = []
        for col in cols:
            text = _cell(result, col)
            cells.append(f"[bold green]{text}[/]" if i in info["best"].get(col.key, [])
                         else text)
        table.add_row(label(result, variants), str(result.stats.get("quant") or "-"), *cells,
                      "*" if i in info["front"] else "")
    return table


def chart(task: str, results: Sequence[RunResult], variants: int, width: int) -> str:
    """Quality against records/s as a terminal scatter plot (plotext), as text."""
    import plotext as plt

    primary = PRIMARY[task]
    ok = [r for r in results if r.ok]
    plt.clear_figure()
    plt.theme("clear")
    plt.plotsize(min(width, 100), 20)
    for result in ok:
        x, y = result.records_per_s, result.quality.get(primary, 0.0)
        plt.scatter([x], [y], label=label(result, variants), marker="dot")
    plt.xlabel("records/s")
    plt.ylabel(primary.replace("_", " "))
    plt.title(f"{task}: {primary.replace('_', ' ')} against speed")
    text: str = plt.build()
    return text


def to_json(task: str, data: str, results: Sequence[RunResult], variants: int
            ) -> dict[str, Any]:
    info = summarize(task, results)
    rows = []
    for i, result in enumerate(results):
        row = result.to_dict()
        row["label"] = label(result, variants)
        row["front"] = i in info["front"]
        rows.append(row)
    best = {col.title: [label(results[i], variants) for i in idx]
            for col in info["columns"] for key, idx in info["best"].items() if key == col.key}
    return {"task": task, "data": data, "primary": PRIMARY[task], "results": rows,
            "best": best}
