"""`termlm ask` on the FakeEngine: stdin handling, JSON, options, errors."""

from __future__ import annotations

import json

from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest

from .conftest import Cli


def _last(engine: FakeEngine) -> ChatRequest:
    request = engine.requests[-1]
    assert isinstance(request, ChatRequest)
    return request


def test_prompt_answer_streams_to_stdout(cli: Cli) -> None:
    cli.engine.replies.append("Paris is the capital.")
    result = cli("ask", "What is the capital of France?")
    assert result.exit_code == 0
    assert result.stdout == "Paris is the capital.\n"
    assert result.stderr == ""
    messages = _last(cli.engine).messages
    assert messages[0].role == "system"
    assert messages[-1].content == "What is the capital of France?"


def test_stdin_is_attached_as_context(cli: Cli) -> None:
    result = cli("ask", "summarize this", input="line one\nline two\n")
    assert result.exit_code == 0
    user = _last(cli.engine).messages[-1].content
    assert user.startswith("summarize this")
    assert "line one\nline two" in user


def test_stdin_alone_is_the_prompt(cli: Cli) -> None:
    result = cli("ask", input="What is 2+2?\n")
    assert result.exit_code == 0
    assert _last(cli.engine).messages[-1].content == "What is 2+2?"


def test_nothing_to_ask_is_a_usage_error(cli: Cli) -> None:
    result = cli("ask", input="")
    assert result.exit_code == 2
    assert "nothing to ask" in result.stderr
    assert result.stdout == ""


def test_json_output_has_the_documented_fields(cli: Cli) -> None:
    cli.engine.replies.append("four")
    result = cli("ask", "--json", "2+2?")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["text"] == "four"
    assert data["model"] == "fake"
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert set(data["timings"]) == {"load_s", "ttft_s", "completion_tokens_per_s"}
    assert data["usage"]["completion_tokens"] == 1


def test_sampling_options_reach_the_engine(cli: Cli) -> None:
    result = cli("ask", "--temperature", "0", "--top-p", "0.5", "--max-tokens", "7",
                 "--seed", "42", "--stop", "END", "--system", "be terse", "hi")
    assert result.exit_code == 0
    request = _last(cli.engine)
    assert request.sampling.temperature == 0
    assert request.sampling.top_p == 0.5
    assert request.sampling.max_tokens == 7
    assert request.sampling.seed == 42
    assert request.sampling.stop == ("END",)
    assert request.messages[0].content == "be terse"


def test_stop_string_cuts_the_reply(cli: Cli) -> None:
    cli.engine.replies.append("one two END three")
    result = cli("ask", "--stop", "END", "count")
    assert result.stdout == "one two \n"


def test_max_tokens_limits_the_reply(cli: Cli) -> None:
    cli.engine.replies.append("a b c d e f")
    result = cli("ask", "--json", "-n", "3", "letters")
    data = json.loads(result.stdout)
    assert data["text"] == "a b c"
    assert data["finish_reason"] == "length"


def test_user_data_with_braces_stays_literal(cli: Cli) -> None:
    result = cli("ask", "explain {text.__class__} and {0}", input="{input} {prompt}")
    assert result.exit_code == 0
    user = _last(cli.engine).messages[-1].content
    assert "{text.__class__} and {0}" in user
    assert "{input} {prompt}" in user


def test_invalid_utf8_on_stdin_is_a_clear_error(cli: Cli) -> None:
    result = cli("ask", "what is this", input=b"ok\n\xff\xfe bad\n")
    assert result.exit_code == 1
    assert "not valid UTF-8" in result.stderr
    assert "line 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_binary_stdin_is_a_clear_error(cli: Cli) -> None:
    result = cli("ask", "what is this", input=b"\x7fELF\x00\x00\x01")
    assert result.exit_code == 1
    assert "binary" in result.stderr


def test_unknown_template_is_a_clear_error(cli: Cli) -> None:
    result = cli("ask", "--template", "nope", "hi")
    assert result.exit_code == 1
    assert "no template named 'nope'" in result.stderr


def test_template_needing_unknown_variable(cli: Cli, tmp_path: object) -> None:
    from termlm.paths import user_prompts_dir

    folder = user_prompts_dir()
    folder.mkdir(parents=True)
    (folder / "odd.yaml").write_text("description: needs more\nuser: '{prompt} {language}'\n")
    result = cli("ask", "--template", "odd", "hi")
    assert result.exit_code == 1
    assert "'language'" in result.stderr


def test_bad_config_is_a_one_line_error(cli: Cli) -> None:
    from termlm.paths import config_file

    path = config_file()
    path.parent.mkdir(parents=True)
    path.write_text("model: [unclosed\n")
    result = cli("ask", "hi")
    assert result.exit_code == 1
    assert "not valid YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_model_flag_env_and_config_precedence(cli: Cli, monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    from termlm.paths import config_file

    path = config_file()
    path.parent.mkdir(parents=True)
    path.write_text("model: from-config\n")
    cli("ask", "hi")
    monkeypatch.setenv("TERMLM_MODEL", "from-env")
    cli("ask", "hi")
    cli("ask", "-m", "from-flag", "hi")
    seen = [s.model for s in cli.settings_seen]  # type: ignore[attr-defined]
    assert seen == ["from-config", "from-env", "from-flag"]
