"""`termlm summarize`: one summary per file (or one across all with --combined).

One input and no ``-o``/``--json``: the summary streams to stdout as text
(Markdown on a terminal), and a failure is a one-line error. Otherwise each
file is a record on the record pipeline (``drive``): JSONL records
``{"id", "summary", "chunks"}``, error records, resume, exit code 3 when some
failed. ``--combined`` joins every input into one text and gives one summary.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from termlm.cli.common import (
    AppState,
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    TemperatureOpt,
    handles_errors,
    state,
)
from termlm.cli.records_opts import (
    EncodingErrors,
    EncodingOpt,
    FailFastOpt,
    GlobOpt,
    Inputs,
    OutputFormat,
    OutputOpt,
    Overflow,
    ParallelOpt,
    ProgressOpt,
    RecordArgs,
    ResumeOpt,
    drive,
)
from termlm.engine.types import ChatRequest, Engine
from termlm.errors import EngineError, ExitCode, InputError, UsageError
from termlm.records.types import Record, Source
from termlm.tasks.summarize import FinalWriter, Format, Length, SummarizeTask

if TYPE_CHECKING:
    from termlm.logs import BatchRun

COMBINED_ID = "combined"


class _Talk:
    """Progress lines on stderr: rewritten in place on a terminal, one per line elsewhere."""

    def __init__(self, enabled: bool) -> None:
        from termlm.output import is_tty

        self.enabled = enabled
        self.tty = is_tty(sys.stderr)
        self.open = False

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + message)
            self.open = True
        else:
            sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.open:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.open = False


@handles_errors
def summarize(
    ctx: typer.Context,
    inputs: Inputs = None,
    length: Annotated[Length, typer.Option(
        "--length", help="short: 1-3 sentences; medium: a paragraph; long: about three "
        "paragraphs.")] = Length.medium,
    fmt: Annotated[Format, typer.Option(
        "--format", help='paragraph: prose; bullets: a list of "- " points.')]
        = Format.paragraph,
    combined: Annotated[bool, typer.Option(
        "--combined", help="One summary across all inputs, instead of one per file.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help='JSONL records {"id", "summary", "chunks"}, even for one input.')]
        = False,
    output: OutputOpt = None,
    resume: ResumeOpt = False,
    model: ModelOpt = None,
    temperature: TemperatureOpt = None,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    glob: GlobOpt = None,
    encoding_errors: EncodingOpt = EncodingErrors.STRICT,
    fail_fast: FailFastOpt = False,
    progress: ProgressOpt = None,
    parallel: ParallelOpt = None,
) -> None:
    """Summarize files or stdin; a text longer than the context is summarized in parts,
    then the part summaries are combined.

    Example: termlm summarize report.md --length short --format bullets
    """
    from termlm.inputs import stdin_is_tty
    from termlm.output import is_tty
    from termlm.prompts import load_template
    from termlm.records.readers import expand_inputs
    from termlm.tasks.summarize import HEADROOM, MAX_TOKENS

    if resume and not output:
        raise UsageError("--resume needs -o FILE: the output file to continue")
    paths = list(inputs or [])
    if (not paths or paths == ["-"]) and stdin_is_tty():
        raise UsageError("nothing to summarize: give FILES or pipe text on stdin",
                         hint="termlm summarize notes.md")
    tmpl = load_template("summarize")
    sampling = tmpl.sampling().with_(max_tokens=int(MAX_TOKENS[length] * HEADROOM)).override(
        temperature=temperature, max_tokens=max_tokens, seed=seed)
    talk = _Talk(progress if progress is not None else is_tty(sys.stderr))
    task = SummarizeTask(tmpl, load_template("summarize_reduce"), length=length, fmt=fmt,
                         sampling=sampling, progress=talk, warn=_warning(talk))
    sources = expand_inputs(paths, glob)
    st = state(ctx)
    if combined or (len(sources) == 1 and not as_json and output is None):
        from termlm.logs import BatchRun

        with BatchRun(paths or ["-"], output) as run:  # one log row, as for a batch run
            _single(st, model, task, talk, sources, combined=combined, output=output,
                    as_json=as_json, resume=resume, encoding_errors=encoding_errors,
                    parallel=parallel, run=run)
            run.counts = {"ok": 1}
        return
    args = RecordArgs(inputs=paths, glob=glob, input_format=None, text_field="text",
                      id_field="id", per_file=True, encoding_errors=encoding_errors,
                      output=output, output_format=OutputFormat.jsonl, resume=resume,
                      keep_fields=False, fail_fast=fail_fast, on_overflow=Overflow.error,
                      limit=None, dry_run=False, progress=talk.enabled, parallel=parallel)
    drive(st, args, model, task, ["id", "summary", "chunks"])


def _read(sources: list[Source], encoding_errors: EncodingErrors) -> list[Record]:
    from termlm.output import notice
    from termlm.records.readers import read_records

    return list(read_records(sources, per_file=True, encoding_errors=encoding_errors.value,
                             warn=notice))


def _single(st: AppState, model: str | None, task: SummarizeTask, talk: _Talk,
            sources: list[Source], *, combined: bool, output: str | None, as_json: bool,
            resume: bool, encoding_errors: EncodingErrors,
            parallel: int | None = None, run: BatchRun | None = None) -> None:
    """One text (one input, or all of them with --combined): one summary."""
    from termlm.output import notice
    from termlm.records.outfile import open_output
    from termlm.records.resume import load_done
    from termlm.tasks.base import RecordError

    records = _read(sources, encoding_errors)
    for record in records:
        if record.error is not None:
            raise InputError(record.error)
    texts = [r.text for r in records if r.text is not None and r.text.strip()]
    if not texts:
        what = "every input is" if len(records) > 1 else \
            f"{records[0].id if records else 'the input'} is"
        raise InputError(f"nothing to summarize: {what} empty")
    label = COMBINED_ID if combined else records[0].id
    text = "\n\n".join(t.strip("\r\n") for t in texts) if combined else texts[0]
    if not as_json and output is None:  # plain text on stdout
        engine = st.open_engine(st.settings(model=model, parallel=parallel), batch=True)
        if run is not None:
            run.model = engine.info.name
        try:
            task.summarize(engine, text, label, final=_streamer(engine, talk))
        except BrokenPipeError:
            raise  # the reader went away (| head): a quiet exit, not a model error
        except (RuntimeError, ValueError, OSError) as exc:  # llama.cpp failures, as the runner
            raise EngineError(f"model error: {exc}") from None
        finally:
            talk.clear()
            engine.close()
        return
    # --combined with --json or -o: one JSONL record, to an output checked and locked
    # before the model loads
    with open_output(output, "jsonl", append=resume, inputs=sources) as target:
        if resume and output is not None and load_done(
                output, "jsonl", warn=notice, keep=target.keep).is_done(label):
            notice(f"{label} is already summarized in {output}: nothing to do")
            return
        engine = st.open_engine(st.settings(model=model, parallel=parallel), batch=True)
        if run is not None:
            run.model = engine.info.name
        out: dict[str, object]
        try:
            result = task.summarize(engine, text, label)
            out = {"id": label, "summary": result.text, "chunks": result.chunks,
                   "inputs": [r.id for r in records]}
        except RecordError as exc:
            out = {"id": label, "error": exc.message}
        except (RuntimeError, ValueError, OSError) as exc:
            out = {"id": label, "error": f"model error: {exc}"}
        finally:
            talk.clear()
            engine.close()
        with target.writer(warn=notice) as writer:
            writer.write(out)
    if "error" in out:
        notice(f"{label}: {out['error']}")
        raise typer.Exit(int(ExitCode.PARTIAL))


def _streamer(engine: Engine, talk: _Talk) -> FinalWriter:
    """The final request streams to stdout: plain in a pipe, Markdown on a terminal."""
    from termlm.output import StdoutSink, is_tty, no_color
    from termlm.render import stream_markdown, stream_plain

    def final(request: ChatRequest) -> tuple[str, str | None]:
        talk.clear()
        events = engine.stream(request)
        if is_tty(sys.stdout):
            result = stream_markdown(events, no_color=no_color())
        else:
            out = StdoutSink()  # a failed write is a WriteError, never a "model error"
            result = stream_plain(events, out=out)
            if result.text.strip() and not result.text.endswith("\n"):
                out.write("\n")
            out.flush()
        if result.interrupted:
            raise KeyboardInterrupt
        reason = result.completion.finish_reason if result.completion is not None else None
        return result.text, reason

    return final


def _warning(talk: _Talk) -> Callable[[str], None]:
    """Warnings about a summary: always on stderr, on a line of their own."""
    from termlm.output import notice

    def warn(message: str) -> None:
        talk.clear()
        notice(f"warning: {message}")

    return warn
