"""Hostile tests of termlm eval, termlm logs and chat sessions, with fake engines only.

Each of these found a bug (a hostile review): ids and counts past SQLite's integers,
a key named by --api-key-env on the command line, an unnamed signal, U+2028 in JSON,
--report over the data, clashing implicit ids, saved settings that flags could not
override, and two chats on one session.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import termlm.logs as logs
from termlm import sessions
from termlm.cli import app
from termlm.cli.common import AppState
from termlm.conversation import Conversation
from termlm.engine.fake import FakeEngine
from termlm.engine.types import SamplingParams
from termlm.evaluate import runs
from termlm.repl import ChatSession


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond conftest's isolated dirs: no key variable, the cwd, the log's warning."""
    monkeypatch.delenv("TERMLM_API_KEY_ENV", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logs._Warned, "done", False)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None


class Cli:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def __call__(self, *args: str, input: str | None = None) -> Result:
        result = CliRunner().invoke(app, list(args), input=input,
                                    obj=AppState(engine_factory=lambda s: self.engine))
        exc = result.exception
        if exc is not None and isinstance(exc, SystemExit):
            exc = None
        return Result(result.exit_code, result.stdout, result.stderr, exc)


@pytest.fixture
def cli() -> Cli:
    return Cli(FakeEngine())


def _one_entry() -> None:
    assert logs.log_exchange("ask", prompt="What is the capital of France?",
                             reply="Paris.", model="m1") == 1


# -- termlm logs ---------------------------------------------------------------------

def test_logs_show_with_an_id_too_large_for_sqlite_is_not_found(cli: Cli) -> None:
    """`termlm logs show 99999999999999999999` crashes with an OverflowError traceback."""
    _one_entry()
    result = cli("logs", "show", "99999999999999999999")
    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 1
    assert "no log entry" in result.stderr


def test_logs_count_too_large_for_sqlite_is_not_a_crash(cli: Cli) -> None:
    """`termlm logs -n 99999999999999999999` crashes with an OverflowError traceback."""
    _one_entry()
    result = cli("logs", "-n", "99999999999999999999")
    assert result.exception is None, repr(result.exception)
    assert result.exit_code in (0, 2)


KEY = "sk-test-0123456789abcdefSECRET"


def test_a_batch_run_masks_the_key_named_by_the_api_key_env_flag(
        cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --api-key-env on the command line (not in the config file), the key's
    value in a batch run's command line reaches logs.db in clear. The README: the key
    "is replaced by *** wherever it appears"."""
    monkeypatch.setenv("MY_SERVER_KEY", KEY)
    argv = ["--api-key-env", "MY_SERVER_KEY", "batch", "-p", f"key {KEY} {{text}}"]
    monkeypatch.setattr(sys, "argv", ["termlm", *argv])
    result = cli(*argv, input="a\n")
    assert result.exit_code == 0, result.stderr
    data = b"".join(p.read_bytes() for p in logs.db_path().parent.glob("logs.db*"))
    assert data  # the run was logged
    assert KEY.encode() not in data


# -- termlm eval ---------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    args = sys.argv[1:]
    model = args[args.index("-m") + 1]
    if model == "rt-signal":
        os.kill(os.getpid(), signal.SIGRTMIN + 6)  # no name in signal.Signals
    data, out = args[1], args[args.index("-o") + 1]
    rows = [json.loads(line) for line in open(data, encoding="utf-8")]
    with open(out, "w", encoding="utf-8") as fh:  # as termlm's writers: ensure_ascii=False
        for row in rows:
            fh.write(json.dumps({"id": row["id"], "text": row["text"], "label": "positive"},
                                ensure_ascii=False) + "\\n")
    with open(os.environ["TERMLM_RUN_STATS"], "w") as fh:
        json.dump({"records": len(rows), "run_s": 1.0, "tokens_evaluated": 10,
                   "load_s": 0.1}, fh)
    """)


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    monkeypatch.setattr(runs, "CHILD", [sys.executable, str(child)])


def test_a_run_killed_by_an_unnamed_signal_is_a_failed_row(cli: Cli, tmp_path: Path,
                                                           fake_child: None) -> None:
    """A child killed by a real-time signal makes eval crash (ValueError: N is not a
    valid Signals), and the runs after it never happen."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "text": "good", "label": "positive"}\n')
    result = cli("eval", "classify", str(data), "-l", "positive,negative",
                 "-m", "rt-signal", "-m", "fine", "--json")
    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 3
    rows = {r["model"]: r for r in json.loads(result.stdout)["results"]}
    assert not rows["rt-signal"]["ok"] and rows["fine"]["ok"]


@pytest.mark.parametrize("line", [
    json.dumps({"id": "1", "text": "one\u2028two", "label": "positive"}, ensure_ascii=False),
    '{"id": "1", "text": "one\\u2028two", "label": "positive"}',  # escaped in the data
], ids=["raw-in-data", "raw-in-output"])
def test_a_line_separator_inside_json_is_text_not_a_line_break(
        cli: Cli, tmp_path: Path, fake_child: None, line: str) -> None:
    """U+2028 inside a JSON string is text: raw in the data, eval read the record as two
    broken lines; escaped in the data, the task's output (ensure_ascii=False) holds it raw
    and eval dropped that row, scoring a right answer as "no output"."""
    data = tmp_path / "d.jsonl"
    data.write_text(line + "\n", encoding="utf-8")
    result = cli("eval", "classify", str(data), "-l", "positive,negative", "-m", "x",
                 "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["quality"]["accuracy"] == 1.0


def test_the_report_is_never_written_over_the_data(cli: Cli, tmp_path: Path,
                                                   fake_child: None) -> None:
    """`--report` naming the data file replaces the labelled data with the report
    (the record commands refuse an output that is an input)."""
    data = tmp_path / "d.jsonl"
    text = '{"id": "1", "text": "good", "label": "positive"}\n'
    data.write_text(text)
    cli("eval", "classify", str(data), "-l", "positive,negative", "-m", "x",
        "--report", str(data))
    assert data.read_text() == text


def test_an_implicit_id_that_clashes_says_where_the_duplicate_comes_from(
        cli: Cli, tmp_path: Path, fake_child: None) -> None:
    """A record without an id gets its line number as its id: when that clashes with a
    record's own id, the error says so instead of naming a duplicate nobody wrote."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "good", "label": "positive"}\n'
                    '{"id": "1", "text": "fine", "label": "positive"}\n')
    result = cli("eval", "classify", str(data), "-l", "positive,negative", "-m", "x",
                 "--json")
    assert result.exit_code == 1, result.stderr
    assert "the record on line 1 has no id and is numbered by its line" in result.stderr
    assert "give every record an id, or none" in result.stderr


# -- chat sessions -------------------------------------------------------------------

def _session_file(name: str, settings: dict[str, Any]) -> Path:
    path = sessions.chats_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "model": None, "system": None,
                                "messages": [], "settings": settings}), encoding="utf-8")
    return path


def test_flags_given_now_win_over_a_bad_saved_setting(cli: Cli) -> None:
    """A session whose file holds temperature 500 cannot be resumed at all, not even
    with --temperature 0.5 given now (README: "flags given now win")."""
    _session_file("hot", {"temperature": 500})
    result = cli("chat", "--session", "hot", "--temperature", "0.5", input="hello\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "echo: hello\n"


def test_two_chats_on_one_session_keep_both_turns() -> None:
    """Two chats open on the same session: the second to save finds the file changed
    and keeps its own turns under a new name, instead of overwriting the first's."""
    engine = FakeEngine()
    seed = Conversation("sys")
    seed.name = "shared"
    seed.add("first", "one")
    sessions.save(seed)

    def open_chat() -> ChatSession:
        convo = sessions.load("shared")
        assert convo is not None
        return ChatSession(engine, convo, SamplingParams(), out=io.StringIO(),
                           err=notices)

    notices = io.StringIO()
    a, b = open_chat(), open_chat()
    a.submit("from a")
    b.submit("from b")  # finds "shared" changed by a: saved as "shared-2", nothing lost
    saved, forked = sessions.load("shared"), sessions.load("shared-2")
    assert saved is not None and forked is not None
    assert [e.user for e in saved.exchanges] == ["first", "from a"]
    assert [e.user for e in forked.exchanges] == ["first", "from b"]
    assert "session 'shared' was changed by another chat since this one read it: this " \
        "chat is saved as 'shared-2'" in notices.getvalue()
    b.submit("again from b")  # b goes on in its own session, without forking again
    forked = sessions.load("shared-2")
    assert forked is not None and [e.user for e in forked.exchanges][-1] == "again from b"
    assert sessions.load("shared-3") is None
