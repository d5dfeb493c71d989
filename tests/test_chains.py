"""Chains of dependent calls side by side (termlm.chains), and what uses them:
`translate --parallel` and `qa --questions --parallel`."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from termlm.chains import Chain, run_chains, stretches
from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest, Completion, Message, SamplingParams, complete_each
from termlm.errors import ContextOverflow
from termlm.prompts import load_template
from termlm.tasks.translate import Spec, Translator, language

from .conftest import Cli
from .test_runner_parallel import FakeBatching


def ask(text: str) -> ChatRequest:
    return ChatRequest((Message("user", text),), SamplingParams(max_tokens=100))


def counter(name: str, steps: int) -> Chain[str]:
    """Each call carries the previous reply: the chain is only right if replies are routed
    back to the chain that asked."""
    reply = ""
    for step in range(steps):
        done = yield ask(f"{name}-{step} after [{reply}]")
        reply = done.text
    return reply


def expected(name: str, steps: int) -> str:
    reply = ""
    for step in range(steps):
        reply = f"echo: {name}-{step} after [{reply}]"
    return reply


@pytest.mark.parametrize("engine", [FakeEngine(), FakeBatching(1), FakeBatching(3),
                                    FakeBatching(8)], ids=["plain", "p1", "p3", "p8"])
def test_replies_go_back_to_the_chain_that_asked(engine: FakeEngine) -> None:
    lengths = [3, 1, 5, 0, 2]
    chains = [counter(f"c{i}", n) for i, n in enumerate(lengths)]
    assert run_chains(engine, chains) == [expected(f"c{i}", n) for i, n in enumerate(lengths)]
    assert len(engine.requests) == sum(lengths)


def test_chains_run_side_by_side_up_to_the_slots() -> None:
    engine = FakeBatching(3)
    run_chains(engine, [counter(f"c{i}", 4) for i in range(5)])
    assert engine.max_in_flight == 3
    first_three = [r.messages[-1].content.split(" ")[0] for r in engine.requests[:3]
                   if isinstance(r, ChatRequest)]
    assert sorted(first_three) == ["c0-0", "c1-0", "c2-0"]


def test_an_engine_error_is_thrown_into_its_chain_which_may_go_on() -> None:
    def careful() -> Generator[ChatRequest, Completion, str]:
        try:
            yield ask("BOOM")
        except ContextOverflow:
            done = yield ask("smaller")
            return "recovered " + done.text
        return "no error"  # pragma: no cover - the engine always fails BOOM

    assert run_chains(FakeBatching(2), [careful(), counter("x", 2)]) == [
        "recovered echo: smaller", expected("x", 2)]


def test_an_error_a_chain_lets_through_stops_and_closes_them_all() -> None:
    closed: list[str] = []

    def chain(name: str, text: str) -> Chain[str]:
        try:
            for _ in range(10):
                yield ask(text)
        finally:
            closed.append(name)
        return name

    with pytest.raises(ContextOverflow):
        run_chains(FakeBatching(2), [chain("a", "fine"), chain("b", "BOOM")])
    assert sorted(closed) == ["a", "b"]


def test_waiting_with_nothing_in_flight_is_an_error_not_a_hang() -> None:
    def stuck() -> Generator[ChatRequest | None, None, None]:
        yield None

    with pytest.raises(RuntimeError):
        list(complete_each(FakeEngine(), stuck()))
    with pytest.raises(RuntimeError):
        list(complete_each(FakeBatching(2), stuck()))


@given(st.lists(st.integers(1, 50), max_size=30), st.integers(1, 10))
def test_stretches_cover_the_items_in_order(weights: list[int], n: int) -> None:
    runs = stretches(weights, n, lambda w: w)
    assert [w for run in runs for w in run] == weights
    assert all(runs)
    assert len(runs) == min(n, len(weights)) or (not weights and runs == [])


def test_stretches_balance_the_weight() -> None:
    runs = stretches([10] * 8 + [40, 40], 3, lambda w: w)
    assert [sum(r) for r in runs] == [60, 60, 40]  # no cut has a smaller largest run


# -- translate ------------------------------------------------------------------------------

class Upper(FakeBatching):
    """Translates by upper-casing the text asked for (the last user message's last line)."""

    def _reply_for(self, request: ChatRequest) -> str:
        if self.replies:
            return self.replies.popleft()
        return request.messages[-1].content.split("\n")[-1].upper()


def translator(engine: FakeEngine, parallel: int | None = None) -> Translator:
    tmpl = load_template("translate")
    spec = Spec(target=language("fr"), source=None, template=tmpl,
                sampling=tmpl.sampling(), model_id="fake")
    return Translator(engine, spec, None, parallel)


PARAGRAPHS = [f"Paragraph number {word} is here." for word in
              ["one", "two", "three", "four", "five", "six", "seven"]]
DOC = "# Title\n\n" + "\n\n".join(PARAGRAPHS) + "\n\n```\ncode stays\n```\n"


@pytest.mark.parametrize("parallel", [1, 3, 8])
def test_translate_in_stretches_keeps_the_document_in_order(parallel: int) -> None:
    engine = Upper(parallel)
    seen: list[tuple[int, int]] = []
    result = translator(engine).document(DOC, "markdown", lambda d, t: seen.append((d, t)))
    assert result.text == DOC.replace("code stays", "@@").upper().replace("@@", "code stays")
    assert result.units == 8
    assert seen == [(i, 8) for i in range(1, 9)]
    chats = [r for r in engine.requests if isinstance(r, ChatRequest)]
    assert len(chats) == 8
    alone = [r for r in chats if not any(m.role == "assistant" for m in r.messages)]
    assert len(alone) == min(parallel, 8)  # the first unit of each stretch
    assert max(engine.max_in_flight, 1) == min(parallel, 8)  # 1: plain complete() calls


def test_parallel_argument_overrides_the_engine_slots() -> None:
    engine = Upper(4)
    translator(engine, parallel=1).document(DOC, "markdown")
    chats = [r for r in engine.requests if isinstance(r, ChatRequest)]
    assert sum(not any(m.role == "assistant" for m in r.messages) for r in chats) == 1


def test_warnings_come_in_document_order_whatever_finishes_first() -> None:
    class LosesNumbers(Upper):
        def _reply_for(self, request: ChatRequest) -> str:
            return "".join(c for c in super()._reply_for(request) if not c.isdigit())

    doc = "\n\n".join(f"Item {i} costs {i}0 euros." for i in range(1, 7)) + "\n"
    result = translator(LosesNumbers(3)).document(doc, "text")
    assert [w.split(":")[0] for w in result.warnings] == [
        f"segment {i} (line {2 * i - 1})" for i in range(1, 7)]


def test_a_reply_copying_the_previous_translation_is_asked_again_alone() -> None:
    engine = FakeEngine(["Le chat dort.", "Le chat dort.", "Le chien mange."])
    doc = "The cat sleeps.\n\nThe dog eats.\n"
    result = translator(engine).document(doc, "text")
    assert result.text == "Le chat dort.\n\nLe chien mange.\n"
    assert not result.warnings
    last = engine.requests[-1]
    assert isinstance(last, ChatRequest)
    assert not any(m.role == "assistant" for m in last.messages)


def test_translate_cli_parallel_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "doc.md"
    source.write_text(DOC)
    cli = Cli(Upper(8))
    result = cli("translate", "--to", "fr", "-P", "2", str(source))
    assert result.exit_code == 0, result.stderr
    assert "PARAGRAPH NUMBER SEVEN IS HERE." in result.stdout
    assert cli.settings_seen[-1].parallel == 2  # type: ignore[attr-defined]
    assert cli("translate", "--to", "fr", "-P", "0", str(source)).exit_code == 2


# -- qa --questions --parallel ----------------------------------------------------------------

def test_qa_questions_in_parallel_stay_in_order(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))
    Path("docs").mkdir()
    for i in range(12):
        Path(f"docs/f{i}.md").write_text(f"The code word for box {i} is sesame{i}.\n")
    questions = [f"What is the code word for box {i}?" if i % 3 else
                 f"Who painted wall {i} purple?" for i in range(12)]
    Path("qs.txt").write_text("\n".join(questions) + "\n")
    engine = FakeBatching(4)
    result = Cli(engine)("qa", "--docs", "docs", "--questions", "qs.txt", "-P", "4")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["question"] for r in rows] == questions
    assert [r["found"] for r in rows] == [bool(i % 3) for i in range(12)]
    asked = [r for r in engine.requests if isinstance(r, ChatRequest)]
    assert len(asked) == 8  # the four with nothing relevant never reach the model
    assert engine.max_in_flight == 4
    for row in rows:
        if row["found"]:
            assert row["question"] in row["answer"]  # the echo of its own prompt
    assert Cli(engine)("qa", "--docs", "docs", "-P", "2", "question?").exit_code == 2


# -- groups of chains (several documents at once) ------------------------------------------

def test_groups_share_the_slots_and_come_back_in_order() -> None:
    from termlm.chains import run_groups

    engine = FakeBatching(4)
    groups = [(f"g{g}", [counter(f"g{g}c{c}", 2) for c in range(g % 3)]) for g in range(7)]
    out = list(run_groups(engine, groups, slots=4))
    assert [key for key, _ in out] == [f"g{g}" for g in range(7)]
    for g, (_key, results) in enumerate(out):
        assert results == [expected(f"g{g}c{c}", 2) for c in range(g % 3)]
    assert engine.max_in_flight == 4  # chains of different groups ran together


def test_a_failing_group_stops_alone() -> None:
    from termlm.chains import run_groups

    closed: list[str] = []

    def boom(name: str) -> Chain[str]:
        try:
            yield ask("first")
            yield ask("BOOM")
            yield ask("never")
        finally:
            closed.append(name)
        return name  # pragma: no cover - BOOM always fails

    def slow(name: str) -> Chain[str]:
        try:
            for _ in range(6):
                yield ask("fine")
        finally:
            closed.append(name)
        return name

    groups = [("a", [counter("a", 2)]), ("b", [boom("b1"), slow("b2")]), ("c", [counter("c", 3)])]
    out = dict(run_groups(FakeBatching(3), groups, slots=3))
    assert out["a"] == [expected("a", 2)]
    assert isinstance(out["b"], ContextOverflow)
    assert out["c"] == [expected("c", 3)]
    assert sorted(closed) == ["b1", "b2"]  # its other chain was stopped too


def test_groups_without_model_calls_need_no_engine() -> None:
    from termlm.chains import run_groups

    def cached(value: str) -> Chain[str]:
        return value
        yield ask("unreachable")  # pragma: no cover - makes this a generator

    engine = FakeEngine()
    groups = [(i, [cached(f"v{i}")] if i % 2 else []) for i in range(30)]
    out = list(run_groups(engine, groups, slots=2))
    assert out == [(i, [f"v{i}"] if i % 2 else []) for i in range(30)]
    assert engine.requests == []


def test_translate_runs_several_files_at_once(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))
    Path("docs").mkdir()
    for i in range(6):
        Path(f"docs/f{i}.md").write_text(f"File number {i} says hello.\n")
    Path("docs/f3.md").write_text("Costs 10 euros.\n")

    class LosesNumbers(Upper):
        def _reply_for(self, request: ChatRequest) -> str:
            reply = super()._reply_for(request)
            return reply.replace("10", "") if "10" in reply else reply

    engine = LosesNumbers(4)
    result = Cli(engine)("translate", "--to", "fr", "--strict", "docs", "-o", "out")
    assert result.exit_code == 3, result.stderr
    assert engine.max_in_flight == 4  # one segment per file: files ran side by side
    for i in (0, 1, 2, 4, 5):
        assert Path(f"out/docs/f{i}.fr.md").read_text() == f"FILE NUMBER {i} SAYS HELLO.\n"
    assert not Path("out/docs/f3.fr.md").exists()
    lines = [line for line in result.stderr.splitlines() if "->" in line or "error" in line]
    assert [line.split(" ")[0].rstrip(":") for line in lines] == [
        "docs/f0.md", "docs/f1.md", "docs/f2.md", "termlm", "docs/f4.md", "docs/f5.md"]
    assert "docs/f3.md" in lines[3] and "--strict" in lines[3]
