"""`termlm translate`: Markdown or text files (or stdin) into another language.

The command wires: inputs -> per-file read and checks -> Translator (the
pure-ish task in termlm.tasks.translate) -> stdout, or files under ``-o DIR``
written atomically. A file that fails does not stop the others.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Annotated

import typer

from termlm.cli.common import (
    ModelOpt,
    SeedOpt,
    TemperatureOpt,
    TemplateOpt,
    handles_errors,
    state,
)
from termlm.errors import ExitCode, InputError, TermlmError, UsageError
from termlm.fileio import write_atomic

if TYPE_CHECKING:
    from termlm.chains import Chain
    from termlm.records.types import Source
    from termlm.segment import Mode
    from termlm.tasks.translate import DocResult, Translator

_MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd", ".mdx"}
_BOM = "\ufeff"


class Format(str, Enum):
    auto = "auto"
    markdown = "markdown"
    text = "text"


@handles_errors
def translate(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="Target language: a name (French) or a code "
                                    "(fr, pt-BR).", show_default=False)],
    inputs: Annotated[list[str] | None, typer.Argument(
        help="Files, globs, directories (recursive), or - for stdin (the default).",
        show_default=False)] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="Source language (default: the model works it out).",
        show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write each file under this directory, as its relative path "
        "with the language before the extension (notes/a.md -> DIR/notes/a.fr.md).",
        show_default=False)] = None,
    glossary: Annotated[Path | None, typer.Option(
        "--glossary", help="YAML file of term: translation pairs for the prompt.",
        show_default=False)] = None,
    line_mode: Annotated[bool, typer.Option(
        "--line-mode", help="Translate each line on its own; the output has exactly as many "
        "lines as the input.")] = False,
    fmt: Annotated[Format, typer.Option(
        "--format", help="Input format. auto: Markdown for .md files (and stdin that looks "
        "like Markdown), plain text otherwise.")] = Format.auto,
    strict: Annotated[bool, typer.Option(
        "--strict", help="A segment whose translation fails the checks twice (a lost or "
        "added number, URL, code or placeholder; the wrong language; an answer instead of "
        "a translation; a length far from the source's) fails its file, which is not "
        "written, instead of being kept as source text marked untranslated.")] = False,
    glob: Annotated[str | None, typer.Option(
        "--glob", help="Only files matching this pattern when walking directories "
        "(e.g. '*.md').", show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Translate every segment again instead of reusing cached "
        "translations.")] = False,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress on stderr (default: when stderr is a "
        "terminal).", show_default=False)] = None,
    parallel: Annotated[int | None, typer.Option(
        "--parallel", "-P", min=1, help="Stretches of a document translated at once (default: "
        "chosen from the context size; 1 = in order, every unit with the one before it as "
        "context).", show_default=False)] = None,
    template: TemplateOpt = None,
    model: ModelOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Translate Markdown or text, keeping code blocks, front matter, links and layout.

    Example: termlm translate --to French README.md > README.fr.md
    """
    from termlm.paths import cache_dir
    from termlm.prompts import load_template
    from termlm.records.readers import expand_inputs
    from termlm.tasks.translate import (
        Spec,
        SqliteCache,
        Translator,
        language,
        load_glossary,
    )

    target = language(to)
    source_lang = language(from_) if from_ else None
    if not inputs and _stdin_is_tty():
        raise UsageError("nothing to translate: give FILES, or pipe text on stdin")
    sources = expand_inputs(list(inputs or []), glob)
    if output is not None:  # earlier translations inside a walked directory are not inputs
        root = os.path.realpath(output)
        sources = [s for s in sources if not s.walked or os.path.commonpath(
            [root, os.path.realpath(s.path)]) != root] or sources
    if output is None and len(sources) > 1:
        raise UsageError(f"{len(sources)} input files: give -o DIR to write one file each")
    if output is not None and any(s.is_stdin for s in sources):
        raise UsageError("stdin goes to stdout: drop -o, or redirect the output")
    if output is not None:
        _check_dir(output)
    tmpl = load_template(template or "translate")
    sampling = tmpl.sampling().override(temperature=temperature, seed=seed)
    terms = load_glossary(glossary) if glossary is not None else {}
    plan = _plan(sources, output, target.code)
    st = state(ctx)
    from termlm.logs import BatchRun

    # one log row for the run (termlm logs), however it ends
    with BatchRun(list(inputs or ["-"]), str(output) if output else None) as run:
        engine = st.open_engine(st.settings(model=model, parallel=parallel), batch=True)
        run.model = engine.info.name
        cache = None if no_cache else SqliteCache(cache_dir() / "translate" / "cache.sqlite3")
        try:
            model_id = f"{engine.info.name}|{os.path.basename(engine.info.path)}"
            spec = Spec(target=target, source=source_lang, template=tmpl, sampling=sampling,
                        model_id=model_id, glossary=terms, strict=strict)
            translator = Translator(engine, spec, cache, parallel)
            show = progress if progress is not None else _stderr_tty()
            code = _run(translator, plan, fmt, line_mode, show, totals=run.counts)
        finally:
            if cache is not None:
                cache.close()
            engine.close()
        raise typer.Exit(int(code))


Plan = list[tuple["Source", "Path | str | None"]]  # None: stdout; str: why not


def _plan(sources: list[Source], out: Path | None, code: str) -> Plan:
    """Each source with its output path (or the reason it has none)."""
    plan: Plan = []
    taken: dict[str, str] = {os.path.realpath(s.path): s.name for s in sources
                             if not s.is_stdin}
    for source in sources:
        if out is None:
            plan.append((source, None))
            continue
        target = output_path(out, source.name, code)
        if isinstance(target, Path):
            key = os.path.realpath(target)
            if key in taken:
                target = f"its output {target} would overwrite {taken[key]}"
            else:
                taken[key] = source.name
        plan.append((source, target))
    return plan


def output_path(out: Path, name: str, code: str) -> Path | str:
    """Where ``name`` goes under ``out``: its relative path with ``.CODE`` before the
    extension. Absolute paths lose their root, ``..`` and ``.`` parts are dropped, so the
    result is always inside ``out``; a str says why there is none."""
    pure = PurePath(name)
    parts = [p for p in (pure.parts[1:] if pure.anchor else pure.parts) if p not in (".", "..")]
    if not parts:
        return f"no file name in {name!r}"
    leaf = PurePath(parts[-1])
    path = out.joinpath(*parts[:-1], f"{leaf.stem}.{code}{leaf.suffix}")
    root = os.path.realpath(out)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:  # a symlink out of DIR
        return f"{path} is outside {out}"
    return path


def _check_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TermlmError(f"cannot write to {out}: it is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".termlm-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TermlmError(f"cannot write to output directory {out}: "
                          f"{exc.strerror or exc}") from None


def _read(source: Source) -> tuple[str, str] | str:
    """(text, BOM to put back); for a file found by a walk that is binary, not a
    regular file or unreadable, why it is skipped. A named file that cannot be read
    is an InputError (a named pipe, ``<(cmd)``, is read like stdin)."""
    from termlm.inputs import decode_text, read_input_bytes, read_stdin, skip_reason

    if source.is_stdin:
        text = read_stdin()
        if not text:
            raise UsageError("no input on stdin: nothing to translate")
        return text, ""
    try:
        data = read_input_bytes(source.path, pipes=not source.walked)
    except InputError as exc:
        if not source.walked:
            raise
        return skip_reason(exc, source.path)  # a FIFO or a device is never read
    if not data:
        raise InputError(f"{source.name} is empty: nothing to translate")
    if source.walked and b"\x00" in data:
        return "binary data, not text"
    text = decode_text(data, source.name)
    return text, _BOM if data.startswith(b"\xef\xbb\xbf") else ""


def _mode(source: Source, text: str, fmt: Format, line_mode: bool) -> Mode:
    if line_mode:
        return "lines"
    if fmt is not Format.auto:
        return "markdown" if fmt is Format.markdown else "text"
    if source.is_stdin:
        looks = re.search(r"^(?:```|~~~|#{1,6} |---\s*$|\|?\s*:?-{3,}:?\s*\|)|\]\(", text,
                          re.MULTILINE)
        return "markdown" if looks else "text"
    return "markdown" if Path(source.path).suffix.lower() in _MARKDOWN_SUFFIXES else "text"


@dataclass
class _Job:
    """One file of the plan: what to write it to, and its result once it is translated."""

    source: Source
    target: Path | str | None
    bom: str = ""
    finish: Callable[[], DocResult] | None = None
    problem: TermlmError | None = None  # it failed before any translation
    skipped: str | None = None  # why a file found by a walk is not translated


def _run(translator: Translator, plan: Plan, fmt: Format, line_mode: bool,
         show: bool, totals: dict[str, int] | None = None) -> ExitCode:
    """Translate the files, several at once when the engine has slots to spare, and write
    each one (in plan order) as soon as it and the files before it are done."""
    from termlm.chains import run_groups
    from termlm.output import error_line, notice, plural
    from termlm.runstats import record

    ok = failed = skipped = segments = cached = warnings = left = 0
    started = time.perf_counter()

    def tick(label: str, done: int, total: int) -> None:
        if show:
            files = f" (file {ok + failed + skipped + 1} of {len(plan)})" if len(plan) > 1 else ""
            sys.stderr.write(f"\r\x1b[2K{label}: {done}/{total} segments{files}")
            sys.stderr.flush()

    def groups() -> Iterator[tuple[_Job, list[Chain[None]]]]:
        for source, target in plan:
            job = _Job(source, target)
            try:
                if isinstance(target, str):
                    raise TermlmError(target)
                read = _read(source)
                if isinstance(read, str):
                    job.skipped = read
                    yield job, []
                    continue
                text, job.bom = read
                chains, job.finish = translator.plan(
                    text, _mode(source, text, fmt, line_mode),
                    functools.partial(tick, source.name))
            except UsageError:
                raise
            except TermlmError as exc:
                job.problem = exc
                chains = []
            yield job, chains

    def fail(label: str, exc: TermlmError) -> None:
        nonlocal failed
        if show:
            sys.stderr.write("\n")
        failed += 1
        message = exc.message if exc.message.startswith(label) else f"{label}: {exc.message}"
        error_line(message, exc.hint)

    try:
        for job, out in run_groups(translator.engine, groups(), slots=translator.parallel):
            label = job.source.name
            if isinstance(out, Exception) and not isinstance(out, TermlmError):
                raise out
            problem = out if isinstance(out, TermlmError) else job.problem
            if problem is not None:
                fail(label, problem)
                continue
            if job.skipped is not None or job.finish is None:
                notice(f"skipping {label}: {job.skipped or 'binary data, not text'}")
                skipped += 1
                continue
            result = job.finish()
            if show and result.units:
                sys.stderr.write("\n")
            warnings += len(result.warnings)
            for warning in result.warnings:
                notice(f"warning: {label}: {warning}")
            if job.target is None:
                sys.stdout.write(job.bom + result.text)
                sys.stdout.flush()
            else:
                assert isinstance(job.target, Path)
                try:
                    write_atomic(job.target, job.bom + result.text)
                except OSError as exc:
                    fail(label, TermlmError(f"cannot write {job.target}: "
                                            f"{exc.strerror or exc}"))
                    continue
            where = label if job.target is None else f"{label} -> {job.target}"
            notice(f"{where}: {counts(result)}")
            ok += 1
            segments += result.units
            cached += result.cached
            left += result.left
    except KeyboardInterrupt:
        again = "; finished segments are cached, so running the same command again " \
            "continues" if translator.cache is not None else ""
        notice(f"\ninterrupted: {ok} of {plural(len(plan), 'file')} done{again}")
        return ExitCode.INTERRUPTED
    seconds = time.perf_counter() - started
    if totals is not None:  # for the log
        totals.update(ok=ok, failed=failed, skipped=skipped, segments=segments,
                      cached=cached, left_as_source=left)
    evaluated = getattr(translator.engine, "tokens_evaluated", None)
    record(records=segments, ok=ok, failed=failed, run_s=seconds,
           tokens_evaluated=evaluated, structure_warnings=warnings)
    notice(f"{ok} ok, {failed} failed" + (f", {skipped} skipped" if skipped else "")
           + f": {plural(segments, 'segment')} ({cached} cached"
           + (f", {left} left as source" if left else "") + f") in {seconds:.1f}s")
    return ExitCode.PARTIAL if failed else ExitCode.OK


def counts(result: DocResult) -> str:
    """``14 segments translated (3 cached), 2 retried, 1 left as source``."""
    from termlm.output import plural

    cached = f" ({result.cached} cached)" if result.cached else ""
    return (f"{plural(result.translated, 'segment')} translated{cached}, "
            f"{result.retried} retried, {result.left} left as source")


def _stderr_tty() -> bool:
    from termlm.output import is_tty

    return is_tty(sys.stderr)


def _stdin_is_tty() -> bool:
    from termlm.inputs import stdin_is_tty

    return stdin_is_tty()
