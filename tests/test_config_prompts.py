"""Config precedence and validation; prompt templates: validation and safe substitution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from termlm.config import load_settings, read_config_file
from termlm.errors import ConfigError, TemplateError
from termlm.paths import config_file, user_prompts_dir
from termlm.prompts import load_template, parse_template, substitute

from .conftest import Cli


def _write_config(text: str) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_a_config_file() -> None:
    settings = load_settings()
    assert settings.model == "qwen2.5-coder-0.5b"
    assert settings.offline is False
    assert settings.source["model"] == "default"


def test_flags_beat_env_beat_file(monkeypatch: pytest.MonkeyPatch) -> None:
    _write_config("n_ctx: 1024\nthreads: 1\noffline: true\n")
    monkeypatch.setenv("TERMLM_CTX", "2048")
    settings = load_settings({"threads": 2})
    assert settings.n_ctx == 2048 and settings.source["n_ctx"] == "environment"
    assert settings.threads == 2 and settings.source["threads"] == "flag"
    assert settings.offline is True and settings.source["offline"].startswith("config file")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: red\n", "unknown setting 'colour'"),
        ("n_ctx: lots\n", "n_ctx must be a whole number"),
        ("offline: maybe\n", "offline must be true or false"),
        ("- a\n- b\n", "must be a mapping"),
        ("models: [a]\n", "models must map names"),
        ("n_ctx: 10\n", "at least 64"),
        ("flash_attn: sometimes\n", "flash_attn must be auto, on or off"),
    ],
)
def test_bad_config_files(text: str, message: str) -> None:
    path = _write_config(text)
    with pytest.raises(ConfigError, match=message):
        read_config_file(path)


def test_flash_attention_setting(monkeypatch: pytest.MonkeyPatch, cli: Cli) -> None:
    assert load_settings().flash_attn == "auto"
    _write_config("flash_attn: off\n")  # YAML's boolean off
    assert load_settings().flash_attn == "off"
    monkeypatch.setenv("TERMLM_FLASH_ATTN", "ON")
    assert load_settings().flash_attn == "on"
    assert load_settings({"flash_attn": "auto"}).flash_attn == "auto"
    cli("--flash-attn", "off", "ask", "hi")
    assert cli.settings_seen[-1].flash_attn == "off"  # type: ignore[attr-defined]
    bad = cli("--flash-attn", "fast", "ask", "hi")
    assert bad.exit_code != 0 and "flash_attn must be auto, on or off" in bad.stderr


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_OFFLINE", "perhaps")
    with pytest.raises(ConfigError, match="TERMLM_OFFLINE"):
        load_settings()


def test_config_cli(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_config("model: my-model\n")
    monkeypatch.setenv("TERMLM_OFFLINE", "1")
    assert cli("config", "path").stdout.strip() == str(config_file())
    data = json.loads(cli("config", "show", "--json").stdout)
    assert data["settings"]["model"] == "my-model"
    assert data["settings"]["offline"] is True
    assert data["source"]["offline"] == "environment"
    plain = cli("config", "show")
    lines = plain.stdout.splitlines()
    assert f"model: my-model  # config file {config_file()}" in lines
    assert "offline: true  # environment" in lines
    assert "n_ctx: 4096  # default" in lines
    assert plain.stderr == ""
    import yaml

    assert yaml.safe_load(plain.stdout)["model"] == "my-model"  # still YAML


def test_substitution_never_evaluates_user_data() -> None:
    values = {"text": "{text.__class__} {0} {{x}} {prompt}", "prompt": "P"}
    assert substitute("<{text}>|{prompt}", values) == "<{text.__class__} {0} {{x}} {prompt}>|P"


def test_literal_braces_and_missing_variables() -> None:
    assert substitute("{{json}} {a}", {"a": "1"}) == "{json} 1"
    with pytest.raises(TemplateError, match="needs variable 'b'"):
        substitute("{a} {b}", {"a": "1"})
    with pytest.raises(TemplateError, match="unmatched"):
        substitute("{a", {"a": "1"})
    with pytest.raises(TemplateError, match="not a variable name"):
        substitute("{a.b}", {"a": "1"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("description: x\nuser: y\nsytem: typo\n", "unknown key 'sytem'"),
        ("user: y\n", "'description' is required"),
        ("description: x\n", "'user' is required"),
        ("description: x\nuser: y\ndefaults: {temp: 1}\n", "unknown default 'temp'"),
        ("description: x\nuser: y\ndefaults: {max_tokens: many}\n", "whole number"),
        ("description: x\nuser: '{bad name}'\n", "not a variable name"),
        ("description: x\nuser: !!python/object:os.system [ls]\n", "not valid YAML"),
        ("just text", "must be a YAML mapping"),
    ],
)
def test_bad_templates(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_template("t", text)


def test_builtin_templates_load_and_user_templates_override(cli: Cli) -> None:
    assert load_template("ask").builtin
    folder = user_prompts_dir()
    folder.mkdir(parents=True)
    (folder / "ask.yaml").write_text("description: mine\nuser: 'Q: {prompt}'\n")
    (folder / "poem.yaml").write_text("description: a poem\nuser: 'A poem about {prompt}'\n")
    assert load_template("ask").description == "mine"
    listing = cli("prompts", "list").stdout
    assert "poem\tuser\ta poem" in listing
    assert "chat\tbuilt-in" in listing
    shown = cli("prompts", "show", "poem")
    assert "A poem about {prompt}" in shown.stdout
    assert cli("prompts", "show", "missing").exit_code == 1


def test_ask_uses_a_user_template(cli: Cli) -> None:
    folder = user_prompts_dir()
    folder.mkdir(parents=True)
    (folder / "pirate.yaml").write_text(
        "description: pirate\nsystem: Talk like a pirate.\nuser: 'Arr: {prompt}'\n"
        "defaults: {temperature: 0.9, max_tokens: 5}\n")
    cli("ask", "-t", "pirate", "hello")
    request = cli.engine.requests[-1]
    assert request.messages[0].content == "Talk like a pirate."  # type: ignore[union-attr]
    assert request.messages[1].content == "Arr: hello"  # type: ignore[union-attr]
    assert request.sampling.temperature == 0.9  # type: ignore[union-attr]
    assert request.sampling.max_tokens == 5  # type: ignore[union-attr]


def test_the_readme_pirate_template_works_as_shown(cli: Cli) -> None:
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"save this as `pirate.yaml` there:\n\n```yaml\n(.*?)```", readme, re.S)
    assert block is not None
    folder = user_prompts_dir()
    folder.mkdir(parents=True)
    (folder / "pirate.yaml").write_text(block.group(1))
    result = cli("ask", "--template", "pirate", "tell me about git rebase")
    assert result.exit_code == 0, result.stderr
    request = cli.engine.requests[-1]
    assert request.messages[0].content == "You are a pirate. Stay in character."  # type: ignore[union-attr]
    assert request.sampling.temperature == 0.9  # type: ignore[union-attr]
    assert "pirate" in cli("prompts", "list").stdout


def test_prompts_list_is_a_table_on_a_terminal(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import termlm.output

    monkeypatch.setattr(termlm.output, "is_tty", lambda stream: True)
    listing = cli("prompts", "list").stdout
    header = listing.splitlines()[0].split()
    assert header == ["name", "origin", "variables", "description"]
    assert "\t" not in listing
    assert any(line.split()[:2] == ["chat", "built-in"] for line in listing.splitlines())


def test_config_show_never_prints_a_password_in_the_base_url(cli: Cli) -> None:
    result = cli("--base-url", "http://me:s3cret@gpu-box:8000/v1", "config", "show")
    assert "s3cret" not in result.stdout
    assert "base_url: http://me:***@gpu-box:8000/v1" in result.stdout
    assert "s3cret" not in cli("--base-url", "http://me:s3cret@h/v1", "config", "show",
                               "--json").stdout


def test_prompts_list_flags_a_bad_user_template_and_lists_the_rest(cli: Cli) -> None:
    folder = user_prompts_dir()
    folder.mkdir(parents=True)
    (folder / "neg.yaml").write_text("description: x\nuser: y\ndefaults: {temperature: -5}\n")
    result = cli("prompts", "list")
    assert result.exit_code == 0, result.stderr
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert "ask" in names and "neg" in names
    assert "warning: template 'neg'" in result.stderr
    rows = {r["name"]: r for r in json.loads(cli("prompts", "list", "--json").stdout)}
    assert rows["neg"]["problem"] and rows["ask"]["problem"] is None
