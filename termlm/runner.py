"""The record runner: records in, task, records out, in order, resumable.

It decides nothing about prompts (tasks do) and nothing about formats
(readers and writers do). It owns the loop: skipping finished records on
resume, context-length checks, failures as error records, progress,
interruption, and the summary.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from termlm.engine.types import (
    ChatRequest,
    Engine,
    Message,
    ScoreRequest,
    complete_many,
    score_many,
)
from termlm.errors import ExitCode, TermlmError
from termlm.records.resume import DoneSet
from termlm.records.types import Record, error_record, result_record
from termlm.records.writers import RecordWriter
from termlm.tasks.base import BatchableTask, Task

OnResult = Callable[[Record, dict[str, Any]], None]


@dataclass(frozen=True)
class RunOptions:
    on_overflow: str = "error"  # or "truncate"
    keep_fields: bool = False
    fail_fast: bool = False
    limit: int | None = None
    progress: bool = False
    total: int | None = None  # records expected, for the ETA
    resume_hint: str | None = None  # the command that resumes this run


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    interrupted: bool = False
    stopped_early: bool = False
    seconds: float = 0.0
    first_error: str | None = None
    tokens_evaluated: int | None = None  # by the engine, when it counts them

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.PARTIAL if self.failed else ExitCode.OK

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{self.ok} ok", f"{self.failed} failed", f"{self.skipped} skipped"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        evaluated = f", {self.tokens_evaluated / self.done:.1f} tokens evaluated per record" \
            if self.tokens_evaluated is not None and self.done else ""
        return ", ".join(parts) + f" in {self.seconds:.1f}s ({rate:.2f} records/s{evaluated})"


@dataclass
class _Progress:
    enabled: bool
    total: int | None
    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    tokens: int = 0

    def update(self, summary: Summary, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        done = summary.done
        rate = done / elapsed
        head = f"{done + summary.skipped}/{self.total}" if self.total else f"{done}"
        eta = ""
        if self.total and rate > 0:
            left = max(self.total - done - summary.skipped, 0) / rate
            eta = f"  ETA {int(left // 60)}:{int(left % 60):02d}"
        sys.stderr.write(f"\r\x1b[2K{head} records  {rate:.2f} rec/s  "
                         f"{self.tokens / elapsed:.0f} tok/s  {summary.failed} failed{eta}")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def fit_text(engine: Engine, task: Task, record: Record, text: str,
             budget: int) -> tuple[str, int]:
    """The longest prefix of ``text`` whose prompt fits ``budget`` tokens (binary search)."""
    lo, hi = 0, len(text)
    best = 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if engine.count_prompt_tokens(task.messages(text[:mid], record)) <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    cut = text[:best]
    return cut, engine.count_prompt_tokens(task.messages(cut, record))


def prepare(engine: Engine, task: Task, record: Record,
            on_overflow: str) -> tuple[tuple[Message, ...], int, bool]:
    """Messages for a record, checked against the context: (messages, tokens, truncated)."""
    assert record.text is not None
    messages = task.messages(record.text, record)
    n_tokens = engine.count_prompt_tokens(messages)
    if getattr(task, "handles_long_input", False):
        return messages, n_tokens, False  # the task splits what does not fit (summarize)
    budget = engine.info.n_ctx - task.reserve(engine)
    if n_tokens <= budget:
        return messages, n_tokens, False
    if on_overflow != "truncate":
        raise TermlmError(f"record is {n_tokens} tokens, more than the limit of {budget} "
                          f"(context {engine.info.n_ctx} minus {task.reserve(engine)} for the "
                          "answer); use --on-overflow truncate or a larger --ctx")
    text, n_tokens = fit_text(engine, task, record, record.text, budget)
    if not text:
        raise TermlmError(f"even an empty record does not fit in {budget} tokens")
    return task.messages(text, record), n_tokens, True


def run_records(engine: Engine, task: Task, records: Iterable[Record], writer: RecordWriter,
                options: RunOptions, done: DoneSet | None = None,
                on_result: OnResult | None = None) -> Summary:
    summary = Summary()
    progress = _Progress(options.progress, options.total)
    started = time.perf_counter()

    def emit(record: Record, out: dict[str, Any]) -> bool:
        """Write one finished record; False when the run must stop (--fail-fast)."""
        writer.write(out)
        if "error" in out:
            summary.failed += 1
            summary.first_error = summary.first_error or out["error"]
            if options.fail_fast:
                summary.stopped_early = True
                return False
        else:
            summary.ok += 1
            if on_result is not None:
                on_result(record, out)
        progress.update(summary)
        return True

    todo = _todo(records, done, options, summary)
    try:
        if isinstance(task, BatchableTask):
            _pipelined(engine, task, todo, options, summary, progress, emit)
        else:
            for record in todo:
                if not emit(record, _one(engine, task, record, options, summary, progress)):
                    break
    except KeyboardInterrupt:
        summary.interrupted = True  # records in flight are abandoned, never half-written
    finally:
        summary.seconds = time.perf_counter() - started
        progress.finish()
    return summary


def _todo(records: Iterable[Record], done: DoneSet | None, options: RunOptions,
          summary: Summary) -> Iterator[Record]:
    """The records to process: not done before (resume), at most --limit of them."""
    taken = 0
    for record in records:
        if done is not None and done.is_done(record):
            summary.skipped += 1
            continue
        if options.limit is not None and taken >= options.limit:
            return
        taken += 1
        yield record


@dataclass
class _Item:
    record: Record
    out: dict[str, Any] | None = None  # set when done without the engine (failed, or answered)
    n_tokens: int = 0
    truncated: bool = False
    request: ChatRequest | ScoreRequest | None = None  # what went to the engine


def _pipelined(engine: Engine, task: BatchableTask, todo: Iterator[Record],
               options: RunOptions, summary: Summary, progress: _Progress,
               emit: Callable[[Record, dict[str, Any]], bool]) -> None:
    """One engine request per record, handed to the engine as a stream so a batching
    engine can run many at once; results are written in input order."""
    items: deque[_Item] = deque()

    def requests() -> Iterator[ChatRequest | ScoreRequest]:
        for record in todo:
            if record.error is not None:
                items.append(_Item(record, error_record(record, record.error)))
                continue
            try:
                messages, n_tokens, truncated = prepare(engine, task, record,
                                                        options.on_overflow)
                request = task.request(engine, messages, record)
            except TermlmError as exc:
                items.append(_Item(record, error_record(record, exc.message)))
                continue
            if isinstance(request, dict):  # answered without the model
                items.append(_Item(record, _done_fields(record, request, n_tokens, truncated,
                                                        options, summary, progress)))
                continue
            items.append(_Item(record, None, n_tokens, truncated, request))
            yield request

    def flush_ready() -> bool:
        while items and items[0].out is not None:
            item = items.popleft()
            assert item.out is not None
            if not emit(item.record, item.out):
                return False
        return True

    stream = requests()
    results: Iterator[Any] = (score_many(engine, stream) if task.kind == "score"  # type: ignore[arg-type]
                              else complete_many(engine, stream))  # type: ignore[arg-type]
    try:
        for result in results:
            if not flush_ready():
                return
            item = items.popleft()
            if not emit(item.record, _finish(task, item, result, options, summary, progress)):
                return
        flush_ready()
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _finish(task: BatchableTask, item: _Item, result: Any, options: RunOptions,
            summary: Summary, progress: _Progress) -> dict[str, Any]:
    record = item.record
    if isinstance(result, TermlmError):
        return error_record(record, result.message)
    if isinstance(result, Exception):
        return error_record(record, f"model error: {result}")
    assert item.request is not None
    try:
        fields = task.finish(result, record, item.request)
    except TermlmError as exc:
        return error_record(record, exc.message)
    return _done_fields(record, fields, item.n_tokens, item.truncated, options, summary,
                        progress)


def _done_fields(record: Record, fields: dict[str, Any], n_tokens: int, truncated: bool,
                 options: RunOptions, summary: Summary, progress: _Progress) -> dict[str, Any]:
    summary.prompt_tokens += n_tokens
    progress.tokens += n_tokens
    if truncated:
        summary.truncated += 1
        fields = {**fields, "truncated": True}
    out = result_record(record, fields, options.keep_fields)
    out.pop("error", None)  # a kept input field named "error" must not fail a good record
    return out


def _one(engine: Engine, task: Task, record: Record, options: RunOptions, summary: Summary,
         progress: _Progress) -> dict[str, Any]:
    if record.error is not None:
        return error_record(record, record.error)
    try:
        messages, n_tokens, truncated = prepare(engine, task, record, options.on_overflow)
        fields = task.run(engine, messages, record)
    except TermlmError as exc:
        return error_record(record, exc.message)
    except (RuntimeError, ValueError, OSError) as exc:  # llama.cpp failures surface as these
        return error_record(record, f"model error: {exc}")
    return _done_fields(record, fields, n_tokens, truncated, options, summary, progress)
