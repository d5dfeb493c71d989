"""termlm chat through the real Typer app, with piped stdin and the FakeEngine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from termlm import sessions
from termlm.config import Settings
from termlm.engine.types import ChatRequest, Message

if TYPE_CHECKING:  # the fixture's type only (works whether or not tests/ is a package)
    from .conftest import Cli


def requests(cli: Cli) -> list[ChatRequest]:
    return [r for r in cli.engine.requests if isinstance(r, ChatRequest)]


def test_piped_chat_writes_one_reply_per_line(cli: Cli) -> None:
    cli.engine.replies.extend(["Hello! How can I help?", "Goodbye."])
    result = cli("chat", input="hi\nbye\n")
    assert result.exit_code == 0
    assert result.stdout == "Hello! How can I help?\nGoodbye.\n"
    assert result.stderr == ""
    assert cli.engine.closed


def test_piped_chat_keeps_the_history_and_template_defaults(cli: Cli) -> None:
    cli("chat", input="hi\nbye\n")
    first, second = requests(cli)
    assert first.messages[0].role == "system" and "helpful" in first.messages[0].content
    assert [m.content for m in second.messages[1:]] == ["hi", "echo: hi", "bye"]
    assert second.sampling.temperature == 0.7 and second.sampling.max_tokens == 1024


def test_flags_override_the_template(cli: Cli) -> None:
    result = cli("chat", "--system", "Be terse.", "--temperature", "0", "--top-p", "0.5",
                 "--max-tokens", "16", "--seed", "3", "-m", "tiny", input="hi\n")
    assert result.exit_code == 0
    (request,) = requests(cli)
    assert request.messages == (Message("system", "Be terse."), Message("user", "hi"))
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens, sampling.seed) == (
        0.0, 0.5, 16, 3)
    settings = cli.settings_seen[0]
    assert isinstance(settings, Settings)
    assert settings.model == "tiny" and settings.seed == 3


def test_ctx_flag_reaches_the_settings(cli: Cli) -> None:
    cli("chat", "--ctx", "256", input="hi\n")
    settings = cli.settings_seen[0]
    assert isinstance(settings, Settings) and settings.n_ctx == 256


def test_empty_system_flag_means_no_system_prompt(cli: Cli) -> None:
    cli("chat", "--system", "", input="hi\n")
    assert [m.role for m in requests(cli)[0].messages] == ["user"]


def test_slash_commands_talk_on_stderr(cli: Cli) -> None:
    result = cli("chat", input="/set temperature 0.1\n/tokens\nhi\n")
    assert result.exit_code == 0
    assert result.stdout == "echo: hi\n"
    assert "temperature = 0.1" in result.stderr and "context:" in result.stderr


def test_errors_in_a_pipe_are_reported_and_exit_1(cli: Cli) -> None:
    result = cli("chat", input="/set temperature hot\nhi\n")
    assert result.exit_code == 1
    assert result.stdout == "echo: hi\n"
    assert result.stderr.startswith("termlm: error: temperature must be a number")


def test_empty_input_is_fine(cli: Cli) -> None:
    result = cli("chat", input="")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_continue_resumes_the_last_chat(cli: Cli) -> None:
    cli("chat", "--session", "ada", input="my name is Ada\n")
    path = sessions.session_path("ada")
    assert path.exists()
    result = cli("chat", "--continue", input="what is my name?\n")
    assert result.exit_code == 0
    last = requests(cli)[-1]
    assert [m.content for m in last.messages[1:]] == [
        "my name is Ada", "echo: my name is Ada", "what is my name?"]
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert len(saved["messages"]) == 4 and saved["model"] == "fake"
    assert saved["name"] == "ada" and saved["settings"]["template"] == "chat"


def test_a_piped_chat_saves_nothing_unless_asked(cli: Cli) -> None:
    cli("chat", "--session", "keep", input="remember me\n")
    before = sessions.session_path("keep").read_bytes()
    assert cli("chat", input="a throwaway question\n").exit_code == 0
    assert [info.name for info in sessions.listing()] == ["keep"]
    assert sessions.session_path("keep").read_bytes() == before
    cli("chat", "--continue", input="and now?\n")
    assert [m.content for m in requests(cli)[-1].messages[1:]] == [
        "remember me", "echo: remember me", "and now?"]


def test_continue_keeps_the_sessions_settings_unless_flags_override(cli: Cli) -> None:
    cli("chat", "--session", "warm", "--temperature", "1.3", "--seed", "7",
        "--max-tokens", "99", input="hi\n")
    cli("chat", "--continue", input="again\n")
    assert requests(cli)[-1].sampling.temperature == 1.3
    assert requests(cli)[-1].sampling.seed == 7
    cli("chat", "--session", "warm", "--temperature", "0.1", input="cooler\n")
    sent = requests(cli)[-1].sampling
    assert (sent.temperature, sent.seed) == (0.1, 7)
    saved = json.loads(sessions.session_path("warm").read_text(encoding="utf-8"))
    assert saved["settings"]["temperature"] == 0.1 and saved["settings"]["max_tokens"] == 99
    assert len(saved["messages"]) == 6


def test_chat_list_shows_the_sessions(cli: Cli) -> None:
    cli("chat", "--session", "first", input="Where is Lima?\nthanks\n")
    cli("chat", "--session", "second", input="\n\nName a river\n")
    result = cli("chat", "--list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "name\tlast used\tturns\tfirst line"
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert rows["first"][2:] == ["2", "Where is Lima?"]
    assert rows["second"][2:] == ["1", "Name a river"]
    listed = [json.loads(line) for line in cli("chat", "--list", "--json").stdout.splitlines()]
    assert {item["name"]: item["turns"] for item in listed} == {"first": 2, "second": 1}


def test_chat_list_with_no_sessions_says_so(cli: Cli) -> None:
    result = cli("chat", "--list")
    assert (result.exit_code, result.stdout) == (0, "")
    assert "no saved chat sessions" in result.stderr


def test_chat_list_shows_a_damaged_session_without_hiding_the_rest(cli: Cli) -> None:
    cli("chat", "--session", "good", input="hi\n")
    sessions.session_path("bad").write_text("{nope", encoding="utf-8")
    result = cli("chat", "--list")
    assert result.exit_code == 0
    assert "good\t" in result.stdout and "bad\t" in result.stdout
    assert "unreadable" in result.stdout


@pytest.mark.parametrize("name", ["../evil", "", "LAST", "a b", ".hidden", "x" * 65])
def test_a_bad_session_name_is_one_error(cli: Cli, name: str) -> None:
    result = cli("chat", "--session", name, input="hi\n")
    assert result.exit_code == 2
    assert "is not a session name" in result.stderr and result.stdout == ""


def test_without_continue_a_new_chat_starts(cli: Cli) -> None:
    cli("chat", input="first\n")
    cli("chat", input="second\n")
    assert [m.content for m in requests(cli)[-1].messages[1:]] == ["second"]


def test_continue_with_nothing_saved_starts_fresh(cli: Cli) -> None:
    result = cli("chat", "-c", input="hi\n")
    assert result.exit_code == 0 and result.stdout == "echo: hi\n"


def test_continue_with_a_broken_save_is_one_error(cli: Cli) -> None:
    path = sessions.session_path("broken")
    path.parent.mkdir(parents=True)
    path.write_text("{broken", encoding="utf-8")
    (path.parent / "LAST").write_text("broken\n", encoding="utf-8")
    result = cli("chat", "--continue", input="hi\n")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "not valid JSON" in result.stderr
    assert result.stdout == ""


def test_unknown_template_is_an_error(cli: Cli) -> None:
    result = cli("chat", "--template", "nope", input="hi\n")
    assert result.exit_code == 1
    assert "no template named 'nope'" in result.stderr


def test_template_needing_other_variables_is_refused(cli: Cli, tmp_path: Path) -> None:
    prompts = tmp_path / "config" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "quiz.yaml").write_text("description: d\nuser: '{topic} {prompt}'\n",
                                       encoding="utf-8")
    result = cli("chat", "-t", "quiz", input="hi\n")
    assert result.exit_code == 1 and "'topic'" in result.stderr


def test_user_template_shapes_the_message(cli: Cli, tmp_path: Path) -> None:
    prompts = tmp_path / "config" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "fr.yaml").write_text(
        "description: d\nsystem: Réponds en français.\nuser: 'En français : {prompt}'\n"
        "defaults:\n  temperature: 0.3\n", encoding="utf-8")
    cli("chat", "-t", "fr", input="hello\n")
    (request,) = requests(cli)
    assert request.messages == (Message("system", "Réponds en français."),
                                Message("user", "En français : hello"))
    assert request.sampling.temperature == 0.3


def test_help_has_an_example(cli: Cli) -> None:
    result = cli("chat", "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout and "--continue" in result.stdout


def test_chat_exchanges_go_into_the_log(cli: Cli) -> None:
    cli("chat", "--session", "logged", "--temperature", "0.5", input="first\nsecond\n")
    entries = json.loads(cli("logs", "--json").stdout)
    chats = [e for e in entries if e["type"] == "chat"]
    assert sorted(e["prompt"] for e in chats) == ["first", "second"]
    assert {e["session"] for e in chats} == {"logged"}
    assert {e["reply"] for e in chats} == {"echo: first", "echo: second"}
    assert all(e["settings"]["sampling"]["temperature"] == 0.5 for e in chats)


def test_chat_no_log_keeps_it_out(cli: Cli) -> None:
    cli("chat", "--no-log", input="secret plans\n")
    assert "secret plans" not in cli("logs", "--json").stdout
