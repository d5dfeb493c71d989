"""The log database: what `ask` and batch runs write, `termlm logs` and its subcommands,
turning it off, keeping credentials out, and what happens when the file is bad."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import termlm.logs as logs
from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest, Delta, StreamEvent
from termlm.errors import ExitCode
from termlm.logs import db
from termlm.logs.scrub import scrub_argv

from .conftest import Cli


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logs._Warned, "done", False)  # the once-per-process warning


def db_file() -> Path:
    return logs.db_path()


def entries() -> list[dict[str, Any]]:
    conn = db.connect(db_file(), create=False)
    assert conn is not None
    try:
        return list(reversed(db.search(conn, db.Query(count=1000))))
    finally:
        conn.close()


def ask_row(**overrides: Any) -> int | None:
    values: dict[str, Any] = {"prompt": "What is the capital of France?", "reply": "Paris.",
                              "model": "m1", "system": "be terse", "prompt_tokens": 12,
                              "completion_tokens": 2, "timings": {"ttft_s": 0.1}}
    values.update(overrides)
    return logs.log_exchange("ask", **values)


def all_bytes() -> bytes:
    return b"".join(p.read_bytes() for p in db_file().parent.glob("logs.db*"))


# -- the API -------------------------------------------------------------------------

def test_log_exchange_stores_every_field_and_returns_the_id() -> None:
    first = ask_row(settings={"sampling": {"temperature": 0.2}}, finish_reason="stop")
    second = ask_row(prompt="again")
    assert (first, second) == (1, 2)
    row = entries()[0]
    assert row["type"] == "ask" and row["model"] == "m1"
    assert (row["prompt"], row["system"], row["reply"]) == (
        "What is the capital of France?", "be terse", "Paris.")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 2)
    assert row["settings"] == {"sampling": {"temperature": 0.2}}
    assert row["timings"] == {"ttft_s": 0.1}
    assert row["finish_reason"] == "stop" and row["interrupted"] is False
    assert row["time"].endswith("+00:00")


def test_chat_turns_carry_their_session() -> None:
    entry_id = logs.log_exchange("chat", prompt="hi", reply="hello", model="m2",
                                 session="work-notes", settings={"template": "chat"})
    assert entry_id == 1
    row = entries()[0]
    assert (row["type"], row["session"], row["system"]) == ("chat", "work-notes", None)


def test_an_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="ask or chat"):
        logs.log_exchange("batch", prompt="x", reply="y", model=None)
    assert not db_file().exists()


def test_an_interrupted_reply_is_marked() -> None:
    ask_row(reply="Par", interrupted=True, completion_tokens=None)
    row = entries()[0]
    assert row["interrupted"] is True and row["finish_reason"] == "interrupted"


def test_log_run_stores_a_batch_row() -> None:
    entry_id = logs.log_run(argv=["/usr/bin/termlm", "classify", "in.txt", "-o", "out.jsonl"],
                            inputs=["in.txt"], output="out.jsonl",
                            counts={"ok": 3, "failed": 1, "skipped": 0}, seconds=1.23456,
                            status="partial", model="m1")
    assert entry_id == 1
    row = entries()[0]
    assert row["type"] == "batch"
    assert row["command"] == "termlm classify in.txt -o out.jsonl"
    assert row["inputs"] == ["in.txt"] and row["output"] == "out.jsonl"
    assert row["counts"] == {"ok": 3, "failed": 1, "skipped": 0}
    assert row["seconds"] == 1.235 and row["status"] == "partial"
    assert row["cwd"] == str(Path.cwd())


def test_no_inputs_means_stdin() -> None:
    logs.log_run(argv=["termlm", "batch"], inputs=[], output=None, counts={}, seconds=0,
                 status="ok")
    assert entries()[0]["inputs"] == ["-"]


@pytest.mark.parametrize(("argv", "shown"), [
    (["--api-key", "sk-1234567890"], ["--api-key", "***"]),
    (["--api-key=sk-1234567890"], ["--api-key=***"]),
    (["--token", "abc", "x.txt"], ["--token", "***", "x.txt"]),
    (["--api-key-env", "MY_KEY"], ["--api-key-env", "***"]),
    (["--base-url", "http://bob:hunter22@host:8080/v1"],
     ["--base-url", "http://bob:***@host:8080/v1"]),
    (["--max-tokens", "7", "-p", "{text}"], ["--max-tokens", "7", "-p", "{text}"]),
])
def test_command_lines_are_scrubbed(argv: list[str], shown: list[str]) -> None:
    assert scrub_argv(argv, []) == shown


# -- credentials ---------------------------------------------------------------------

KEY = "sk-test-0123456789abcdefSECRET"
PASSWORD = "hunter2hunter2"


def test_no_api_key_reaches_the_database_file(cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("MY_SERVER_KEY", KEY)
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"engine: openai\nbase_url: http://admin:{PASSWORD}@gpu-box:8080/v1\n"
                      "api_key_env: MY_SERVER_KEY\n", encoding="utf-8")
    cli.engine.replies.append(f"your key {KEY} is safe")
    result = cli("ask", f"remember my key {KEY} and http://admin:{PASSWORD}@gpu-box/v1")
    assert result.exit_code == 0, result.stderr
    monkeypatch.setattr(sys, "argv", ["termlm", "--api-key-env", "MY_SERVER_KEY",
                                      "--base-url", f"http://admin:{PASSWORD}@gpu-box/v1",
                                      "batch", "-p", "{text}", "--api-key", KEY])
    assert cli("batch", "-p", "{text}", input="a\n").exit_code == 0
    assert len(entries()) == 2
    data = all_bytes()
    assert KEY.encode() not in data
    assert PASSWORD.encode() not in data
    assert b"MY_SERVER_KEY" not in data  # not even the variable's name
    row = entries()[0]
    assert row["settings"]["base_url"] == "http://admin:***@gpu-box:8080/v1"
    assert "api_key_env" not in row["settings"]
    assert "***" in row["prompt"] and "***" in row["reply"]


def test_secret_keys_in_settings_are_dropped() -> None:
    ask_row(settings={"api_key": KEY, "headers": {"Authorization": f"Bearer {KEY}"},
                      "password": PASSWORD, "temperature": 0.5})
    assert entries()[0]["settings"] == {"headers": {}, "temperature": 0.5}
    assert KEY.encode() not in all_bytes()


# -- off and on ----------------------------------------------------------------------

def test_env_off_writes_nothing_not_even_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_LOG", "0")
    assert ask_row() is None
    assert logs.log_run(argv=["termlm"], inputs=[], output=None, counts={}, seconds=0,
                        status="ok") is None
    assert not db_file().parent.exists()


def test_logs_off_and_on(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("logs", "off")
    assert result.exit_code == 0 and "logging is off" in result.stdout
    assert cli("ask", "hello").exit_code == 0
    assert not db_file().exists()
    status = cli("logs", "status")
    assert "logging: off (termlm logs off)" in status.stdout
    assert "not created yet" in status.stdout
    monkeypatch.setenv("TERMLM_LOG", "1")  # the environment wins over the marker
    assert ask_row() == 1
    monkeypatch.delenv("TERMLM_LOG")
    assert ask_row() is None
    result = cli("logs", "on")
    assert result.exit_code == 0 and "logging is on" in result.stdout
    assert ask_row() == 2
    assert cli("logs", "on").exit_code == 0  # twice is fine


def test_off_with_the_env_var_forcing_it_on_says_so(cli: Cli,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_LOG", "1")
    result = cli("logs", "off")
    assert result.exit_code == 0 and "TERMLM_LOG" in result.stderr


def test_an_unknown_env_value_reads_as_off(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_LOG", "never")
    assert ask_row() is None
    assert "not 0 or 1" in cli("logs", "status").stdout


def test_ask_no_log(cli: Cli) -> None:
    result = cli("ask", "--no-log", "hello")
    assert result.exit_code == 0
    assert not db_file().exists()


# -- ask and batch write rows --------------------------------------------------------

def test_ask_logs_the_exchange(cli: Cli) -> None:
    cli.engine.replies.append("Paris is the capital.")
    result = cli("ask", "--temperature", "0", "--system", "be terse", "Capital of France?")
    assert result.exit_code == 0 and result.stderr == ""
    row = entries()[0]
    assert row["type"] == "ask" and row["model"] == "fake"
    assert row["prompt"] == "Capital of France?" and row["system"] == "be terse"
    assert row["reply"] == "Paris is the capital."
    assert row["completion_tokens"] == 4 and row["prompt_tokens"] > 0
    assert row["finish_reason"] == "stop"
    assert row["settings"]["sampling"]["temperature"] == 0
    assert row["settings"]["template"] == "ask"
    assert set(row["timings"]) == {"load_s", "ttft_s", "total_s", "completion_tokens_per_s"}


def test_ask_json_is_logged_too(cli: Cli) -> None:
    cli.engine.replies.append("four")
    result = cli("ask", "--json", "2+2?")
    assert json.loads(result.stdout)["text"] == "four"
    assert entries()[0]["reply"] == "four"


class _CutShort(FakeEngine):
    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        self.requests.append(request)
        yield Delta("Par")
        raise KeyboardInterrupt


def test_an_interrupted_ask_is_logged_as_interrupted() -> None:
    result = Cli(_CutShort())("ask", "Capital of France?")
    assert result.exit_code == ExitCode.INTERRUPTED
    row = entries()[0]
    assert row["reply"] == "Par" and row["interrupted"] is True
    # no usage from the engine: the prompt and the text that came back are counted
    assert row["completion_tokens"] == 1 and row["prompt_tokens"] > 0


def test_a_batch_run_is_one_row(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    Path("in.txt").write_text("a\nb\nc\n", encoding="utf-8")
    argv = ["termlm", "batch", "-p", "{text}", "in.txt", "-o", "out.jsonl"]
    monkeypatch.setattr(sys, "argv", argv)
    result = cli(*argv[1:])
    assert result.exit_code == 0
    (row,) = entries()
    assert row["type"] == "batch" and row["model"] == "fake" and row["status"] == "ok"
    assert row["command"] == "termlm batch -p '{text}' in.txt -o out.jsonl"
    assert row["inputs"] == ["in.txt"] and row["output"] == "out.jsonl"
    assert row["counts"]["ok"] == 3 and row["counts"]["failed"] == 0
    assert row["seconds"] >= 0


class _Poisoned(FakeEngine):
    def complete(self, request: ChatRequest) -> Any:
        if "POISON" in request.messages[-1].content:
            raise RuntimeError("llama_decode returned -3")
        return super().complete(request)


def test_a_batch_with_failures_is_partial_and_the_exit_code_is_kept() -> None:
    result = Cli(_Poisoned())("batch", "-p", "{text}", input="a\nPOISON\nb\n")
    assert result.exit_code == ExitCode.PARTIAL
    row = entries()[0]
    assert row["status"] == "partial" and (row["counts"]["ok"], row["counts"]["failed"]) == (2, 1)


class _Stops(FakeEngine):
    def complete(self, request: ChatRequest) -> Any:
        raise KeyboardInterrupt


def test_an_interrupted_batch_is_logged_as_interrupted() -> None:
    result = Cli(_Stops())("batch", "-p", "{text}", input="a\nb\n")
    assert result.exit_code == ExitCode.INTERRUPTED
    assert entries()[0]["status"] == "interrupted"


def test_dry_runs_and_usage_errors_are_not_logged(cli: Cli) -> None:
    assert cli("batch", "-p", "{text}", "--dry-run", input="a\n").exit_code == 0
    assert cli("batch", "-p", "{text}", input="").exit_code == ExitCode.USAGE
    assert not db_file().exists()


# -- a log that cannot be written never fails the command ------------------------------

def test_an_unwritable_log_is_one_warning_and_the_command_goes_on(
        cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("TERMLM_DATA_DIR", str(blocker / "data"))  # a file is in the way
    cli.engine.replies.extend(["one", "two"])
    first = cli("ask", "hello")
    assert (first.exit_code, first.stdout) == (0, "one\n")
    assert first.stderr.count("termlm: warning: not logged") == 1
    assert len(first.stderr.strip().splitlines()) == 1
    second = cli("ask", "again")
    assert second.exit_code == 0 and second.stderr == ""  # once per process
    monkeypatch.setattr(logs._Warned, "done", False)
    batch = cli("batch", "-p", "{text}", input="a\n")
    assert batch.exit_code == 0 and "not logged" in batch.stderr


def test_a_corrupt_database(cli: Cli) -> None:
    db_file().parent.mkdir(parents=True)
    db_file().write_bytes(b"this is not an sqlite database at all" * 100)
    cli.engine.replies.append("fine")
    result = cli("ask", "hello")
    assert result.exit_code == 0 and result.stdout == "fine\n"
    assert "not logged" in result.stderr and "corrupt" in result.stderr
    for args in (["logs"], ["logs", "show", "1"], ["logs", "status"], ["logs", "--json"]):
        listed = cli(*args)
        assert listed.exit_code == ExitCode.ERROR
        assert listed.stdout == ""
        lines = listed.stderr.strip().splitlines()
        assert lines[0].startswith("termlm: error:") and "corrupt" in lines[0]
        assert "mv " in lines[1] and "Traceback" not in listed.stderr


def test_a_database_from_a_newer_termlm(cli: Cli) -> None:
    db_file().parent.mkdir(parents=True)
    conn = sqlite3.connect(db_file())
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert ask_row() is None
    result = cli("logs")
    assert result.exit_code == ExitCode.ERROR and "newer termlm" in result.stderr


def test_a_locked_database_is_a_warning_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ask_row() == 1
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.05)
    holder = sqlite3.connect(db_file(), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert ask_row() is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ask_row() == 2


def test_several_processes_log_at_once(tmp_path: Path) -> None:
    code = ("import termlm.logs as l\n"
            "for i in range(15):\n"
            "    assert l.log_exchange('ask', prompt=f'p{i}', reply='r', model='m') is not None\n")
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    rows = entries()
    assert len(rows) == 45 and len({r["id"] for r in rows}) == 45


# -- search --------------------------------------------------------------------------

def _three() -> None:
    ask_row(prompt="What is the capital of France?", reply="Paris.")
    logs.log_exchange("chat", prompt="Tell me about foo-bar: the tool", reply="It is a tool.",
                      model="qwen2.5-coder", session="s")
    logs.log_run(argv=["termlm", "classify", "tickets.csv"], inputs=["tickets.csv"],
                 output=None, counts={"ok": 1}, seconds=1, status="ok")


def _ids(cli: Cli, *args: str) -> list[int]:
    result = cli("logs", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return [e["id"] for e in json.loads(result.stdout)]


def test_query_type_model_and_count(cli: Cli) -> None:
    _three()
    assert _ids(cli) == [3, 2, 1]
    assert _ids(cli, "-q", "capital") == [1]
    assert _ids(cli, "-q", "capital paris") == [1]  # every word, anywhere in the entry
    assert _ids(cli, "-q", "capital tool") == []
    assert _ids(cli, "-q", "capit*") == [1]  # a prefix
    assert _ids(cli, "-q", "tickets") == [3]  # a batch run's command line
    assert _ids(cli, "--type", "chat") == [2]
    assert _ids(cli, "--model", "QWEN") == [2]
    assert _ids(cli, "-n", "2") == [3, 2]


@pytest.mark.parametrize("text", ['"', '"unbalanced', "foo-bar", "-bar", "foo:bar", "a:", "*",
                                  "-*", "NEAR(foo bar)", "foo AND", "OR", "NOT x", "(", "^foo",
                                  "col:val", "'", "%", "_"])
def test_fts_syntax_in_a_query_is_text(cli: Cli, text: str) -> None:
    _three()
    result = cli("logs", "-q", text)
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_query_with_syntax_still_finds_the_text(cli: Cli) -> None:
    _three()
    assert _ids(cli, "-q", "foo-bar:") == [2]
    assert _ids(cli, "-q", '"foo-bar"') == [2]


def test_without_fts5_search_falls_back_to_like(cli: Cli,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = db.fts5_available
    monkeypatch.setattr(db, "fts5_available", lambda: False)
    _three()
    ask_row(prompt="100% sure_thing")
    conn = sqlite3.connect(db_file())
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'entries_fts'"
                        ).fetchone() is None
    conn.close()
    result = cli("logs", "-q", "capital")
    assert result.exit_code == 0 and "FTS5" in result.stderr
    assert result.stdout.startswith("1\t")
    assert _ids(cli, "-q", "100%") == [4]
    assert _ids(cli, "-q", "%") == [4]  # a literal percent, not a wildcard
    assert _ids(cli, "-q", "e_t") == [4]
    monkeypatch.setattr(db, "fts5_available", real)  # back: the index is built from the rows
    assert _ids(cli, "-q", "capital") == [1]


# -- listing and showing -------------------------------------------------------------

def test_an_empty_log(cli: Cli) -> None:
    result = cli("logs")
    assert result.exit_code == 0 and result.stdout == ""
    assert "no log entries yet" in result.stderr
    assert json.loads(cli("logs", "--json").stdout) == []
    assert not db_file().exists()  # reading creates nothing


def test_the_list_on_a_pipe_is_tsv(cli: Cli) -> None:
    _three()
    ask_row(prompt="line one\nline two " + "x" * 100)
    lines = cli("logs").stdout.splitlines()
    assert len(lines) == 4
    cells = [line.split("\t") for line in lines]
    assert all(len(c) == 6 for c in cells)
    assert cells[0][0] == "4" and cells[0][2] == "ask" and cells[0][4] == "12+2"
    assert cells[0][5] == "line one…"
    assert cells[1][5].startswith("[ok] termlm classify tickets.csv")
    assert cells[3][5] == "What is the capital of France?"


def test_the_list_on_a_terminal_is_a_table(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    ask_row(prompt="[bold]not markup[/bold]")
    import termlm.output

    monkeypatch.setattr(termlm.output, "is_tty", lambda _stream: True)
    result = cli("logs")
    assert result.exit_code == 0
    assert "prompt" in result.stdout.splitlines()[0]
    assert "[bold]not markup[/bold]" in result.stdout


def test_show_an_entry(cli: Cli) -> None:
    ask_row(settings={"template": "ask"}, finish_reason="stop")
    result = cli("logs", "show", "1")
    assert result.exit_code == 0
    out = result.stdout
    assert "model: m1" in out and "prompt tokens: 12" in out and "finish reason: stop" in out
    assert '"template": "ask"' in out and '"ttft_s": 0.1' in out
    assert "--- system\nbe terse\n" in out
    assert "--- prompt\nWhat is the capital of France?\n" in out
    assert out.endswith("--- reply\nParis.\n")
    data = json.loads(cli("logs", "show", "1", "--json").stdout)
    assert data["id"] == 1 and data["reply"] == "Paris." and data["settings"]["template"] == "ask"


def test_show_a_batch_run(cli: Cli) -> None:
    _three()
    out = cli("logs", "show", "3").stdout
    assert "command: termlm classify tickets.csv" in out and "status: ok" in out
    assert "--- prompt" not in out


@pytest.mark.parametrize(("args", "code", "text"), [
    (["logs", "show", "99"], ExitCode.ERROR, "no log entry 99"),
    (["logs", "show", "0"], ExitCode.ERROR, "no log entry 0"),
    (["logs", "show", "abc"], ExitCode.USAGE, ""),
    (["logs", "-n", "0"], ExitCode.USAGE, ""),
    (["logs", "--type", "bogus"], ExitCode.USAGE, ""),
])
def test_bad_arguments(cli: Cli, args: list[str], code: int, text: str) -> None:
    ask_row()
    result = cli(*args)
    assert result.exit_code == code
    assert text in result.stderr and result.stdout == ""


def test_show_on_an_empty_log(cli: Cli) -> None:
    result = cli("logs", "show", "1")
    assert result.exit_code == ExitCode.ERROR
    assert "no log entry 1" in result.stderr and "empty" in result.stderr


def test_status_and_path(cli: Cli) -> None:
    _three()
    out = cli("logs", "status").stdout
    assert out.startswith("logging: on\n")
    assert f"database: {db_file()}\n" in out
    assert "entries: 3 (1 ask, 1 batch, 1 chat)" in out and "KiB" in out
    data = json.loads(cli("logs", "status", "--json").stdout)
    assert data["logging"] == "on" and data["entries"] == 3 and data["size_bytes"] > 0
    assert data["path"] == str(db_file())
    assert cli("logs", "path").stdout == f"{db_file()}\n"


def test_the_data_dir_follows_its_variable(tmp_path: Path) -> None:
    assert db_file() == tmp_path / "data" / "logs.db"


def test_help_stays_light() -> None:
    code = ("import sys, termlm.cli, termlm.logs\n"
            "bad = [m for m in ('sqlite3', 'rich') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_single_summary_and_a_single_question_are_logged_as_runs(cli: Cli,
                                                                    tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("The meeting moved to Tuesday.\n", encoding="utf-8")
    assert cli("summarize", str(notes)).exit_code == 0
    entries = json.loads(cli("logs", "--json").stdout)
    runs = [e for e in entries if e["type"] == "batch"]
    assert len(runs) == 1 and runs[0]["inputs"] == [str(notes)]
    assert runs[0]["status"] == "ok" and runs[0]["counts"] == {"ok": 1}


def test_a_translate_run_is_logged_with_its_counts(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "hello.txt"
    source.write_text("Hello.\n", encoding="utf-8")
    cli("translate", "--to", "French", str(source))
    runs = [e for e in json.loads(cli("logs", "--json").stdout) if e["type"] == "batch"]
    assert len(runs) == 1 and runs[0]["inputs"] == [str(source)]
    assert runs[0]["counts"]["segments"] == 1 and runs[0]["model"] == "fake"
