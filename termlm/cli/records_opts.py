"""Options every record task shares (batch, classify, extract), and the driver that wires them."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from termlm.cli.common import AppState
from termlm.errors import ExitCode, UsageError
from termlm.records.types import Record, Source

if TYPE_CHECKING:
    from termlm.logs import BatchRun
    from termlm.records.outfile import OutputFile


class InputFormat(str, Enum):
    txt = "txt"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"
    text = "text"


class Overflow(str, Enum):
    error = "error"
    truncate = "truncate"


class EncodingErrors(str, Enum):
    STRICT = "strict"
    REPLACE = "replace"


Inputs = Annotated[list[str] | None, typer.Argument(
    help="Files, globs, directories (recursive), or - for stdin (the default).",
    show_default=False)]
GlobOpt = Annotated[str | None, typer.Option("--glob", help="Only files matching this "
                                             "pattern when walking directories (e.g. '*.txt').",
                                             show_default=False)]
InputFormatOpt = Annotated[InputFormat | None, typer.Option(
    "--input-format", help="Input format (default: from the file extension; stdin: txt).",
    show_default=False)]
TextFieldOpt = Annotated[str, typer.Option("--text-field", help="JSONL/CSV field with the text.")]
IdFieldOpt = Annotated[str, typer.Option("--id-field", help="JSONL/CSV field with the id; "
                                         "a record without it is numbered by its line.")]
PerFileOpt = Annotated[bool, typer.Option("--per-file", help="Each file is one record "
                                          "(id = its path).")]
EncodingOpt = Annotated[EncodingErrors, typer.Option(
    "--encoding-errors", help="strict: invalid UTF-8 fails that record; replace: decode with "
    "U+FFFD.")]
OutputOpt = Annotated[str | None, typer.Option("--output", "-o", help="Write records to this "
                                               "file instead of stdout.", show_default=False)]
OutputFormatOpt = Annotated[OutputFormat, typer.Option("--output-format",
                                                       help="Output format.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="With -o: skip records already in "
                                         "the file (failed ones are retried).")]
KeepFieldsOpt = Annotated[bool, typer.Option("--keep-fields", help="Copy the input record's "
                                             "fields into the output.")]
FailFastOpt = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed "
                                           "record.")]
OverflowOpt = Annotated[Overflow, typer.Option("--on-overflow", help="A record longer than the "
                                               "context: fail it (error) or cut it (truncate).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Process at most N records.",
                                              show_default=False)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the first rendered prompt and "
                                         "its token count; call no model.")]
ParallelOpt = Annotated[int | None, typer.Option(
    "--parallel", "-P", min=1, help="Records decoded together in one batch (default: chosen "
    "from the context size; 1 = one at a time).", show_default=False)]
ProgressOpt = Annotated[bool | None, typer.Option(
    "--progress/--no-progress", help="Progress on stderr (default: when stderr is a terminal).",
    show_default=False)]


@dataclass(frozen=True)
class RecordArgs:
    inputs: list[str]
    glob: str | None
    input_format: InputFormat | None
    text_field: str
    id_field: str
    per_file: bool
    encoding_errors: EncodingErrors
    output: str | None
    output_format: OutputFormat
    resume: bool
    keep_fields: bool
    fail_fast: bool
    on_overflow: Overflow
    limit: int | None
    dry_run: bool
    progress: bool | None
    parallel: int | None = None


_PEEK_ERRORS = 256  # failed records held while looking for the first readable one


def _peek(records: Iterator[Record]) -> tuple[Record | None, bool, Iterator[Record]]:
    """The first readable record, whether there is any record at all, and an iterator
    that still yields everything."""
    seen: list[Record] = []
    first = None
    for record in records:
        seen.append(record)
        if record.error is None:
            first = record
            break
        if len(seen) >= _PEEK_ERRORS:  # a stream of errors: they are written as they come
            break
    return first, bool(seen), itertools.chain(seen, records)


def drive(st: AppState, args: RecordArgs, model: str | None, task: Any,
          columns: list[str], check_first: Callable[[Record], None] | None = None,
          on_result: Callable[[Record, dict[str, Any]], None] | None = None,
          after: Callable[[], None] | None = None,
          before: Callable[[Any], None] | None = None) -> None:
    """Read records, run ``task`` on each, write them; exit with the documented code.

    ``before`` gets the engine once it is open, before the first record (classify's
    calibration)."""
    from termlm.inputs import stdin_is_tty
    from termlm.logs import BatchRun
    from termlm.output import notice
    from termlm.records.outfile import OutputFile, open_output
    from termlm.records.readers import expand_inputs, read_records

    if args.resume and not args.output:
        raise UsageError("--resume needs -o FILE: the output file to continue")
    if args.resume and args.output_format is OutputFormat.text:
        raise UsageError("--resume works with jsonl, csv or tsv output, not text")
    sources = expand_inputs(args.inputs, args.glob)
    if any(s.is_stdin for s in sources) and stdin_is_tty():
        notice("reading stdin... (one record per line; end with Ctrl-D)")
    # the output is checked (never an input, writable) and locked before the model loads;
    # a dry run writes nothing, so it opens nothing
    out = OutputFile(None, args.output_format.value, append=False, inputs=sources) \
        if args.dry_run else open_output(args.output, args.output_format.value,
                                         append=args.resume, inputs=sources, warn=notice)
    # one log row per run, however it ends (termlm.logs); a dry run calls no model: none
    with out, BatchRun(args.inputs, args.output, enabled=not args.dry_run) as run:
        sources = out.inputs
        fmt = args.input_format.value if args.input_format else None
        reader = read_records(sources, input_format=fmt, text_field=args.text_field,
                              id_field=args.id_field, per_file=args.per_file,
                              encoding_errors=args.encoding_errors.value, warn=notice)
        try:
            _drive(st, args, model, task, columns, sources, fmt, reader, out, check_first,
                   on_result, after, prepare_engine=before, run=run)
        finally:
            # release the inputs now, even when stopped early (--limit, --fail-fast, errors);
            # a reader still blocked on its input in the runner's thread is left to the exit
            with contextlib.suppress(ValueError):  # "generator already executing"
                cast(Generator[Record, None, None], reader).close()


def _drive(st: AppState, args: RecordArgs, model: str | None, task: Any, columns: list[str],
           sources: list[Source], fmt: str | None, reader: Iterator[Record], out: OutputFile,
           check_first: Callable[[Record], None] | None,
           on_result: Callable[[Record, dict[str, Any]], None] | None,
           after: Callable[[], None] | None,
           prepare_engine: Callable[[Any], None] | None = None,
           run: BatchRun | None = None) -> None:
    from termlm.crashguard import note_resume
    from termlm.engine.types import CountsTokens
    from termlm.output import notice
    from termlm.records.readers import count_records
    from termlm.records.resume import load_done, resume_hint
    from termlm.records.types import RESULT_FIELDS
    from termlm.runner import RunOptions, Summary, prepare, run_records
    from termlm.runstats import record

    from_stdin = any(s.is_stdin for s in sources)
    first, any_record, records = _peek(reader)
    if not any_record:
        where = "stdin" if all(s.is_stdin for s in sources) else "the input"
        raise UsageError(f"no records in {where}: nothing to do")
    if first is not None and check_first is not None:
        check_first(first)
    # repaired under the lock, before the model loads (a file that cannot be repaired
    # costs no load)
    done = load_done(args.output, args.output_format.value, warn=notice, keep=out.keep) \
        if args.resume and args.output and not args.dry_run else None
    engine = st.open_engine(st.settings(model=model, parallel=args.parallel), batch=True)
    summary = Summary()
    if run is not None:  # a run that ends early (a closed pipe) is logged with its counts
        run.track(summary, engine.info.name)
    try:
        if args.dry_run:
            if first is None:
                raise UsageError("no readable record to show")
            messages, n_tokens, truncated = prepare(engine, task, first, args.on_overflow.value)
            for message in messages:
                sys.stdout.write(f"--- {message.role}\n{message.content}\n")
            sys.stdout.flush()
            notice(f"record {first.id}: {n_tokens} prompt tokens (context {engine.info.n_ctx})"
                   + (", truncated" if truncated else ""))
            return
        if prepare_engine is not None:
            prepare_engine(engine)
        show = args.progress if args.progress is not None else _stderr_tty()
        total = count_records(sources, input_format=fmt, per_file=args.per_file) \
            if show else None
        options = RunOptions(on_overflow=args.on_overflow.value, keep_fields=args.keep_fields,
                             fail_fast=args.fail_fast, limit=args.limit, progress=show,
                             total=total)
        # CSV/TSV columns are fixed by the header: with --keep-fields, add the input's fields
        # under the names result_record gives them (input_NAME for a result field's name)
        kept = [name for name in (f"input_{k}" if k in RESULT_FIELDS else str(k)
                                  for k in first.fields if k != "id")
                if name not in (*columns, "error")] \
            if args.keep_fields and first is not None else []
        if args.output:
            note_resume(resume_hint(["termlm", *sys.argv[1:]], from_stdin))
        with out.writer(columns=[*columns, *kept, "error"], warn=notice) as writer:
            before = engine.tokens_evaluated if isinstance(engine, CountsTokens) else None
            run_records(engine, task, records, writer, options, done, on_result, summary)
            if before is not None and isinstance(engine, CountsTokens):
                summary.tokens_evaluated = engine.tokens_evaluated - before
    finally:
        engine.close()
    notice(summary.line())
    if run is not None:
        run.finish(summary, engine.info.name)
    record(records=summary.done, ok=summary.ok, failed=summary.failed, run_s=summary.seconds,
           tokens_evaluated=summary.tokens_evaluated, prompt_tokens=summary.prompt_tokens)
    if summary.interrupted:
        notice(f"interrupted after {summary.done} records this run")
        if args.output:
            argv = ["termlm", *sys.argv[1:]]
            notice(f"resume with: {resume_hint(argv, from_stdin)}")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if summary.stopped_early:
        notice(f"stopped at the first failure (--fail-fast): {summary.first_error}")
    if after is not None:
        after()
    raise typer.Exit(int(summary.exit_code))


def _stderr_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (ValueError, AttributeError):
        return False
