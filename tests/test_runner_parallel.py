"""The runner hands records to a batching engine as a stream and writes results in order."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from termlm.engine.fake import FakeEngine
from termlm.engine.types import (
    BatchingEngine,
    ChatRequest,
    Completion,
    Score,
    ScoreRequest,
)
from termlm.errors import ContextOverflow

from .conftest import Cli


class FakeBatching(FakeEngine):
    """Pulls `parallel` requests before answering, finishes them out of order inside,
    and yields results in request order, like a slot scheduler would."""

    def __init__(self, parallel: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.parallel = parallel
        self.max_in_flight = 0

    def _take(self, it: Iterator[Any]) -> list[Any]:
        """Up to `parallel` requests; fewer when the caller has none yet (a None)."""
        window: list[Any] = []
        for request in it:
            if request is None:
                if not window:
                    raise RuntimeError("waits with nothing in flight")
                break
            window.append(request)
            if len(window) == self.parallel:
                break
        return window

    def complete_many(self, requests: Iterable[ChatRequest]) -> Iterator[Completion | Exception]:
        it = iter(requests)
        while True:
            window = self._take(it)
            if not window:
                return
            self.max_in_flight = max(self.max_in_flight, len(window))
            for request in window:
                text = request.messages[-1].content
                if "BOOM" in text:
                    yield ContextOverflow(9999, self.info.n_ctx)
                else:
                    yield self.complete(request)

    def complete_each(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[tuple[int, Completion | Exception]]:
        """Takes up to `parallel` requests (fewer when the caller waits), then hands their
        results back last first, as slots that finish out of order would."""
        it = iter(requests)
        index = 0
        while True:
            window: list[tuple[int, ChatRequest]] = []
            for request in it:
                if request is None:
                    if not window:
                        raise RuntimeError("waits with nothing in flight")
                    break
                window.append((index, request))
                index += 1
                if len(window) == self.parallel:
                    break
            if not window:
                return
            self.max_in_flight = max(self.max_in_flight, len(window))
            for i, request in reversed(window):
                if "BOOM" in request.messages[-1].content:
                    yield i, ContextOverflow(9999, self.info.n_ctx)
                else:
                    yield i, self.complete(request)

    def score_many(self, requests: Iterable[ScoreRequest]) -> Iterator[list[Score] | Exception]:
        it = iter(requests)
        while True:
            window = self._take(it)
            if not window:
                return
            self.max_in_flight = max(self.max_in_flight, len(window))
            for request in window:
                yield self.score(request)


def test_fake_is_a_batching_engine() -> None:
    assert isinstance(FakeBatching(4), BatchingEngine)


@pytest.mark.parametrize("parallel", [2, 4, 16])
def test_results_in_input_order_with_failures_interleaved(tmp_path: Path, parallel: int) -> None:
    lines = []
    for i in range(20):
        if i % 7 == 3:
            lines.append("{not json")
        elif i % 5 == 4:
            lines.append(json.dumps({"id": f"r{i}", "text": f"BOOM {i}"}))
        else:
            lines.append(json.dumps({"id": f"r{i}", "text": f"record {i}"}))
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(lines) + "\n")
    engine = FakeBatching(parallel)
    cli = Cli(engine)
    result = cli("batch", "-p", "{text}", str(data))
    assert result.exit_code == 3
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 20
    for i, row in enumerate(rows):
        if i % 7 == 3:
            assert "invalid JSON" in row["error"]
            assert row["id"] == str(i + 1)
        elif i % 5 == 4:
            assert row["id"] == f"r{i}" and "context window" in row["error"]
        else:
            assert row["id"] == f"r{i}" and row["output"] == f"echo: record {i}"
    assert engine.max_in_flight == parallel


def test_classify_goes_through_score_many(tmp_path: Path) -> None:
    engine = FakeBatching(3, scores={"b": -0.1, "a": -3.0})
    cli = Cli(engine)
    result = cli("classify", "--labels", "a,b", input="".join(f"t{i}\n" for i in range(7)))
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 8)]
    assert {r["label"] for r in rows} == {"b"}
    assert engine.max_in_flight == 3


def test_fail_fast_stops_at_the_first_failure_in_order(tmp_path: Path) -> None:
    engine = FakeBatching(4)
    cli = Cli(engine)
    text = "ok 1\nok 2\nBOOM 3\nok 4\nok 5\n"
    result = cli("batch", "-p", "{text}", "--fail-fast", input=text)
    assert result.exit_code == 3
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert "error" in rows[-1]


def test_summary_line_reports_tokens_evaluated_when_the_engine_counts() -> None:
    from termlm.runner import Summary

    assert "tokens evaluated" not in Summary(ok=3).line()
    line = Summary(ok=3, failed=1, tokens_evaluated=50, seconds=2.0).line()
    assert line.endswith("(2.00 records/s, 12.5 tokens evaluated per record)")
    assert "tokens evaluated" not in Summary(tokens_evaluated=0).line()  # nothing done
