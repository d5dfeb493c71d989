"""The drivers behind `termlm embed` and `termlm similar` (the commands only parse)."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from termlm.errors import ExitCode, TermlmError, UsageError
from termlm.output import is_tty, notice, plural

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from termlm.cli.common import AppState
    from termlm.config import Settings
    from termlm.engine.embedding import Embedder
    from termlm.progress import RunProgress
    from termlm.records.types import Record, Source
    from termlm.vectors.embed_run import EmbedSummary, Sink
    from termlm.vectors.store import Store

SNIPPET = 100  # characters of a match's text shown


@dataclass(frozen=True)
class EmbedArgs:
    inputs: list[str]
    glob: str | None
    input_format: str | None
    text_field: str
    id_field: str
    per_file: bool
    encoding_errors: str
    limit: int | None
    collection: str | None
    output: str | None
    resume: bool
    on_overflow: str
    progress: bool | None
    model: str | None
    pooling: str | None


def settings_for(st: AppState, model: str | None) -> Settings:
    settings = st.settings()
    return replace(settings, embed_model=model) if model else settings


def run(st: AppState, args: EmbedArgs) -> ExitCode:
    from termlm.records.readers import expand_inputs, read_records
    from termlm.vectors.store import Store, check_name

    if args.collection is not None:
        check_name(args.collection)
    sources = expand_inputs(args.inputs, args.glob)
    reader = read_records(sources, input_format=args.input_format, text_field=args.text_field,
                          id_field=args.id_field, per_file=args.per_file,
                          encoding_errors=args.encoding_errors, warn=notice)
    if args.output is not None and args.output.endswith(".npy"):
        from termlm.records.outfile import check_side_output

        check_side_output(args.output, "-o", inputs=sources)  # written whole at the end
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(Store.open()) if args.collection is not None else None
        model, pooling = args.model, args.pooling
        known = store.info(args.collection) if store is not None and args.collection else None
        if known is not None:  # a collection keeps its model and its pooling
            model = model or known.model
            pooling = pooling or known.pooling
        embedder = st.open_embedder(settings_for(st, model), pooling)
        stack.callback(embedder.close)
        code = _run(embedder, store, args, sources, reader)
    return code


def _run(embedder: Embedder, store: Store | None, args: EmbedArgs, sources: list[Source],
         reader: Iterable[Record]) -> ExitCode:
    from termlm.logs import BatchRun
    from termlm.progress import RunProgress
    from termlm.records.readers import count_records
    from termlm.vectors.sinks import CollectionSink, NpySink

    info = embedder.info
    show = args.progress if args.progress is not None else is_tty(sys.stderr)
    total = count_records(sources, input_format=args.input_format,
                          per_file=args.per_file) if show else None
    progress = RunProgress(show, total, label="texts")
    with BatchRun(args.inputs or ["-"], args.collection or args.output) as run:
        run.model = info.name
        if store is not None and args.collection is not None:
            store.ensure(args.collection, info.name, info.dims, info.pooling)
            summary = _go(embedder, reader, CollectionSink(store, args.collection), args,
                          progress)
        elif args.output is not None and args.output.endswith(".npy"):
            matrix = NpySink(Path(args.output), info.dims)
            summary = _go(embedder, reader, matrix, args, progress)
            if not summary.interrupted:
                matrix.finish()
        else:
            summary = _jsonl(embedder, reader, args, sources, progress)
        run.counts = {"ok": summary.embedded, "failed": summary.failed,
                      "skipped": summary.unchanged}
        notice(summary.line())
        if summary.interrupted:
            where = f"collection {args.collection!r}" if args.collection else (
                "nothing written" if args.output and args.output.endswith(".npy") else
                args.output or "stdout")
            notice(f"interrupted: {plural(summary.embedded, 'text')} embedded this run "
                   f"({where}); run the same command again to go on"
                   + (" with --resume" if args.output and not args.output.endswith(".npy")
                      else ""))
            raise KeyboardInterrupt
    if args.collection is not None and store is not None:
        found = store.info(args.collection)
        if found is not None:
            notice(f"collection {args.collection!r}: {plural(found.count, 'record')}, "
                   f"{found.model}, {found.dims} dimensions")
    return ExitCode.PARTIAL if summary.failed else ExitCode.OK


def _go(embedder: Embedder, reader: Iterable[Record], sink: Sink, args: EmbedArgs,
        progress: RunProgress) -> EmbedSummary:
    from termlm.vectors.embed_run import run_embed

    progress.start()
    try:
        return run_embed(embedder, reader, sink, on_overflow=args.on_overflow,
                         limit=args.limit, progress=progress)
    finally:
        progress.finish()


def _jsonl(embedder: Embedder, reader: Iterable[Record], args: EmbedArgs,
           sources: list[Source], progress: RunProgress) -> EmbedSummary:
    from termlm.records.outfile import open_output
    from termlm.records.resume import load_done
    from termlm.vectors.sinks import JsonlSink

    with open_output(args.output, "jsonl", append=args.resume, inputs=sources,
                     warn=notice) as out:
        done = load_done(args.output, "jsonl", warn=notice, keep=out.keep) \
            if args.resume and args.output else None
        with out.writer(warn=notice) as writer:
            return _go(embedder, reader, JsonlSink(writer, done), args, progress)


def list_collections(as_json: bool) -> None:
    from termlm.vectors.store import Store, default_path

    if not default_path().exists():
        if not as_json:
            notice("no collections yet (termlm embed FILES -c NAME makes one)")
        return
    with Store.open() as store:
        found = store.listing()
    if as_json:
        for info in found:
            sys.stdout.write(json.dumps({"name": info.name, "model": info.model,
                                         "dims": info.dims, "pooling": info.pooling,
                                         "records": info.count, "created": info.created,
                                         "updated": info.updated}) + "\n")
        return
    if not found:
        notice("no collections yet (termlm embed FILES -c NAME makes one)")
        return
    rows = [(i.name, str(i.count), i.model, str(i.dims), i.updated[:16].replace("T", " "))
            for i in found]
    _table(("name", "records", "model", "dims", "updated"), rows, right={1, 3})


def drop_collection(name: str) -> None:
    from termlm.vectors.store import Store

    with Store.open(create=False) as store:
        count = store.drop(name)
    notice(f"dropped collection {name!r} ({plural(count, 'record')})")


def similar(st: AppState, name: str, text: str | None, by_id: str | None, count: int,
            as_json: bool, pooling: str | None) -> None:
    from termlm.engine.embedding import embed_texts
    from termlm.vectors.search import top_k
    from termlm.vectors.store import Store

    with Store.open(create=False) as store:
        info = store.require(name)
        ids, matrix = store.matrix(name)
        exclude: int | None = None
        if by_id is not None:
            try:
                exclude = ids.index(by_id)
            except ValueError:
                raise UsageError(f"no record {by_id!r} in collection {name!r}") from None
            query = matrix[exclude]
        else:
            assert text is not None
            if pooling is not None and info.pooling is not None and pooling != info.pooling:
                raise UsageError(f"collection {name!r} was embedded with {info.pooling} "
                                 f"pooling, not {pooling}: the query must be embedded the "
                                 "same way", hint="leave out --pooling")
            embedder = st.open_embedder(settings_for(st, info.model), pooling or info.pooling)
            try:
                if embedder.info.dims != info.dims:
                    raise TermlmError(f"{embedder.info.name} gives {embedder.info.dims} "
                                      f"dimensions; collection {name!r} has {info.dims}")
                query = embed_texts(embedder, [text], kind="query")[0].vector
            finally:
                embedder.close()
        best = top_k(matrix, query, count, exclude=exclude)
        texts = store.texts(name, [ids[i] for i, _ in best])
    matches = [(ids[i], score, texts.get(ids[i], "")) for i, score in best]
    if as_json:
        for item_id, score, body in matches:
            sys.stdout.write(json.dumps({"id": item_id, "score": round(score, 4),
                                         "text": body}, ensure_ascii=False) + "\n")
        return
    rows = [(f"{score:.3f}", item_id, snippet(body)) for item_id, score, body in matches]
    _table(("score", "id", "text"), rows, right={0})


def snippet(text: str, width: int = SNIPPET) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: set[int]) -> None:
    """A rich table on a terminal, tab-separated lines (with a header) in a pipe."""
    from termlm import output

    if output.is_tty(sys.stdout):
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold")
        for i, column in enumerate(header):
            table.add_column(column, justify="right" if i in right else "left",
                             no_wrap=i != len(header) - 1, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # data, never markup
        output.out_console().print(table)
        return
    sys.stdout.write("\t".join(header) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(cell.replace("\t", " ").replace("\n", " ")
                                   for cell in row) + "\n")
