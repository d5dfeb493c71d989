"""`termlm summarize` on the FakeEngine: one pass, map-reduce, records, bad input, options.

The FakeEngine counts a token per word and 4 per message, so a small
``n_ctx`` makes a few hundred words "longer than the context".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest
from termlm.records.types import Record
from termlm.runner import prepare
from termlm.tasks.summarize import HEADROOM, copied_share, is_copy

from .conftest import Cli

NOTE_PHRASE = "in a few sentences, keeping the key facts"  # asked of part summaries
REDUCE_MARK = "Part summaries:"  # in the summarize_reduce template


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(name: str, data: str | bytes) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return name


def prose(n_words: int, tag: str = "w") -> str:
    """Paragraphs of sentences of numbered words (so every word can be traced)."""
    paragraphs, sentence, sentences = [], [], []
    for i in range(n_words):
        sentence.append(f"{tag}{i}")
        if len(sentence) == 9:
            sentences.append(" ".join(sentence).capitalize() + ".")
            sentence = []
        if len(sentences) == 6:
            paragraphs.append(" ".join(sentences))
            sentences = []
    if sentence:
        sentences.append(" ".join(sentence) + ".")
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs) + "\n"


class Scripted(FakeEngine):
    """Replies by kind of request: part summary, intermediate combination, final summary."""

    def __init__(self, *, note: str = "a part summary.", final: str = "THE FINAL SUMMARY.",
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.note, self.final = note, final

    def _reply_for(self, request: ChatRequest) -> str:
        user = request.messages[-1].content
        if NOTE_PHRASE in user:
            return self.note
        return self.final

    def chats(self) -> list[ChatRequest]:
        return [r for r in self.requests if isinstance(r, ChatRequest)]

    def kinds(self) -> list[str]:
        out = []
        for request in self.chats():
            user = request.messages[-1].content
            reduce = REDUCE_MARK in user
            final = NOTE_PHRASE not in user
            out.append(("reduce" if reduce else "map") + ("" if final else "-note"))
        return out


def user(request: ChatRequest) -> str:
    return request.messages[-1].content


def part_text(request: ChatRequest) -> str:
    """The text of one part, as the summarize template puts it last in the prompt."""
    return user(request).split("Text:\n", 1)[1]


def parse(text: str) -> list[dict[str, Any]]:
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# -- one pass ------------------------------------------------------------------

def test_a_short_file_is_one_request_printed_plainly() -> None:
    engine = Scripted(final="The gist, in one line.")
    write("notes.md", "The meeting moved to Tuesday. Bring the budget.\n")
    result = Cli(engine)("summarize", "notes.md")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "The gist, in one line.\n"
    [request] = engine.chats()
    assert "The meeting moved to Tuesday. Bring the budget." in user(request)
    assert "in one paragraph" in user(request)  # --length medium, the default
    assert request.sampling.max_tokens == 375  # 250 and room to finish the sentence
    assert request.sampling.temperature == 0  # greedy: the same text, the same summary


def test_stdin_and_dash_are_one_input() -> None:
    for args in ((), ("-",)):
        engine = Scripted(final="From stdin.")
        result = Cli(engine)("summarize", *args, input="Some piped text to summarize.\n")
        assert result.exit_code == 0, result.stderr
        assert result.stdout == "From stdin.\n"
        assert "Some piped text to summarize." in user(engine.chats()[0])


@pytest.mark.parametrize(("length", "phrase", "max_tokens"), [
    ("short", "in one to three sentences", 120),
    ("medium", "in one paragraph", 250),
    ("long", "in about three paragraphs", 600),
])
def test_length_changes_the_prompt_and_max_tokens(length: str, phrase: str,
                                                  max_tokens: int) -> None:
    engine = Scripted()
    write("a.txt", "Text to summarize.\n")
    result = Cli(engine)("summarize", "--length", length, "a.txt")
    assert result.exit_code == 0, result.stderr
    [request] = engine.chats()
    assert phrase in user(request)
    room = engine.info.n_ctx // 3  # the final answer's cap
    assert request.sampling.max_tokens == min(int(max_tokens * HEADROOM), room)


def test_bullets_reach_the_prompt() -> None:
    engine = Scripted(final="- one\n- two")
    write("a.txt", "Text to summarize.\n")
    result = Cli(engine)("summarize", "--format", "bullets", "--length", "short", "a.txt")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "- one\n- two\n"
    prompt = user(engine.chats()[0])
    assert 'starting with "- "' in prompt and "at most three bullet points" in prompt


def test_sampling_options_reach_the_request() -> None:
    engine = Scripted()
    write("a.txt", "Text to summarize.\n")
    result = Cli(engine)("summarize", "--max-tokens", "33", "--temperature", "0",
                         "--seed", "7", "a.txt")
    assert result.exit_code == 0, result.stderr
    sampling = engine.chats()[0].sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.seed) == (33, 0.0, 7)


# -- map-reduce ----------------------------------------------------------------

def test_a_document_four_times_the_context_is_summarized_in_parts() -> None:
    engine = Scripted(n_ctx=256)
    text = prose(1200)  # ~4.7x the context
    write("big.txt", text)
    result = Cli(engine)("summarize", "big.txt")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "THE FINAL SUMMARY.\n"
    kinds = engine.kinds()
    assert kinds[-1] == "reduce" and kinds[:-1] == ["map-note"] * (len(kinds) - 1)
    assert len(kinds) - 1 >= 5
    maps = engine.chats()[:-1]
    for request in maps:  # every part's prompt fits, with room for its summary
        assert engine.count_prompt_tokens(request.messages) + request.sampling.max_tokens \
            <= 256
    assert "".join(part_text(r) for r in maps) == text  # nothing dropped, nothing repeated
    reduce = user(engine.chats()[-1])
    assert reduce.count("a part summary.") == len(maps)


def test_summaries_that_still_do_not_fit_are_combined_in_rounds() -> None:
    long_note = " ".join(["detail"] * 40)  # cut to the note limit (32 at n_ctx 256)
    engine = Scripted(n_ctx=256, note=long_note, final="ALL OF IT.")
    write("big.txt", prose(3000))
    result = Cli(engine)("summarize", "--length", "short", "big.txt", "--progress")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "ALL OF IT.\n"
    kinds = engine.kinds()
    assert kinds[-1] == "reduce"
    assert "reduce-note" in kinds  # an intermediate round
    first_reduce = kinds.index("reduce-note")
    assert set(kinds[:first_reduce]) == {"map-note"}
    assert "round 1" in result.stderr


def test_progress_lines_go_to_stderr() -> None:
    engine = Scripted(n_ctx=256)
    write("big.txt", prose(1200))
    result = Cli(engine)("summarize", "big.txt", "--progress")
    assert result.exit_code == 0, result.stderr
    n_maps = len(engine.chats()) - 1
    lines = result.stderr.splitlines()
    assert any("do not fit the context (256)" in line for line in lines)
    assert f"big.txt: part 1/{n_maps} summarized" in lines
    assert f"big.txt: part {n_maps}/{n_maps} summarized" in lines
    assert any("combining" in line for line in lines)
    assert "part 1/" not in result.stdout

    quiet = Cli(Scripted(n_ctx=256))("summarize", "big.txt")
    assert "part 1/" not in quiet.stderr


def test_one_line_longer_than_the_context_is_split() -> None:
    engine = Scripted(n_ctx=256)
    text = " ".join(f"t{i}" for i in range(1500))  # no newline, no sentence end
    write("line.txt", text)
    result = Cli(engine)("summarize", "line.txt")
    assert result.exit_code == 0, result.stderr
    assert "".join(part_text(r) for r in engine.chats()[:-1]) == text


def test_a_context_too_small_is_a_clear_error() -> None:
    engine = Scripted(n_ctx=64)
    write("big.txt", prose(400))
    result = Cli(engine)("summarize", "big.txt")
    assert result.exit_code == 1
    assert "too small" in result.stderr and "--ctx" in result.stderr
    assert engine.chats() == []  # found out before any work


def test_a_batching_engine_gets_the_parts_at_once() -> None:
    class Batching(Scripted):
        parallel = 4

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.batches: list[int] = []

        def complete_many(self, requests: Iterable[ChatRequest]) -> Iterator[Any]:
            todo = list(requests)
            self.batches.append(len(todo))
            return iter([self.complete(r) for r in todo])

        def complete_each(self, requests: Iterable[Any]) -> Iterator[Any]:
            raise NotImplementedError  # summarize needs no chains

        def score_many(self, requests: Iterable[Any]) -> Iterator[Any]:
            raise NotImplementedError

    engine = Batching(n_ctx=256)
    write("big.txt", prose(1200))
    result = Cli(engine)("summarize", "big.txt")
    assert result.exit_code == 0, result.stderr
    assert engine.batches == [len(engine.chats()) - 1]  # every part in one batch


def test_a_model_error_in_a_part_fails_that_record_only() -> None:
    class Failing(Scripted):
        def complete(self, request: ChatRequest) -> Any:
            if "w700" in user(request):
                raise RuntimeError("llama_decode returned -3")
            return super().complete(request)

    write("big.txt", prose(1200))
    write("small.txt", "Fine.\n")
    result = Cli(Failing(n_ctx=256))("summarize", "big.txt", "small.txt")
    assert result.exit_code == 3
    rows = parse(result.stdout)
    assert rows[0] == {"id": "big.txt", "error": "model error: llama_decode returned -3"}
    assert rows[1]["summary"] == "THE FINAL SUMMARY."

    result = Cli(Failing(n_ctx=256))("summarize", "big.txt")
    assert result.exit_code == 1 and "llama_decode" in result.stderr


# -- records -------------------------------------------------------------------

def test_several_files_give_jsonl_records_in_order() -> None:
    engine = Scripted(n_ctx=256)
    write("a.txt", "Small file A.\n")
    write("b.txt", prose(1200))
    result = Cli(engine)("summarize", "a.txt", "b.txt")
    assert result.exit_code == 0, result.stderr
    rows = parse(result.stdout)
    assert [r["id"] for r in rows] == ["a.txt", "b.txt"]
    assert rows[0] == {"id": "a.txt", "summary": "THE FINAL SUMMARY.", "chunks": 1}
    assert rows[1]["chunks"] >= 5
    assert "2 ok, 0 failed" in result.stderr


def test_json_flag_makes_one_input_a_record() -> None:
    engine = Scripted()
    write("a.txt", "Small file A.\n")
    result = Cli(engine)("summarize", "--json", "a.txt")
    assert result.exit_code == 0, result.stderr
    assert parse(result.stdout) == [{"id": "a.txt", "summary": "THE FINAL SUMMARY.",
                                     "chunks": 1}]


def test_bad_files_become_error_records_and_exit_3() -> None:
    engine = Scripted()
    write("good.txt", "Fine text.\n")
    write("empty.txt", "")
    write("blank.txt", "  \n\n")
    write("bin.dat", b"\x00\x01\x02binary")
    write("latin1.txt", "caf\u00e9\n".encode("latin-1"))
    result = Cli(engine)("summarize", "good.txt", "empty.txt", "blank.txt", "bin.dat",
                         "latin1.txt")
    assert result.exit_code == 3, result.stderr
    rows = {r["id"]: r for r in parse(result.stdout)}
    assert rows["good.txt"]["summary"] == "THE FINAL SUMMARY."
    assert "empty" in rows["empty.txt"]["error"]
    assert "empty" in rows["blank.txt"]["error"]
    assert "binary" in rows["bin.dat"]["error"]
    assert "invalid UTF-8" in rows["latin1.txt"]["error"]
    assert len(engine.chats()) == 1
    assert "1 ok, 4 failed" in result.stderr


@pytest.mark.parametrize(("data", "message"), [
    ("", "empty"), ("\n \n", "empty"), (b"\x00\x00ELF", "binary"),
    (b"ok \xff\xfe bad\n", "invalid UTF-8"),
])
def test_one_bad_input_is_a_one_line_error(data: str | bytes, message: str) -> None:
    engine = Scripted()
    write("in.txt", data)
    result = Cli(engine)("summarize", "in.txt")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert message in result.stderr and result.stderr.startswith("termlm: error:")
    assert engine.chats() == []


def test_empty_stdin_is_an_error() -> None:
    result = Cli(Scripted())("summarize", input="")
    assert result.exit_code == 1
    assert "empty" in result.stderr


def test_resume_skips_files_already_summarized() -> None:
    write("a.txt", "File A.\n")
    write("b.txt", "File B.\n")
    write("out.jsonl", json.dumps({"id": "a.txt", "summary": "old", "chunks": 1}) + "\n")
    engine = Scripted()
    result = Cli(engine)("summarize", "a.txt", "b.txt", "-o", "out.jsonl", "--resume")
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in parse(Path("out.jsonl").read_text())] == ["a.txt", "b.txt"]
    assert len(engine.chats()) == 1 and "File B." in user(engine.chats()[0])
    assert "1 skipped" in result.stderr


def test_interrupt_exits_130_and_resume_finishes() -> None:
    class Interrupting(Scripted):
        def complete(self, request: ChatRequest) -> Any:
            if "File B." in user(request):
                raise KeyboardInterrupt
            return super().complete(request)

    write("a.txt", "File A.\n")
    write("b.txt", "File B.\n")
    result = Cli(Interrupting())("summarize", "a.txt", "b.txt", "-o", "out.jsonl")
    assert result.exit_code == 130
    assert "resume with:" in result.stderr
    assert [r["id"] for r in parse(Path("out.jsonl").read_text())] == ["a.txt"]
    result = Cli(Scripted())("summarize", "a.txt", "b.txt", "-o", "out.jsonl", "--resume")
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in parse(Path("out.jsonl").read_text())] == ["a.txt", "b.txt"]


# -- --combined ----------------------------------------------------------------

def test_combined_is_one_summary_across_inputs() -> None:
    engine = Scripted(final="Both files, together.")
    write("a.txt", "Alpha facts.\n")
    write("b.txt", "Beta facts.\n")
    write("empty.txt", "")
    result = Cli(engine)("summarize", "--combined", "a.txt", "b.txt", "empty.txt")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Both files, together.\n"
    [request] = engine.chats()
    assert "Alpha facts.\n\nBeta facts." in user(request)


def test_combined_json_record_and_resume() -> None:
    engine = Scripted(n_ctx=256)
    write("a.txt", prose(700, "a"))
    write("b.txt", prose(700, "b"))
    result = Cli(engine)("summarize", "--combined", "a.txt", "b.txt", "-o", "out.jsonl")
    assert result.exit_code == 0, result.stderr
    [row] = parse(Path("out.jsonl").read_text())
    assert row["id"] == "combined" and row["inputs"] == ["a.txt", "b.txt"]
    assert row["summary"] == "THE FINAL SUMMARY." and row["chunks"] >= 5
    again = Scripted()
    result = Cli(again)("summarize", "--combined", "a.txt", "b.txt", "-o", "out.jsonl",
                        "--resume")
    assert result.exit_code == 0 and again.chats() == []
    assert "already summarized" in result.stderr


def test_combined_stops_on_an_unreadable_input() -> None:
    write("a.txt", "Alpha.\n")
    write("bin.dat", b"\x00binary")
    result = Cli(Scripted())("summarize", "--combined", "a.txt", "bin.dat")
    assert result.exit_code == 1
    assert "binary" in result.stderr


# -- the pieces ------------------------------------------------------------------

def test_resume_without_output_is_a_usage_error() -> None:
    write("a.txt", "A.\n")
    result = Cli(Scripted())("summarize", "a.txt", "--resume")
    assert result.exit_code == 2


def test_a_user_template_overrides_the_builtin(tmp_path: Path) -> None:
    prompts = tmp_path / "config" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "summarize.yaml").write_text(
        'description: terse\nuser: "TL;DR {length}: {text}"\n', encoding="utf-8")
    engine = Scripted()
    write("a.txt", "Text.\n")
    result = Cli(engine)("summarize", "a.txt")
    assert result.exit_code == 0, result.stderr
    assert user(engine.chats()[0]).startswith("TL;DR in one paragraph: Text.")

    (prompts / "summarize.yaml").write_text('description: bad\nuser: "{txt}"\n',
                                            encoding="utf-8")
    result = Cli(Scripted())("summarize", "a.txt")
    assert result.exit_code == 1 and "{txt}" in result.stderr


def test_the_runner_does_not_reject_a_long_record() -> None:
    from termlm.prompts import load_template
    from termlm.tasks.summarize import SummarizeTask

    engine = Scripted(n_ctx=256)
    task = SummarizeTask(load_template("summarize"), load_template("summarize_reduce"))
    record = Record("big", prose(1000))
    messages, n_tokens, truncated = prepare(engine, task, record, "error")
    assert n_tokens > 1000 and not truncated
    assert task.run(engine, messages, record)["chunks"] >= 4


# item 8: cut off, copied, repeatable


class CutOff(Scripted):
    """Every reply stops at its token limit."""

    def complete(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        return replace(super().complete(request), finish_reason="length")

    def stream(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        from termlm.engine.types import Completion

        for event in super().stream(request):
            yield replace(event, finish_reason="length") if isinstance(event, Completion) \
                else event


def test_a_summary_cut_at_its_limit_says_so() -> None:
    write("a.txt", "Some text to summarize.\n")
    result = Cli(CutOff(final="It stopped in the mid"))("summarize", "--length", "short",
                                                        "a.txt")
    assert result.exit_code == 0
    assert result.stdout == "It stopped in the mid\n"
    assert "warning: a.txt: the summary reached its limit of 180 tokens" in result.stderr
    write("b.txt", "More text.\n")
    result = Cli(CutOff(final="Cut here"))("summarize", "a.txt", "b.txt")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("cut_off") for r in records] == [True, True]


SOURCE = ("The committee met on Tuesday to review the budget for the coming year and "
          "agreed that the library would get a new roof before the winter. The mayor asked "
          "for a report on the costs of the roof by the end of the month. Several members "
          "wanted more money for the parks, but no vote was taken on that question.")


def test_copies_are_measured_by_long_runs_of_the_texts_words() -> None:
    copy = SOURCE.split(". ")[0] + ". " + SOURCE.split(". ")[1]
    assert copied_share(copy, SOURCE) == 1.0
    own = ("The committee approved a new library roof before winter, asked for its costs "
           "within the month, and left park funding undecided.")
    assert copied_share(own, SOURCE) == 0.0 and is_copy(own, SOURCE) is None
    assert is_copy(copy, SOURCE) == 1.0
    assert is_copy("The committee met on Tuesday to review the budget.", SOURCE) is None  # short


class Copier(Scripted):
    """Copies the text, unless told firmly to use its own words."""

    def _reply_for(self, request: ChatRequest) -> str:
        if "in your own words: do not copy" in request.messages[-1].content:
            return "The committee approved a library roof and asked for its costs soon."
        return SOURCE


def test_a_copied_summary_is_asked_for_again_then_kept_when_it_is_not_a_copy() -> None:
    write("a.txt", SOURCE + "\n")
    write("b.txt", SOURCE + "\n")
    engine = Copier()
    result = Cli(engine)("summarize", "a.txt", "b.txt")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["summary"] for r in records} == {
        "The committee approved a library roof and asked for its costs soon."}
    assert all("copied" not in r for r in records)
    assert len(engine.chats()) == 4  # each asked twice
    assert "copies the text" not in result.stderr


def test_a_summary_that_stays_a_copy_is_flagged() -> None:
    write("a.txt", SOURCE + "\n")
    write("b.txt", SOURCE + "\n")
    result = Cli(Scripted(final=SOURCE))("summarize", "a.txt", "b.txt")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["copied"] for r in records] == [1.0, 1.0]
    assert result.stderr.count("the summary copies the text: 100% of its words") == 2


def test_a_streamed_copy_is_reported_not_repeated() -> None:
    write("a.txt", SOURCE + "\n")
    engine = Scripted(final=SOURCE)
    result = Cli(engine)("summarize", "a.txt")
    assert result.stdout == SOURCE + "\n"  # once: stdout is the data
    assert len(engine.chats()) == 1
    assert "warning: a.txt: the summary copies the text" in result.stderr


def test_the_streamed_and_json_summaries_use_the_same_greedy_request() -> None:
    write("a.txt", "Some text to summarize.\n")
    streamed, as_json = Scripted(), Scripted()
    Cli(streamed)("summarize", "a.txt")
    Cli(as_json)("summarize", "a.txt", "--json")
    assert streamed.chats()[0].sampling == as_json.chats()[0].sampling
    assert streamed.chats()[0].sampling.temperature == 0
