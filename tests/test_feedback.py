"""What termlm shows while it works: the spinner (item 6) and batch progress (item 4)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from termlm.activity import Activity, until_first
from termlm.engine.fake import FakeBatchingEngine, FakeEngine
from termlm.engine.types import SamplingParams
from termlm.progress import RunProgress
from termlm.records.types import Record
from termlm.records.writers import RecordWriter
from termlm.runner import RunOptions, run_records
from termlm.tasks.generate import GenerateTask


class _Recording(Activity):
    def __init__(self) -> None:
        super().__init__(io.StringIO(), enabled=True)
        self.said: list[str] = []
        self.stops = 0

    def say(self, text: str) -> None:
        self.said.append(text)

    def stop(self) -> None:
        self.stops += 1


def test_the_spinner_shows_until_the_first_item_then_goes() -> None:
    activity = _Recording()
    seen: list[str] = []

    def items() -> Iterator[str]:
        seen.append(f"said={activity.said} stops={activity.stops}")
        yield "a"
        yield "b"

    assert list(until_first(items(), activity, "reading the prompt (7 tokens)...")) == ["a", "b"]
    assert seen == ["said=['reading the prompt (7 tokens)...'] stops=0"]
    assert activity.said == ["reading the prompt (7 tokens)..."] and activity.stops >= 1


def test_the_spinner_goes_when_the_wait_is_interrupted() -> None:
    activity = _Recording()

    def items() -> Iterator[str]:
        raise KeyboardInterrupt
        yield "never"

    with pytest.raises(KeyboardInterrupt):
        list(until_first(items(), activity, "waiting"))
    assert activity.stops >= 1


def test_closing_the_wrapper_closes_the_stream() -> None:
    closed: list[bool] = []

    def items() -> Iterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            closed.append(True)

    wrapped = until_first(items(), _Recording(), "x")
    assert next(wrapped) == "a"
    wrapped.close()  # type: ignore[attr-defined]
    assert closed == [True]


def test_no_spinner_off_a_terminal() -> None:
    stream = io.StringIO()
    activity = Activity(stream)
    assert not activity.enabled
    activity.say("loading the model...")
    activity.stop()
    assert stream.getvalue() == ""


def test_a_real_spinner_line_is_drawn_and_removed() -> None:
    stream = io.StringIO()
    activity = Activity(stream, enabled=True)
    activity.say("loading smollm2...")
    activity.stop()
    assert "loading smollm2..." in stream.getvalue()


# progress


def test_progress_counts_completions_and_what_is_in_flight() -> None:
    clock = [100.0]
    progress = RunProgress(True, 10, stream=io.StringIO())
    progress._started = None
    import termlm.progress as module

    real = module.time.perf_counter
    module.time.perf_counter = lambda: clock[0]  # type: ignore[assignment]
    try:
        for _ in range(4):
            progress.submitted()
        clock[0] += 2
        progress.completed_one(failed=False)
        progress.completed_one(failed=True)
        assert progress.line().startswith("2/10 records, 2 in flight, 1 failed, 1.00 rec/s")
        first = progress.eta()
        assert first == pytest.approx(8.0)
        clock[0] += 6  # nothing finishes for a while: the estimate moves, it does not freeze
        later = progress.eta()
        assert later is not None and later > first
    finally:
        module.time.perf_counter = real  # type: ignore[assignment]


def test_progress_with_an_unknown_total() -> None:
    progress = RunProgress(True, None, stream=io.StringIO())
    progress.completed_one(failed=False, in_flight=False)
    assert progress.line().startswith("1 records") and "ETA -:--" in progress.line()


def _run(engine: FakeEngine, n: int, tmp_path: Path, total: int | None) -> str:
    import sys

    out = tmp_path / "out.jsonl"
    records = [Record(id=str(i), text=f"text {i}", line=i, position=i - 1)
               for i in range(1, n + 1)]
    err = io.StringIO()
    real = sys.stderr
    sys.stderr = err
    try:
        with RecordWriter(out.open("w", encoding="utf-8"), "jsonl", close_stream=True) as writer:
            run_records(engine, GenerateTask("{text}", None, SamplingParams()), records, writer,
                        RunOptions(progress=True, total=total))
    finally:
        sys.stderr = real
    return err.getvalue()


def test_a_run_shows_zero_of_n_before_the_first_record(tmp_path: Path) -> None:
    talk = _run(FakeBatchingEngine(parallel=4), 6, tmp_path, total=6)
    lines = talk.splitlines()
    assert lines[0].startswith("0/6 records, 0 in flight")


def test_completions_are_counted_out_of_order(tmp_path: Path) -> None:
    """An engine finishing record 2 before record 1: the count moves at once, while the
    output still waits for record 1."""

    class Backwards(FakeBatchingEngine):
        def complete_each(self, requests):  # type: ignore[no-untyped-def,override]
            batch = [r for r in requests if r is not None]
            results = [self.complete(r) for r in batch]
            for index in reversed(range(len(batch))):
                self.seen.append(progress_now())
                yield index, results[index]

    seen_lines: list[str] = []
    Backwards.seen = seen_lines  # type: ignore[attr-defined]
    state: dict[str, RunProgress] = {}

    import termlm.runner as runner_module

    real = runner_module.RunProgress

    class Spy(RunProgress):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)  # type: ignore[arg-type]
            state["p"] = self

    def progress_now() -> str:
        return f"{state['p'].completed} done"

    runner_module.RunProgress = Spy  # type: ignore[misc]
    try:
        _run(Backwards(parallel=4), 3, tmp_path, total=3)
    finally:
        runner_module.RunProgress = real  # type: ignore[misc]
    assert seen_lines == ["0 done", "1 done", "2 done"]
    assert state["p"].completed == 3
    written = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [line.split('"id": "')[1][0] for line in written] == ["1", "2", "3"]
