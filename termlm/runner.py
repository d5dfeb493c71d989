"""The record runner: records in, task, records out, in order, resumable.

It decides nothing about prompts (tasks do) and nothing about formats
(readers and writers do). It owns the loop: skipping finished records on
resume, context-length checks, failures as error records, progress,
interruption, and the summary.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from termlm.engine.types import (
    ChatRequest,
    Engine,
    Message,
    ScoreRequest,
    complete_each,
    score_many,
)
from termlm.errors import ExitCode, TermlmError
from termlm.progress import RunProgress
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
                on_result: OnResult | None = None, summary: Summary | None = None) -> Summary:
    """Run ``task`` on each record; each result is written the moment it is done and
    every record before it has been written (input order). ``summary`` (filled as the
    run goes) lets a caller see the counts of a run that raised."""
    summary = summary if summary is not None else Summary()
    progress = RunProgress(options.progress, options.total)
    progress.start()
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
        return True

    feed = _Feed(_todo(records, done, options, summary, progress))
    try:
        if isinstance(task, BatchableTask):
            finished = _pipelined(engine, task, feed, options, summary, progress, emit)
        else:
            finished = True
            while (record := feed.get(block=True)) is not _END:
                progress.submitted()
                out = _one(engine, task, record, options, summary, progress)
                progress.completed_one(failed="error" in out)
                if not emit(record, out):
                    finished = False
                    break
        if finished and feed.error is not None:
            raise feed.error  # the input failed: everything read before it is written
    except KeyboardInterrupt:
        summary.interrupted = True  # records in flight are abandoned, never half-written
    finally:
        feed.close()
        summary.seconds = time.perf_counter() - started
        progress.finish()
    return summary


def _todo(records: Iterable[Record], done: DoneSet | None, options: RunOptions,
          summary: Summary, progress: RunProgress) -> Iterator[Record]:
    """The records to process: not done before (resume), at most --limit of them.
    Nothing is read past the last one --limit allows."""
    if options.limit is not None and options.limit <= 0:
        return
    taken = 0
    for record in records:
        if done is not None and done.is_done(record):
            summary.skipped += 1
            progress.skip()
            continue
        taken += 1
        yield record
        if options.limit is not None and taken >= options.limit:
            return


_END: Any = object()  # the input is exhausted (or failed: see _Feed.error)
_WAIT: Any = object()  # nothing has arrived yet
_READ_AHEAD = 256  # records read ahead of the engine, at most
_BACKLOG = 1024  # records done without the engine waiting behind one in flight, at most
_GRACE_S = 0.05  # how long a reader that just started a read is given to finish it


class _Feed:
    """Records read by a daemon thread into a bounded buffer.

    Reading may block (a pipe, a slow producer); the engine must not wait for it
    while it has work in flight or results to hand back. So the runner takes what
    has arrived without blocking while requests are in flight, and blocks only when
    it has nothing else to do. The thread never keeps the process alive, and an
    error from the readers is kept for the runner to raise after the records read
    before it are written. The runner takes everything buffered at once, so the
    hand-over costs about one lock per record. A reader that has only just started
    a read is given a moment (it is parsing, not waiting), so that records from a
    file still fill the engine's slots.
    """

    def __init__(self, records: Iterator[Record]) -> None:
        self.error: BaseException | None = None
        self._shared: list[Any] = []  # filled by the thread, taken whole by the runner
        self._taken: deque[Any] = deque()  # the runner's, in order
        self._cond = threading.Condition()
        self._stop = False
        self._reading = False
        self._read_since = 0.0  # when the thread started its current read
        # CPython closes sys.stdin at exit, and aborts when a daemon thread is blocked
        # reading it ("could not acquire lock ... daemon threads"): the thread holds it
        keep = (sys.stdin, sys.__stdin__)
        self._thread = threading.Thread(target=self._read, args=(records, keep),
                                        name="termlm-reader", daemon=True)
        self._thread.start()

    def _read(self, records: Iterator[Record], _keep: object) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                self._reading = True
                self._read_since = time.monotonic()
            try:
                record = next(records, _END)
            except BaseException as exc:  # an InputError, or worse: the runner raises it
                self.error = exc
                record = _END
            with self._cond:
                self._reading = False
                while len(self._shared) >= _READ_AHEAD and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                self._shared.append(record)
                if len(self._shared) == 1:
                    self._cond.notify_all()  # the runner may be waiting for it
            if record is _END:
                return

    def get(self, *, block: bool) -> Any:
        """The next record, _END, or (not blocking) _WAIT when none has arrived."""
        if not self._taken:
            with self._cond:
                while not self._shared:
                    if block:
                        self._cond.wait()
                        continue
                    left = self._read_since + _GRACE_S - time.monotonic()
                    if not self._reading or left <= 0:
                        return _WAIT
                    self._cond.wait(left)
                self._taken.extend(self._shared)
                self._shared.clear()
                self._cond.notify_all()  # room again
        item = self._taken.popleft()
        if item is _END:
            self._taken.appendleft(item)  # it stays the end
        return item

    def close(self) -> None:
        """Stop reading. A thread blocked on its input is left behind (a daemon)."""
        with self._cond:
            self._stop = True
            reading = self._reading
            self._cond.notify_all()
        self._thread.join(timeout=0.1 if reading else 1.0)


@dataclass
class _Item:
    record: Record
    out: dict[str, Any] | None = None  # set when done without the engine (failed, or answered)
    n_tokens: int = 0
    truncated: bool = False
    request: ChatRequest | ScoreRequest | None = None  # what went to the engine


def _pipelined(engine: Engine, task: BatchableTask, feed: _Feed, options: RunOptions,
               summary: Summary, progress: RunProgress,
               emit: Callable[[Record, dict[str, Any]], bool]) -> bool:
    """One engine request per record, handed to the engine as a stream so a batching
    engine can run many at once; results are written in input order, each as soon as
    every record before it is written. False when stopped early (--fail-fast)."""
    items: deque[_Item] = deque()  # not written yet, in input order; the head is in flight
    in_flight = 0  # requests handed to the engine whose results have not come back
    sent: dict[int, _Item] = {}  # in flight, by request index (the engine's numbering)
    numbers = itertools.count()  # the engine numbers the requests it is sent from 0
    stopped = False

    def settle(item: _Item) -> bool:
        """A record done without the engine: written now, unless one before it is in flight."""
        assert item.out is not None
        if items:
            items.append(item)
            return True
        return emit(item.record, item.out)

    def requests() -> Generator[ChatRequest | ScoreRequest | None, None, None]:
        """Requests as the records arrive; None: nothing yet, go on with what you have."""
        nonlocal in_flight, stopped
        while not stopped:
            if in_flight and len(items) > _BACKLOG:
                yield None  # hand back results before reading on: memory stays bounded
                continue
            record = feed.get(block=not in_flight)
            if record is _WAIT:
                yield None
                continue
            if record is _END:
                return
            item = _start(engine, task, record, options, summary, progress)
            if item.request is None:
                assert item.out is not None
                progress.completed_one(failed="error" in item.out, in_flight=False)
                if not settle(item):
                    stopped = True
                continue
            items.append(item)
            sent[next(numbers)] = item
            in_flight += 1
            progress.submitted()
            yield item.request

    stream = requests()
    # chat requests come back as they finish (complete_each), so the progress counts
    # every completion at once; scores come back in order. Either way the output is
    # written in input order, each record as soon as all before it are written.
    results: Iterator[tuple[int, Any]] = (
        enumerate(score_many(engine, stream))  # type: ignore[arg-type]
        if task.kind == "score" else complete_each(engine, stream))  # type: ignore[arg-type]
    try:
        for index, result in results:
            in_flight -= 1
            item = sent.pop(index)
            item.out = _finish(task, item, result, options, summary, progress)
            progress.completed_one(failed="error" in item.out)
            while items and items[0].out is not None:
                ready = items.popleft()
                assert ready.out is not None
                if not emit(ready.record, ready.out):
                    return False
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
        stream.close()
    return not stopped


def _start(engine: Engine, task: BatchableTask, record: Record, options: RunOptions,
           summary: Summary, progress: RunProgress) -> _Item:
    """A record's engine request, or its output when it needs none (failed, answered)."""
    if record.error is not None:
        return _Item(record, error_record(record, record.error))
    try:
        messages, n_tokens, truncated = prepare(engine, task, record, options.on_overflow)
        request = task.request(engine, messages, record)
    except TermlmError as exc:
        return _Item(record, error_record(record, exc.message))
    if isinstance(request, dict):  # answered without the model
        return _Item(record, _done_fields(record, request, n_tokens, truncated, options,
                                          summary, progress))
    return _Item(record, None, n_tokens, truncated, request)


def _finish(task: BatchableTask, item: _Item, result: Any, options: RunOptions,
            summary: Summary, progress: RunProgress) -> dict[str, Any]:
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
                 options: RunOptions, summary: Summary, progress: RunProgress) -> dict[str, Any]:
    summary.prompt_tokens += n_tokens
    progress.add_tokens(n_tokens)
    if truncated:
        summary.truncated += 1
        fields = {**fields, "truncated": True}
    out = result_record(record, fields, options.keep_fields)
    out.pop("error", None)  # a kept input field named "error" must not fail a good record
    return out


def _one(engine: Engine, task: Task, record: Record, options: RunOptions, summary: Summary,
         progress: RunProgress) -> dict[str, Any]:
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
