"""task_models: a config key that maps a command to its model; -m still overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from termlm.config import ConfigError, load_settings, model_for

from .conftest import Cli


def _config(text: str) -> None:
    path = Path(os.environ["TERMLM_CONFIG_DIR"]) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_command_gets_its_task_model(cli: Cli) -> None:
    _config("model: smollm2\ntask_models:\n  ask: gemma3-270m\n  translate: qwen2.5-coder-1.5b\n")
    cli("ask", "hi")
    cli("chat", input="hello\n")
    cli("ask", "-m", "qwen2.5-0.5b", "hi")
    seen = [s.model for s in cli.settings_seen]  # type: ignore[attr-defined]
    assert seen == ["gemma3-270m", "smollm2", "qwen2.5-0.5b"]


def test_the_environment_and_flags_beat_task_models(monkeypatch: pytest.MonkeyPatch) -> None:
    _config("task_models:\n  translate: qwen2.5-coder-1.5b\n")
    settings = load_settings()
    assert model_for(settings, "translate", None) == "qwen2.5-coder-1.5b"
    assert model_for(settings, "classify", None) == settings.model
    assert model_for(settings, "translate", "smollm2") == "smollm2"
    monkeypatch.setenv("TERMLM_MODEL", "gemma3-270m")
    assert model_for(load_settings(), "translate", None) == "gemma3-270m"


def test_unknown_commands_and_bad_values_are_config_errors() -> None:
    _config("task_models:\n  translat: smollm2\n")
    with pytest.raises(ConfigError, match="unknown command 'translat'"):
        load_settings()
    _config("task_models: smollm2\n")
    with pytest.raises(ConfigError, match="task_models must map command names to models"):
        load_settings()
    _config("task_models:\n  ask: ''\n")
    with pytest.raises(ConfigError):
        load_settings()


def test_config_show_reports_where_the_model_comes_from(cli: Cli) -> None:
    _config("task_models:\n  ask: gemma3-270m\n")
    result = cli("config", "show", "--json")
    assert result.exit_code == 0
    assert '"task_models"' in result.stdout
