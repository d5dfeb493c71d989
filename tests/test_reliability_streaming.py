"""Records are written the moment they can be (issue 11, item 6 and item 13's last point).

- A record done without the engine (an error record, say) is written as soon as
  every record before it is, not when the next engine result comes back.
- Waiting for input never holds up what is in flight: with slow stdin, results
  are written before EOF, at --parallel 1 and 4, for chat and score tasks.
- A stream of errors is written as it comes, in bounded memory.
- --limit reads no further than the records it runs; Ctrl-C while waiting for
  input stops at once, with nothing half-written.
- At --parallel 1 the scheduler still sees the next request, so a shared prompt
  prefix is evaluated once (as at --parallel 4).

Subprocess tests run the real CLI with the fake batching engine behind it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest

from termlm.engine.fake import FakeBatchingEngine
from termlm.engine.types import ChatRequest, Completion, Message, ScoreRequest, score_many
from termlm.errors import InputError
from termlm.records.types import Record
from termlm.records.writers import RecordWriter
from termlm.runner import _BACKLOG, _READ_AHEAD, RunOptions, run_records
from termlm.tasks.generate import GenerateTask

from .conftest import PLUMBING_MODEL, model_env
from .test_batched_units import SYSTEM, FakeNative, ask, fake_engine

ROOT = Path(__file__).resolve().parents[1]

# The real Typer app with the fake batching engine behind it; signals as `termlm` has them.
FAKE_CLI = """
import signal, sys
from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.fake import FakeBatchingEngine

def _terminate(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, _terminate)
engine = FakeBatchingEngine(parallel=int(sys.argv[1]), scores={"b": -0.1, "a": -3.0})
app(sys.argv[2:], obj=AppState(engine_factory=lambda settings: engine), prog_name="termlm")
"""


class Lines:
    """A stream's lines, read by a thread, awaited with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._cond:
                self.lines.append(raw.decode("utf-8"))
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        """True once ``n`` lines have come, False at EOF or the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < n and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return len(self.lines) >= n


class FakeCli:
    """``termlm ARGS`` on the fake engine, stdin held open until ``close_stdin``."""

    def __init__(self, parallel: int, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TERMLM_NO_CRASH_GUARD"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_CLI, str(parallel), *args], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.out = Lines(self.proc.stdout)
        self.err = Lines(cast(IO[bytes], self.proc.stderr))

    def feed(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def close_stdin(self) -> None:
        self.stdin.close()

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for lines in (self.out, self.err):
            lines.thread.join(5)  # to EOF: the process is gone
        for stream in (self.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


@pytest.fixture
def fake_cli() -> Iterator[list[FakeCli]]:
    started: list[FakeCli] = []
    yield started
    for run in started:
        run.kill()


def _start(started: list[FakeCli], parallel: int, *args: str) -> FakeCli:
    run = FakeCli(parallel, *args)
    started.append(run)
    return run


# -- slow input: results before EOF -----------------------------------------------------
@pytest.mark.parametrize("parallel", [1, 4])
@pytest.mark.parametrize("command", [["batch", "-p", "{text}"], ["classify", "--labels", "a,b"]])
def test_slow_stdin_results_are_written_before_eof(fake_cli: list[FakeCli], parallel: int,
                                                    command: list[str]) -> None:
    run = _start(fake_cli, parallel, *command, "--parallel", str(parallel))
    run.feed(b"one\ntwo\nthree\n")  # then a pause: stdin stays open
    assert run.out.wait_for(3, timeout=8.0), (run.out.lines, run.err.lines)
    ids = [json.loads(line)["id"] for line in run.out.lines]
    assert ids == ["1", "2", "3"]
    run.close_stdin()
    assert run.wait() == 0


def test_an_error_record_after_the_last_good_one_is_written_before_eof(
        fake_cli: list[FakeCli]) -> None:
    run = _start(fake_cli, 4, "batch", "-p", "{text}", "--input-format", "jsonl")
    run.feed(b'{"text": "a"}\n{"text": "b"}\n{not json\n')
    assert run.out.wait_for(3, timeout=8.0), (run.out.lines, run.err.lines)
    rows = [json.loads(line) for line in run.out.lines]
    assert [r.get("output") for r in rows[:2]] == ["echo: a", "echo: b"]
    assert "invalid JSON" in rows[2]["error"]
    run.close_stdin()
    assert run.wait() == 3


def test_a_stream_of_invalid_lines_is_written_before_eof(fake_cli: list[FakeCli]) -> None:
    run = _start(fake_cli, 4, "batch", "-p", "{text}", "--input-format", "jsonl")

    def produce() -> None:
        with contextlib.suppress(OSError, ValueError):  # the test is over
            run.feed(b"{bad\n" * 200_000)  # then a pause: stdin stays open

    threading.Thread(target=produce, daemon=True).start()
    assert run.out.wait_for(1, timeout=8.0), run.err.lines  # at once, not at EOF
    assert run.out.wait_for(20_000, timeout=8.0), len(run.out.lines)
    first = json.loads(run.out.lines[0])
    assert first["id"] == "1" and "invalid JSON" in first["error"]
    run.proc.send_signal(signal.SIGTERM)  # stops cleanly, as Ctrl-C does
    assert run.wait() == 130


def test_limit_reads_no_further_than_it_runs(fake_cli: list[FakeCli]) -> None:
    run = _start(fake_cli, 4, "batch", "-p", "{text}", "--limit", "2")
    run.feed(b"a\nb\n")  # nothing more, and stdin stays open: the run ends anyway
    assert run.wait(timeout=8.0) == 0
    assert [json.loads(line)["id"] for line in run.out.lines] == ["1", "2"]


@pytest.mark.parametrize("parallel", [1, 4])
def test_ctrl_c_while_waiting_for_input_stops_at_once(fake_cli: list[FakeCli], tmp_path: Path,
                                                      parallel: int) -> None:
    out = tmp_path / "out.jsonl"
    run = _start(fake_cli, parallel, "batch", "-p", "{text}", "-o", str(out))
    run.feed(b"a\nb\n")
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline and (not out.exists() or
                                           out.read_text().count("\n") < 2):
        time.sleep(0.05)
    assert out.read_text().count("\n") == 2, run.err.lines
    started = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(timeout=5.0) == 130
    assert time.monotonic() - started < 2.0
    run.err.wait_for(10**6, timeout=2.0)  # to EOF
    err = "".join(run.err.lines)
    assert "Fatal Python error" not in err and "Traceback" not in err, err
    assert "interrupted after 2 records" in err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "2"]


# -- the runner, in-process ---------------------------------------------------------------
class ListWriter:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.rows.append(dict(record))


def _good(rid: str) -> Record:
    return Record(rid, rid, {}, "stdin")


def _bad(rid: str) -> Record:
    return Record(rid, None, {}, "stdin", 0, f"invalid JSON on line {rid}")


TASK = GenerateTask(user="{text}", system=None, sampling=ChatRequest(()).sampling)


def _run(engine: Any, records: Any, writer: ListWriter, **options: Any) -> Any:
    return run_records(engine, TASK, records, cast(RecordWriter, writer), RunOptions(**options))


class Watching(FakeBatchingEngine):
    """Notes how many rows were written when each request reached the model."""

    def __init__(self, writer: ListWriter, **kw: Any) -> None:
        super().__init__(**kw)
        self.writer = writer
        self.rows_at: dict[str, int] = {}

    def complete(self, request: ChatRequest) -> Completion:
        self.rows_at[request.messages[-1].content] = len(self.writer.rows)
        return super().complete(request)


@pytest.mark.parametrize("parallel", [1, 4])
def test_error_records_are_written_right_after_the_result_before_them(parallel: int) -> None:
    writer = ListWriter()
    engine = Watching(writer, parallel=parallel)
    records = [_good("r1"), _bad("r2"), _bad("r3"), _good("r4"), _bad("r5")]
    summary = _run(engine, records, writer)
    assert [r["id"] for r in writer.rows] == ["r1", "r2", "r3", "r4", "r5"]
    assert (summary.ok, summary.failed) == (2, 3)
    # r2 and r3 were out before r4 went to the model, not held for r4's result
    assert engine.rows_at == {"r1": 0, "r4": 3}


@pytest.mark.parametrize("parallel", [1, 4])
def test_a_trailing_error_record_is_not_held_while_input_stalls(parallel: int) -> None:
    writer = ListWriter()
    release = threading.Event()

    def records() -> Iterator[Record]:
        yield _good("r1")
        yield _bad("r2")
        release.wait(10)  # the input stalls
        yield _good("r3")

    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(
        _run(FakeBatchingEngine(parallel=parallel), records(), writer)))
    worker.start()
    try:
        deadline = time.monotonic() + 5.0
        while len(writer.rows) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r["id"] for r in writer.rows] == ["r1", "r2"]
    finally:
        release.set()
        worker.join(10)
    assert [r["id"] for r in writer.rows] == ["r1", "r2", "r3"]
    assert done and done[0].ok == 2


def test_a_stream_of_errors_is_written_in_bounded_memory() -> None:
    writer = ListWriter()
    worst = 0

    def records() -> Iterator[Record]:
        nonlocal worst
        yield _good("first")  # in flight while the errors pour in
        for i in range(200_000):
            worst = max(worst, i - len(writer.rows))
            yield _bad(str(i))

    summary = _run(FakeBatchingEngine(parallel=4), records(), writer)
    assert summary.failed == 200_000 and len(writer.rows) == 200_001
    assert worst <= _BACKLOG + 2 * _READ_AHEAD + 8  # never all of them held


def test_an_input_failure_keeps_the_results_read_before_it() -> None:
    writer = ListWriter()

    def records() -> Iterator[Record]:
        yield _good("r1")
        yield _good("r2")
        raise InputError("cannot read d/x.txt: Permission denied")

    with pytest.raises(InputError, match="Permission denied"):
        _run(FakeBatchingEngine(parallel=4), records(), writer)
    assert [r["id"] for r in writer.rows] == ["r1", "r2"]


def test_fail_fast_on_an_error_record_stops_reading() -> None:
    writer = ListWriter()
    pulled: list[str] = []

    def records() -> Iterator[Record]:
        for record in [_good("r1"), _bad("r2"), *[_good(f"r{i}") for i in range(3, 2000)]]:
            pulled.append(record.id)
            yield record

    summary = _run(FakeBatchingEngine(parallel=4), records(), writer, fail_fast=True)
    assert [r["id"] for r in writer.rows] == ["r1", "r2"]
    assert summary.stopped_early and summary.ok == 1
    assert len(pulled) < 2000  # read ahead a bounded amount, not to the end


def test_limit_pulls_only_the_records_it_runs() -> None:
    writer = ListWriter()
    pulled: list[str] = []

    def records() -> Iterator[Record]:
        for i in range(10):
            pulled.append(str(i))
            yield _good(str(i))

    _run(FakeBatchingEngine(parallel=4), records(), writer, limit=3)
    assert [r["id"] for r in writer.rows] == ["0", "1", "2"]
    assert pulled == ["0", "1", "2"]


# -- the scheduler: a None (nothing yet) never stops it -------------------------------------
def _score_request(text: str) -> ScoreRequest:
    return ScoreRequest((Message("system", SYSTEM), Message("user", text)), ("ab", "c"))


@pytest.mark.parametrize("parallel", [1, 4])
def test_score_many_takes_requests_that_come_after_a_wait(parallel: int) -> None:
    engine = fake_engine(parallel)
    got: list[Any] = []

    def requests() -> Iterator[ScoreRequest | None]:
        yield _score_request("first")
        while not got:
            yield None  # nothing yet: go on with what is in flight
        yield _score_request("second")

    for result in engine.score_many(requests()):
        got.append(result)
    assert len(got) == 2 and all(isinstance(r, list) for r in got)
    assert engine._reserved == 0 and not engine._busy


def test_generation_admits_a_request_that_comes_while_others_run() -> None:
    engine = fake_engine(2)

    def requests() -> Iterator[ChatRequest | None]:
        yield ask("abcdefghijklmnopqrstuvwxyz")  # a long reply
        yield None
        yield None
        yield ask("xy")  # arrives while the first is still generating

    results = list(engine.complete_many(requests()))
    assert [r.text for r in results if isinstance(r, Completion)] == \
        ["zyxwvutsrqponmlkjihgfedcba", "yx"]
    native: FakeNative = engine._native  # type: ignore[assignment]
    # it was taken in after a step, not after the first reply was done
    assert max(len({seq for seq, *_ in b if seq < 2}) for b in native.batches) == 2


# -- item 13: the shared prefix at --parallel 1 ------------------------------------------------
@pytest.mark.parametrize("parallel", [1, 4])
def test_scoring_shares_the_prompt_prefix_at_every_parallel(parallel: int) -> None:
    engine = fake_engine(parallel)
    texts = ["one", "two", "three", "four", "five", "six"]
    results = list(score_many(engine, [_score_request(t) for t in texts]))
    assert all(isinstance(r, list) for r in results)
    native: FakeNative = engine._native  # type: ignore[assignment]
    prefix_runs = [b for b in native.batches if b and b[0][0] == engine._prefix_seq]
    assert len(prefix_runs) == 1  # the system prompt, evaluated once for all six
    decoded = sum(len(b) for b in native.batches)
    full = sum(len(engine._prompts.score_tokens(_score_request(t), 512)[0]) for t in texts)
    assert decoded < full - 4 * len(SYSTEM)


def _evaluated_per_record(parallel: int, data: Path) -> float:
    proc = subprocess.run(
        [sys.executable, "-m", "termlm", "classify", "-m", PLUMBING_MODEL, "--labels",
         "positive,negative", "--parallel", str(parallel), str(data)],
        capture_output=True, text=True, timeout=300, env=model_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"([\d.]+) tokens evaluated per record", proc.stderr)
    assert match, proc.stderr
    return float(match.group(1))


@pytest.mark.model
def test_classify_at_parallel_one_reuses_the_prefix_like_parallel_four(tmp_path: Path) -> None:
    data = tmp_path / "reviews.txt"
    data.write_text("A wonderful film.\nDull and far too long.\nThe actors were great.\n"
                    "I want my money back.\nA fine evening out.\nNot worth the ticket.\n")
    one, four = _evaluated_per_record(1, data), _evaluated_per_record(4, data)
    assert one <= four * 1.2 + 1, (one, four)  # before: 40.9 against 12.1
