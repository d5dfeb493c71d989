"""The driver behind `termlm cluster`: records (embedded now) or a collection in, one
cluster per record out (JSONL), a summary on stderr.

The output is checked and locked before any model loads. Records are embedded
with the embedding model (closed before the chat model opens, so the two are
never in memory together); a record that cannot be read or embedded keeps its
place in the output as ``{"id", "error"}`` and the run exits 3.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from termlm.errors import ExitCode, UsageError
from termlm.output import is_tty, no_color, notice, plural
from termlm.vectors.cluster import MIN_RECORDS, OUTLIER, ClusterOptions
from termlm.vectors.cluster_labels import MEMBERS
from termlm.vectors.cluster_report import EXAMPLES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from termlm.cli.common import AppState
    from termlm.logs import BatchRun
    from termlm.prompts import Template
    from termlm.records.types import Record, Source
    from termlm.vectors.cluster import Clustering, Matrix


@dataclass(frozen=True)
class ClusterArgs:
    inputs: list[str]
    collection: str | None
    glob: str | None
    input_format: str | None
    text_field: str
    id_field: str
    per_file: bool
    encoding_errors: str
    limit: int | None
    progress: bool | None
    output: str | None
    summary_json: str | None
    gold_field: str | None
    show_map: bool
    write_labels: bool  # False: --no-labels
    label_template: Template | None  # the prompt that writes labels (None: --no-labels)
    model: str | None  # the chat model, for labels
    embed_model: str | None
    pooling: str | None
    options: ClusterOptions


@dataclass(frozen=True)
class Entry:
    """One input record, in input order: its row of the matrix, or why it has none."""

    id: str
    row: int | None
    error: str | None = None


@dataclass
class Data:
    entries: list[Entry]
    matrix: Matrix
    texts: list[str | None]  # per row (None: not fetched yet)
    gold: list[Any] = field(default_factory=list)  # per row, with --gold-field
    model: str | None = None  # the embedding model the vectors come from


def run(st: AppState, args: ClusterArgs) -> ExitCode:
    from termlm.records.outfile import check_side_output, open_output
    from termlm.records.readers import expand_inputs
    from termlm.vectors.cluster import cluster
    from termlm.vectors.cluster_report import choice_line

    if args.collection is not None and args.inputs:
        raise UsageError("give INPUTS or -c COLLECTION, not both")
    if args.collection is not None and args.gold_field is not None:
        raise UsageError("--gold-field needs records: a collection keeps no fields",
                         hint="termlm cluster records.jsonl --gold-field topic")
    from termlm.logs import BatchRun

    sources = expand_inputs(args.inputs, args.glob) if args.collection is None else []
    if args.summary_json is not None:  # written at the end: checked now, before any model
        check_side_output(args.summary_json, "--summary-json", output=args.output,
                          inputs=sources)
    shown = args.inputs or [f"collection {args.collection}"]
    with BatchRun(shown, args.output) as logged, \
            open_output(args.output, "jsonl", inputs=sources, warn=notice) as out:
        data = _from_collection(args.collection) if args.collection is not None \
            else _embed(st, args, out.inputs)
        _check_enough(data)
        started = time.perf_counter()
        result = cluster(data.matrix, args.options)
        notice(choice_line(result, time.perf_counter() - started))
        needed = sorted({i for members in result.members for i in members[:MEMBERS]}
                        | set(result.outliers[:EXAMPLES]))
        if args.collection is not None:
            _fetch_texts(args.collection, data, needed)
        logged.model = data.model
        labels = _labels(st, args, data, result, logged)
        with out.writer(warn=notice) as writer:
            for entry in data.entries:
                writer.write(_line(entry, result, labels))
        errors = sum(1 for e in data.entries if e.error is not None)
        logged.counts = {"ok": len(data.entries) - errors, "failed": errors,
                         "clusters": int(result.k)}
    _report(args, data, result, labels)
    failed = sum(1 for e in data.entries if e.error is not None)
    if failed:
        notice(f"{plural(failed, 'record')} could not be clustered (error lines in the "
               "output)")
    return ExitCode.PARTIAL if failed else ExitCode.OK


def _check_enough(data: Data) -> None:
    """Too few vectors because records failed: say so (and why) rather than only "too few"."""
    failed = [e for e in data.entries if e.error is not None]
    n = int(data.matrix.shape[0])
    if failed and n < MIN_RECORDS:
        raise UsageError(f"only {n} of {plural(len(data.entries), 'record')} could be "
                         f"embedded: need at least {MIN_RECORDS} to cluster (record "
                         f"{failed[0].id}: {failed[0].error})")


def _line(entry: Entry, result: Clustering, labels: Sequence[str]) -> dict[str, Any]:
    from termlm.vectors.cluster_labels import OUTLIERS

    if entry.row is None:
        return {"id": entry.id, "error": entry.error or "not embedded"}
    c = result.assign[entry.row]
    distance = result.distance[entry.row]
    return {"id": entry.id, "cluster": None if c == OUTLIER else c,
            "label": OUTLIERS if c == OUTLIER else labels[c],
            "distance": None if distance is None else round(distance, 4)}


def _labels(st: AppState, args: ClusterArgs, data: Data, result: Clustering,
            logged: BatchRun | None = None) -> list[str]:
    from termlm.vectors.cluster_labels import fallback, label_clusters

    if not args.write_labels or result.k == 0:
        return [fallback(c) for c in range(result.k)]
    groups = [[data.texts[i] or "" for i in members[:MEMBERS]] for members in result.members]
    engine = st.open_engine(st.settings(model=args.model), batch=True)
    if logged is not None:  # the log row names both: the vectors', and the labels' model
        logged.model = f"{data.model} (labels: {engine.info.name})" if data.model \
            else engine.info.name
    try:
        started = time.perf_counter()
        labels = label_clusters(engine, groups, template=args.label_template,
                                seed=args.options.seed, warn=notice)
        notice(f"labelled {plural(result.k, 'cluster')} with {engine.info.name} in "
               f"{time.perf_counter() - started:.1f}s")
        return labels
    finally:
        engine.close()


def _report(args: ClusterArgs, data: Data, result: Clustering, labels: Sequence[str]) -> None:
    from termlm.vectors import cluster_report as report

    rows = report.groups(result, labels, data.texts)
    report.print_table(rows)
    gold = None
    if args.gold_field is not None:
        gold = report.gold_scores(data.gold, result.assign)
        sys.stderr.write(report.gold_line(gold) + "\n")
    if args.summary_json is not None:
        import json
        from pathlib import Path

        from termlm.fileio import cannot_write, write_atomic

        summary = report.summary_json(result, rows, len(result.assign), gold)
        try:
            write_atomic(Path(args.summary_json),
                         json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise cannot_write(args.summary_json, exc) from None
    if args.show_map:
        color = is_tty(sys.stderr) and not no_color()
        sys.stderr.write(report.render_map(data.matrix, result, labels,
                                           seed=args.options.seed, color=color) + "\n")
    sys.stderr.flush()


def _from_collection(name: str) -> Data:
    from termlm.vectors.store import Store

    with Store.open(create=False) as store:
        info = store.require(name)
        ids, matrix = store.matrix(name)
    entries = [Entry(item_id, row) for row, item_id in enumerate(ids)]
    return Data(entries, matrix, [None] * len(ids), model=info.model)


def _fetch_texts(name: str, data: Data, rows: Sequence[int]) -> None:
    from termlm.vectors.store import Store

    ids = [data.entries[row].id for row in rows]  # a collection's entries are its rows
    with Store.open(create=False) as store:
        found = store.texts(name, ids)
    for row, item_id in zip(rows, ids, strict=True):
        data.texts[row] = found.get(item_id, "")


class _Collect:
    """The embed loop's sink for `cluster`: everything kept in memory, in input order."""

    def __init__(self, gold_field: str | None) -> None:
        self.gold_field = gold_field
        self.entries: list[Entry] = []
        self.vectors: list[Any] = []
        self.texts: list[str | None] = []
        self.gold: list[Any] = []

    def refuse(self, record: Record) -> str | None:
        return None

    def unchanged(self, record_id: str, digest: str) -> bool:
        return False

    def write(self, done: list[tuple[Record, str, Any]]) -> None:
        for record, _, embedded in done:
            self.entries.append(Entry(record.id, len(self.vectors)))
            self.vectors.append(embedded.vector)
            self.texts.append(record.text)
            self.gold.append(record.fields.get(self.gold_field) if self.gold_field else None)

    def fail(self, record: Record, message: str) -> None:
        self.entries.append(Entry(record.id, None, message))


def _embed(st: AppState, args: ClusterArgs, sources: list[Source]) -> Data:
    import numpy as np

    from termlm.progress import RunProgress
    from termlm.records.readers import count_records, read_records
    from termlm.vectors.embed_cli import settings_for
    from termlm.vectors.embed_run import run_embed

    reader = read_records(sources, input_format=args.input_format, text_field=args.text_field,
                          id_field=args.id_field, per_file=args.per_file,
                          encoding_errors=args.encoding_errors, warn=notice)
    sink = _Collect(args.gold_field)
    embedder = st.open_embedder(settings_for(st, args.embed_model), args.pooling)
    try:
        dims = embedder.info.dims
        show = args.progress if args.progress is not None else is_tty(sys.stderr)
        total = count_records(sources, input_format=args.input_format,
                              per_file=args.per_file) if show else None
        progress = RunProgress(show, total, label="texts")
        progress.start()
        try:
            summary = run_embed(embedder, reader, sink, limit=args.limit, progress=progress)
        finally:
            progress.finish()
        name = embedder.info.name
    finally:
        embedder.close()
    if summary.interrupted:
        raise KeyboardInterrupt
    notice(f"{plural(summary.embedded, 'text')} embedded with {name} in "
           f"{summary.seconds:.1f}s" + (f", {summary.failed} failed" if summary.failed else ""))
    if not sink.entries:
        raise UsageError("no records in the input: nothing to cluster")
    matrix = np.stack(sink.vectors).astype(np.float32) if sink.vectors \
        else np.zeros((0, dims), dtype=np.float32)
    return Data(sink.entries, matrix, sink.texts, sink.gold, model=name)
