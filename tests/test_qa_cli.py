"""`termlm qa` end to end on the FakeEngine: indexing, answers, citations, batch, bad input.

These run with no embedding model to be had (so BM25 ranks, after a notice);
hybrid and vector retrieval on the FakeEmbedder are in test_qa_hybrid.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest, Completion
from termlm.errors import ModelMissing

from .conftest import Result

FACT = "The Zorblax reactor was commissioned in 1987 in Tromsø."
Q = "When was the Zorblax reactor commissioned?"
SWALLOW = "What is the airspeed of an unladen swallow?"


NO_EMBEDDER = "no embedding model (model 'minilm' is not downloaded and offline mode is on)"


def unavailable(settings: Any, pooling: str | None) -> Any:
    raise ModelMissing("model 'minilm' is not downloaded and offline mode is on")


class Cli:
    """The real Typer app in-process, with a FakeEngine and an embedder factory behind it
    (by default one with no model to give, as offline before minilm is pulled)."""

    def __init__(self, engine: FakeEngine,
                 embedder: Callable[[Any, str | None], Any] = unavailable) -> None:
        self.engine = engine
        self.embedder = embedder
        self.settings_seen: list[object] = []
        self.embedders_opened = 0

    def __call__(self, *args: str, input: str | bytes | None = None) -> Result:
        def engines(settings: Any) -> FakeEngine:
            self.settings_seen.append(settings)
            return self.engine

        def embedders(settings: Any, pooling: str | None) -> Any:
            self.embedders_opened += 1
            return self.embedder(settings, pooling)

        result = CliRunner().invoke(app, list(args), input=input, obj=AppState(
            engine_factory=engines, embedder_factory=embedders))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli(fake_engine: FakeEngine) -> Cli:
    return Cli(fake_engine)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))


def make_docs() -> Path:
    root = Path("docs")
    (root / "sub").mkdir(parents=True)
    (root / "garden.md").write_text("\n".join(
        f"Hedge {i} needs trimming in spring with sharp shears." for i in range(30)) + "\n")
    (root / "sub" / "reactor.md").write_text(
        "# Plant history\n\nThe plant sits by the fjord.\n\n" + FACT + "\n\nIt still runs.\n")
    return root


def chats(engine: FakeEngine) -> list[ChatRequest]:
    return [r for r in engine.requests if isinstance(r, ChatRequest)]


def prompt_of(request: ChatRequest) -> str:
    return "\n".join(m.content for m in request.messages)


def assert_citations_valid(citations: list[dict[str, Any]], prompt: str) -> None:
    """Every citation names real lines of a real file, given to the model as a passage."""
    assert citations
    for c in citations:
        lines = Path(c["path"]).read_text().split("\n")
        assert 1 <= c["start"] <= c["end"] <= len(lines)
        cited = " ".join(" ".join(lines[c["start"] - 1 : c["end"]]).split())
        assert c["snippet"] == cited or (
            c["snippet"].endswith("\u2026") and cited.startswith(c["snippet"][:-1]))
        labels = re.findall(r"^\[(.+):(\d+)-(\d+)\]$", prompt, flags=re.M)
        assert any(path == c["path"] and int(a) <= c["start"] <= c["end"] <= int(b)
                   for path, a, b in labels), (c, labels)


def test_answer_with_citation_on_a_pipe(cli: Cli, fake_engine: FakeEngine) -> None:
    make_docs()
    fake_engine.replies.append("It was commissioned in 1987 [docs/sub/reactor.md:3-7].")
    result = cli("qa", "--docs", "docs", Q)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ("It was commissioned in 1987 [docs/sub/reactor.md:3-7].\n\n"
                             "Sources:\n- docs/sub/reactor.md:3-7\n")
    (request,) = chats(fake_engine)
    prompt = prompt_of(request)
    assert "[docs/sub/reactor.md:1-7]\n# Plant history" in prompt  # the whole small file
    assert FACT in prompt and Q in prompt
    assert "index: 2 files" in result.stderr  # talk goes to stderr
    assert NO_EMBEDDER + ": ranking passages by BM25 only" in result.stderr


def test_json_citations_point_at_given_passages_and_real_lines(cli: Cli,
                                                              fake_engine: FakeEngine) -> None:
    make_docs()
    fake_engine.replies.append(
        "1987 [docs/sub/reactor.md:5-5], by the fjord [docs/sub/reactor.md:3-7]; "
        "invented [docs/garden.md:1-3] [docs/sub/reactor.md:1-40] [nowhere.md:1-2].")
    result = cli("qa", "--docs", "docs", "--json", Q)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"question", "answer", "found", "citations", "retrieval", "passages"}
    assert out["retrieval"] == "bm25"
    assert [(p["path"], p["bm25_rank"], p["cosine"]) for p in out["passages"]] == [
        ("docs/sub/reactor.md", 1, None)]
    assert out["found"] is True and out["question"] == Q
    assert [(c["path"], c["start"], c["end"]) for c in out["citations"]] == [
        ("docs/sub/reactor.md", 5, 5), ("docs/sub/reactor.md", 3, 7)]
    assert out["citations"][0]["snippet"] == FACT
    assert "garden" not in out["answer"] and "nowhere" not in out["answer"]
    assert "1-40" not in out["answer"]
    assert_citations_valid(out["citations"], prompt_of(chats(fake_engine)[0]))


def test_uncited_answer_lists_the_passages_it_was_given(cli: Cli,
                                                        fake_engine: FakeEngine) -> None:
    make_docs()
    fake_engine.replies.append("In 1987.")
    out = json.loads(cli("qa", "--docs", "docs", "--json", Q).stdout)
    assert out["answer"] == "In 1987."
    assert_citations_valid(out["citations"], prompt_of(chats(fake_engine)[0]))


def test_unanswerable_question_does_not_call_the_model(cli: Cli,
                                                       fake_engine: FakeEngine) -> None:
    make_docs()
    result = cli("qa", "--docs", "docs", "--json", SWALLOW)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"question": SWALLOW, "found": False, "citations": [],
                                         "answer": "The documents don't contain the answer.",
                                         "retrieval": "bm25", "passages": []}
    assert fake_engine.requests == [] and cli.settings_seen == []  # no model even loaded
    plain = cli("qa", "--docs", "docs", SWALLOW)
    assert plain.stdout == "The documents don't contain the answer.\n"


def test_model_saying_it_is_not_there_is_found_false(cli: Cli,
                                                     fake_engine: FakeEngine) -> None:
    make_docs()
    fake_engine.replies.append("The documents don't contain the answer.")
    out = json.loads(cli("qa", "--docs", "docs", "--json", "Who trims the reactor hedge?").stdout)
    assert (out["found"], out["citations"]) == (False, [])


def test_terminal_output_renders_answer_and_sources(cli: Cli, fake_engine: FakeEngine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import termlm.output

    make_docs()
    monkeypatch.setattr(termlm.output, "is_tty", lambda stream: True)
    monkeypatch.setenv("NO_COLOR", "1")
    fake_engine.replies.append("**1987** [docs/sub/reactor.md:3-7]")
    result = cli("qa", "--docs", "docs", Q)
    assert result.exit_code == 0, result.stderr
    assert "**" not in result.stdout and "1987" in result.stdout  # rendered Markdown
    assert "Sources:" in result.stdout and "docs/sub/reactor.md:3-7" in result.stdout


def test_docs_before_the_question_and_repeated_docs(cli: Cli, fake_engine: FakeEngine) -> None:
    make_docs()
    Path("extra.txt").write_text("Tromsø has a small harbour.\n")
    result = cli("qa", "--docs", "docs/garden.md", "docs/sub/reactor.md", "-d", "extra.txt", Q)
    assert result.exit_code == 0, result.stderr
    assert "index: 3 files" in result.stderr


def test_second_run_reuses_the_index_and_reindex_rebuilds(cli: Cli,
                                                          fake_engine: FakeEngine) -> None:
    make_docs()
    first = cli("qa", "--docs", "docs", SWALLOW)
    assert "2 indexed" in first.stderr
    second = cli("qa", "--docs", "docs", SWALLOW)
    assert second.exit_code == 0 and "index:" not in second.stderr  # nothing was read
    rebuilt = cli("qa", "--docs", "docs", "--reindex", SWALLOW)
    assert "2 indexed" in rebuilt.stderr
    assert (Path("cache") / "qa" / "index.sqlite").is_file()


def test_deleted_file_is_dropped_and_not_cited(cli: Cli, fake_engine: FakeEngine) -> None:
    root = make_docs()
    assert cli("qa", "--docs", "docs", SWALLOW).exit_code == 0
    (root / "sub" / "reactor.md").unlink()
    fake_engine.replies.append("1987 [docs/sub/reactor.md:5-5]")
    result = cli("qa", "--docs", "docs", "--json", Q)
    assert result.exit_code == 0, result.stderr
    assert "1 removed" in result.stderr
    out = json.loads(result.stdout)
    assert out["found"] is False and out["citations"] == []
    assert fake_engine.requests == []


@pytest.mark.parametrize("question", ['"unbalanced quote', "reactor* NEAR(a b)", "(((",
                                      "zorblax AND NOT OR", "text: ^commissioned", "*"])
def test_fts_syntax_in_questions_is_just_text(cli: Cli, question: str) -> None:
    make_docs()
    result = cli("qa", "--docs", "docs", "--json", question)
    assert result.exit_code == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["found"], bool)


def test_braces_in_documents_and_questions_stay_literal(cli: Cli,
                                                       fake_engine: FakeEngine) -> None:
    Path("t.md").write_text("Zorblax templates use {question} and {text.__class__} and {{.\n")
    result = cli("qa", "--docs", "t.md", "--json", "Zorblax templates {context}{0}?")
    assert result.exit_code == 0, result.stderr
    prompt = prompt_of(chats(fake_engine)[0])
    assert "{question} and {text.__class__} and {{." in prompt
    assert "Question: Zorblax templates {context}{0}?" in prompt


def test_passages_fit_the_context(cli: Cli) -> None:
    root = make_docs()
    for i in range(6):
        (root / f"z{i}.md").write_text(f"Zorblax note {i}: " + "reactor detail " * 50 + "\n")
    engine = FakeEngine(["ok"], n_ctx=700)
    small = Cli(engine)
    result = small("qa", "--docs", "docs", "--json", "--top-k", "6", Q)
    assert result.exit_code == 0, result.stderr
    request = chats(engine)[0]
    assert engine.count_prompt_tokens(request.messages) <= 700 - 256
    cited = json.loads(result.stdout)["citations"]
    assert 1 <= len(cited) < 6
    assert_citations_valid(cited, prompt_of(request))


def test_context_too_small_for_any_passage(cli: Cli) -> None:
    make_docs()
    Path("docs/big.md").write_text("Zorblax reactor " + "word " * 200 + "\n")
    result = Cli(FakeEngine(n_ctx=300))("qa", "--docs", "docs/big.md", "--chunk-words", "150", Q)
    assert result.exit_code == 1
    assert "not even one passage fits" in result.stderr


# -- bad input ----------------------------------------------------------------------------

def test_bad_files_are_skipped_with_warnings(cli: Cli, fake_engine: FakeEngine) -> None:
    root = make_docs()
    (root / "empty.md").write_text("")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02zorblax")
    (root / "latin.txt").write_bytes(b"Zorblax caf\xe9\n")
    result = cli("qa", "--docs", "docs", "--json", Q)
    assert result.exit_code == 0, result.stderr
    # found by a directory walk: counted, not listed (images in a docs folder are normal)
    assert "3 skipped (1 binary, 1 empty, 1 not UTF-8)" in result.stderr
    assert "skipping" not in result.stderr
    assert json.loads(result.stdout)["found"] is True
    # named on the command line: each one is named, on every run
    for _ in range(2):
        named = cli("qa", "--docs", "docs/sub/reactor.md", "docs/empty.md", "docs/blob.bin",
                    "docs/latin.txt", "--json", Q)
        assert named.exit_code == 0, named.stderr
        assert "skipping docs/empty.md: empty" in named.stderr
        assert "skipping docs/blob.bin: binary data, not text" in named.stderr
        assert "skipping docs/latin.txt: not valid UTF-8 (byte 0xe9 on line 1)" in named.stderr


def test_only_unreadable_docs_is_an_error(cli: Cli) -> None:
    Path("empty.md").write_text("\n")
    Path("blob.bin").write_bytes(b"\x00\x00")
    result = cli("qa", "--docs", "empty.md", "blob.bin", Q)
    assert result.exit_code == 1
    assert "no text to search in --docs (2 files skipped)" in result.stderr


def test_missing_docs_path(cli: Cli) -> None:
    make_docs()
    result = cli("qa", "--docs", "nope/", Q)
    assert result.exit_code == 1
    assert "no such file: nope/" in result.stderr and "hint:" in result.stderr
    assert cli("qa", SWALLOW, "--docs", "docs").exit_code == 0  # one doc after: fine
    swapped = cli("qa", Q, "--docs", "docs", "docs/garden.md")  # the question is not last
    assert swapped.exit_code == 1
    assert Q in swapped.stderr and "the question goes last" in swapped.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--docs", "docs", "   "], "the question is empty"),
    (["--docs", "docs"], "nothing to ask"),
    ([Q], "give --docs"),
    (["--docs", "-", Q], "not stdin"),
    (["--docs", "docs", "-o", "out.jsonl", Q], "go with --questions"),
])
def test_usage_errors(cli: Cli, args: list[str], message: str) -> None:
    make_docs()
    result = cli("qa", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_help_has_an_example(cli: Cli) -> None:
    result = cli("qa", "--help")
    assert result.exit_code == 0 and "Example: termlm qa --docs" in result.stdout


# -- many questions: the record pipeline --------------------------------------------------

def test_questions_file_gives_one_json_line_each(cli: Cli, fake_engine: FakeEngine) -> None:
    make_docs()
    Path("qs.txt").write_text(f"{Q}\n\n{SWALLOW}\nHow are hedges trimmed?\n")
    fake_engine.replies.extend(["1987 [docs/sub/reactor.md:3-7]", "With shears."])
    result = cli("qa", "--docs", "docs", "--questions", "qs.txt")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["1", "3", "4"]
    for row in rows:
        assert list(row) == ["id", "question", "answer", "found", "citations"]
    assert [r["found"] for r in rows] == [True, False, True]
    assert rows[1]["answer"] == "The documents don't contain the answer."
    assert rows[1]["citations"] == []
    assert rows[0]["citations"] == [{"path": "docs/sub/reactor.md", "start": 3, "end": 7,
                                     "snippet": f"The plant sits by the fjord. {FACT} "
                                                "It still runs."}]
    prompts = [prompt_of(r) for r in chats(fake_engine)]
    assert len(prompts) == 2  # the unanswerable one never reached the model
    assert_citations_valid(rows[0]["citations"], prompts[0])
    assert_citations_valid(rows[2]["citations"], prompts[1])


def test_jsonl_questions_with_ids_and_error_records(cli: Cli, fake_engine: FakeEngine) -> None:
    make_docs()
    Path("qs.jsonl").write_text(
        json.dumps({"id": "a", "question": Q}) + "\n"
        + json.dumps({"id": "b", "question": "  "}) + "\n"
        + json.dumps({"id": "c", "text": "no question field"}) + "\n"
        + "{broken\n")
    result = cli("qa", "--docs", "docs", "--questions", "qs.jsonl")
    assert result.exit_code == 3
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "4"]
    assert rows[0]["found"] is True
    assert rows[1] == {"id": "b", "error": "empty question"}
    assert 'no field "question"' in rows[2]["error"]
    assert "invalid JSON" in rows[3]["error"]
    assert "1 ok, 3 failed" in result.stderr


def test_questions_from_stdin(cli: Cli) -> None:
    make_docs()
    result = cli("qa", "--docs", "docs", "--questions", "-", input=f"{SWALLOW}\n")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["found"] is False


def test_resume_answers_only_what_is_missing(cli: Cli, fake_engine: FakeEngine) -> None:
    make_docs()
    Path("qs.txt").write_text(f"{Q}\nHow are hedges trimmed?\nWhere is the plant?\n")
    first = cli("qa", "--docs", "docs", "--questions", "qs.txt", "-o", "out.jsonl",
                "--limit", "1")
    assert first.exit_code == 0, first.stderr
    assert len(chats(fake_engine)) == 1
    again = cli("qa", "--docs", "docs", "--questions", "qs.txt", "-o", "out.jsonl", "--resume")
    assert again.exit_code == 0, again.stderr
    assert "1 skipped" in again.stderr
    rows = [json.loads(line) for line in Path("out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert len(chats(fake_engine)) == 3


def test_interrupted_batch_exits_130_with_resume_hint(cli: Cli) -> None:
    make_docs()
    Path("qs.txt").write_text(f"{Q}\nHow are hedges trimmed?\n")

    class Interrupting(FakeEngine):
        def complete(self, request: ChatRequest) -> Completion:
            if len(self.requests) >= 1:
                raise KeyboardInterrupt
            return super().complete(request)

    engine = Interrupting()
    result = Cli(engine)("qa", "--docs", "docs", "--questions", "qs.txt", "-o", "out.jsonl")
    assert result.exit_code == 130
    assert "resume with:" in result.stderr and "--resume" in result.stderr
    assert len(Path("out.jsonl").read_text().splitlines()) == 1
