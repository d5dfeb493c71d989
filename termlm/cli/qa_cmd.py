"""`termlm qa`: answer questions from your documents, with citations."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated

import typer

from termlm.cli.common import (
    MaxTokensOpt,
    ModelOpt,
    TemperatureOpt,
    handles_errors,
    state,
)
from termlm.cli.records_opts import (
    EncodingErrors,
    FailFastOpt,
    GlobOpt,
    LimitOpt,
    OutputFormat,
    OutputFormatOpt,
    OutputOpt,
    Overflow,
    ParallelOpt,
    ProgressOpt,
    RecordArgs,
    ResumeOpt,
)
from termlm.errors import ExitCode, InputError, TemplateError, TermlmError, UsageError
from termlm.qa.retrieval import DEFAULT_MIN_SIMILARITY, Mode  # small: no numpy, no model

if TYPE_CHECKING:
    from termlm.cli.common import AppState
    from termlm.engine.embedding import Embedder
    from termlm.qa.answer import Answer, QaTask
    from termlm.qa.chunking import ChunkSpec
    from termlm.qa.index import Index
    from termlm.qa.retrieval import Ranker
    from termlm.qa.vectors import ChunkVectors

_USAGE = 'termlm qa --docs notes/ "When was the reactor commissioned?"'
COLUMNS = ["id", "question", "answer", "found", "citations"]


@dataclass(frozen=True)
class RankOptions:
    retrieval: Mode | None  # None: hybrid when an embedding model is available
    embed_model: str | None
    min_score: float
    min_similarity: float | None


@handles_errors
def qa(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(
        metavar="[MORE_DOCS]... QUESTION",
        help="The question (the last argument); arguments before it are more --docs paths.",
        show_default=False)] = None,
    docs: Annotated[list[str] | None, typer.Option(
        "--docs", "-d", help="Files, directories (recursive) or globs to search: "
        "--docs a.md b.md \"question\", or repeat --docs.", show_default=False)] = None,
    questions: Annotated[str | None, typer.Option(
        "--questions", "-q", help="Answer every question in this file (one per line, or JSONL "
        "with id and question; - for stdin), one JSON line each.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object: question, answer, found, citations, "
        "retrieval and the passages' scores.")] = False,
    model: ModelOpt = None,
    top_k: Annotated[int, typer.Option(
        "--top-k", min=1, help="Most passages to give the model.")] = 4,
    retrieval: Annotated[Mode | None, typer.Option(
        "--retrieval", help="How passages are found: bm25 (shared words), vector (embedding "
        "similarity) or hybrid (both, fused by rank). Default: hybrid when an embedding model "
        "is available (pulled, or can be), else bm25.", show_default=False)] = None,
    min_similarity: Annotated[float | None, typer.Option(
        "--min-similarity", min=-1.0, max=1.0, help="vector and hybrid: the cosine similarity "
        "to the question a passage needs to count; when none has it, the answer is not found. "
        f"Default {DEFAULT_MIN_SIMILARITY} (calibrated for minilm).", show_default=False)
    ] = None,
    min_score: Annotated[float, typer.Option(
        "--min-score", min=0.0, max=1.0, help="bm25: how much of the question (its words, "
        "weighted by rarity) a passage must contain to count; below it, the answer is not "
        "found.")] = 0.35,
    embed_model: Annotated[str | None, typer.Option(
        "--embed-model", help="Embedding model for vector and hybrid retrieval (default: "
        "minilm, or embed_model in the config).", show_default=False)] = None,
    chunk_words: Annotated[int, typer.Option(
        "--chunk-words", min=10, help="Words per indexed chunk.")] = 120,
    overlap: Annotated[float, typer.Option(
        "--overlap", min=0.0, max=0.9, help="Share of a chunk repeated in the next.")] = 0.2,
    reindex: Annotated[bool, typer.Option(
        "--reindex", help="Rebuild the index from scratch.")] = False,
    glob: GlobOpt = None,
    temperature: TemperatureOpt = None,
    max_tokens: MaxTokensOpt = None,
    output: OutputOpt = None,
    output_format: OutputFormatOpt = OutputFormat.jsonl,
    resume: ResumeOpt = False,
    fail_fast: FailFastOpt = False,
    limit: LimitOpt = None,
    progress: ProgressOpt = None,
    parallel: ParallelOpt = None,
) -> None:
    """Answer questions from your documents, citing [path:start-end].

    The documents are indexed (SQLite full-text search and embeddings, in the
    cache directory, updated only where files changed); the best passages go to
    the model, and only citations of passages it was given are kept. When nothing
    relevant is found, the answer says so and the model is not asked.

    Example: termlm qa --docs notes/ "When was the reactor commissioned?"
    """
    from termlm.qa.chunking import ChunkSpec

    positional = list(args or [])
    question: str | None = None
    if questions is None:
        if not positional:
            raise UsageError("nothing to ask: give a QUESTION or --questions FILE",
                             hint=_USAGE)
        question = positional.pop()
        if not question.strip():
            raise UsageError("the question is empty", hint=_USAGE)
    paths = [*(docs or []), *positional]
    if not paths:
        raise UsageError("give --docs PATHS: the files or directories to search", hint=_USAGE)
    if "-" in paths:
        raise UsageError("--docs takes files, directories or globs, not stdin (-)")
    if questions is None and (output is not None or resume or parallel is not None):
        raise UsageError("-o, --resume and --parallel go with --questions FILE")
    rank = RankOptions(retrieval, embed_model, min_score, min_similarity)
    index = _open_index(paths, glob, ChunkSpec(chunk_words, overlap), reindex)
    embedder: Embedder | None = None
    try:
        task = _task(index, temperature, max_tokens, top_k, min_score)
        ranker, embedder = _ranker(state(ctx), index, rank)
        task = replace(task, ranker=ranker)
        if questions is not None:
            _batch(state(ctx), model, task, questions, output, output_format, resume,
                   fail_fast, limit, progress, parallel)
        else:
            assert question is not None
            from termlm.logs import BatchRun

            with BatchRun(paths, None) as run:  # one log row, as for a batch run
                _one(state(ctx), model, task, question.strip(), as_json)
                run.counts = {"ok": 1}
    finally:
        index.close()
        if embedder is not None:
            embedder.close()
    raise typer.Exit(int(ExitCode.OK))


def _open_index(paths: list[str], glob: str | None, spec: ChunkSpec, reindex: bool) -> Index:
    from termlm.output import notice
    from termlm.qa.index import Index
    from termlm.records.readers import expand_inputs

    try:
        sources = expand_inputs(paths, glob)
    except InputError as exc:
        raise InputError(exc.message, hint="--docs names files or directories; the question "
                         f"goes last: {_USAGE}") from None
    index = Index.open(rebuild=reindex)
    try:
        stats = index.sync(sources, spec, warn=notice)
        if stats.read or stats.removed:
            notice(stats.line())
        if stats.chunks == 0:
            raise InputError("no text to search in --docs"
                             + (f" ({stats.skipped} files skipped)" if stats.skipped else ""))
    except BaseException:
        index.close()
        raise
    return index


def _task(index: Index, temperature: float | None, max_tokens: int | None, top_k: int,
          min_score: float) -> QaTask:
    from termlm.prompts import load_template, variables_in
    from termlm.qa.answer import QaTask

    template = load_template("qa")
    names = set(variables_in(template.user, "template 'qa'"))
    if names != {"question", "context"}:
        raise TemplateError("template 'qa' must use exactly {question} and {context}",
                            hint=f"it uses: {', '.join(sorted(names)) or 'nothing'}")
    sampling = template.sampling().override(temperature=temperature, max_tokens=max_tokens)
    return QaTask(index, template, sampling, top_k=top_k, min_score=min_score)


def _ranker(st: AppState, index: Index, rank: RankOptions) -> tuple[Ranker, Embedder | None]:
    """How this run finds passages (see ``termlm.qa.retrieval.choose_mode``), with the
    chunk vectors brought up to date when it uses them."""
    from termlm.output import notice
    from termlm.qa.retrieval import Ranker, choose_mode
    from termlm.qa.vectors import ChunkVectors

    settings = st.settings(embed_model=rank.embed_model)
    requested = rank.retrieval
    mode, embedder = choose_mode(requested, lambda: st.open_embedder(settings), notice)
    if embedder is None:
        return Ranker(index, mode, min_score=rank.min_score), None
    try:
        vectors = ChunkVectors(index, embedder)
        _embed(vectors)
    except TermlmError as exc:  # e.g. a server with no /v1/embeddings
        embedder.close()
        if requested is not None:
            raise
        notice(f"cannot embed the passages ({exc.message}): ranking passages by BM25 only")
        return Ranker(index, Mode.bm25, min_score=rank.min_score), None
    except BaseException:
        embedder.close()
        raise
    threshold = DEFAULT_MIN_SIMILARITY if rank.min_similarity is None else rank.min_similarity
    return Ranker(index, mode, vectors, min_score=rank.min_score, min_similarity=threshold,
                  on_fallback=notice if requested is None else None), embedder


def _embed(vectors: ChunkVectors) -> None:
    """Embed the passages that have no vector yet (a spinner on a terminal); each batch
    is kept as it is done, so Ctrl-C loses at most the one in progress."""
    from termlm.activity import Activity
    from termlm.output import notice, plural

    with Activity() as activity:
        done = vectors.update(activity.say)
    if done:
        notice(f"vectors: {plural(done, 'passage')} embedded with {vectors.name}")


def _one(st: AppState, model: str | None, task: QaTask, question: str, as_json: bool) -> None:
    from termlm.qa.answer import build_messages, not_found

    passages = task.retrieve(question)
    if not passages:  # nothing relevant: say so, without loading a model
        result = not_found(question)
    else:
        settings = st.settings(model=model)
        # as in `ask`: no more context than the prompt's bytes (a token is at least one
        # byte) plus the chat format and the answer, so the KV cache is small and loads fast
        prompt = build_messages(task.template, question, passages)
        needed = sum(len(m.content.encode()) for m in prompt) + 256 + task.sampling.max_tokens
        settings = replace(settings, n_ctx=min(settings.n_ctx, -(-needed // 256) * 256))
        if settings.seed is not None and task.sampling.seed is None:
            task = _with_seed(task, settings.seed)
        engine = st.open_engine(settings)
        try:
            result = task.answer(engine, question, passages)
        finally:
            engine.close()
    _show(result, as_json, task.retrieval)


def _with_seed(task: QaTask, seed: int) -> QaTask:
    return replace(task, sampling=task.sampling.with_(seed=seed))


def _show(result: Answer, as_json: bool, retrieval: Mode) -> None:
    from termlm.output import is_tty, no_color, out_console

    if as_json:
        sys.stdout.write(json.dumps(result.report(retrieval), ensure_ascii=False) + "\n")
    elif is_tty(sys.stdout):
        from rich.markdown import Markdown

        console = out_console()
        console.print(Markdown(result.answer))
        if result.citations:
            console.print()
            console.print("Sources:", style=None if no_color() else "bold")
            for c in result.citations:
                console.print(f"  {c.path}:{c.start}-{c.end}", style=None if no_color()
                              else "cyan", highlight=False, markup=False)
    else:
        sys.stdout.write(result.answer.rstrip() + "\n")
        if result.citations:
            sys.stdout.write("\nSources:\n")
            for c in result.citations:
                sys.stdout.write(f"- {c.path}:{c.start}-{c.end}\n")
    sys.stdout.flush()


def _batch(st: AppState, model: str | None, task: QaTask, questions: str, output: str | None,
           output_format: OutputFormat, resume: bool, fail_fast: bool, limit: int | None,
           progress: bool | None, parallel: int | None) -> None:
    from termlm.cli.records_opts import drive

    args = RecordArgs(inputs=[questions], glob=None, input_format=None, text_field="question",
                      id_field="id", per_file=False, encoding_errors=EncodingErrors.STRICT,
                      output=output, output_format=output_format, resume=resume,
                      keep_fields=False, fail_fast=fail_fast, on_overflow=Overflow.error,
                      limit=limit, dry_run=False, progress=progress, parallel=parallel)
    settings = st.settings(model=model)
    if settings.seed is not None and task.sampling.seed is None:
        task = _with_seed(task, settings.seed)
    drive(st, args, model, task, COLUMNS)
