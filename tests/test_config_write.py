"""update_config_file: what `models quantize` and `bench --save` write, validated and atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from termlm.config import ConfigError, load_settings, update_config_file


def _path() -> Path:
    return Path(os.environ["TERMLM_CONFIG_DIR"]) / "config.yaml"


def test_creates_the_file_and_merges_aliases() -> None:
    update_config_file({"threads": 2, "models": {"a": "/m/a.gguf"}})
    update_config_file({"models": {"b": "/m/b.gguf"}, "flash_attn": "on"})
    data = yaml.safe_load(_path().read_text())
    assert data == {"threads": 2, "models": {"a": "/m/a.gguf", "b": "/m/b.gguf"},
                    "flash_attn": "on"}
    settings = load_settings()
    assert settings.threads == 2 and settings.models["b"] == "/m/b.gguf"
    assert not list(_path().parent.glob(".*tmp"))


def test_keeps_other_settings_and_backs_up_comments() -> None:
    _path().parent.mkdir(parents=True)
    _path().write_text("# my settings\nmodel: smollm2\nn_ctx: 2048\n")
    update_config_file({"threads": 1})
    assert yaml.safe_load(_path().read_text()) == {"model": "smollm2", "n_ctx": 2048,
                                                   "threads": 1}
    assert _path().with_name("config.yaml.bak").read_text().startswith("# my settings")


def test_refuses_bad_values_and_leaves_the_file_alone() -> None:
    update_config_file({"threads": 2})
    before = _path().read_text()
    with pytest.raises(ConfigError):
        update_config_file({"flash_attn": "sometimes"})
    with pytest.raises(ConfigError):
        update_config_file({"no_such_key": 1})
    assert _path().read_text() == before


def test_an_invalid_existing_file_is_not_overwritten() -> None:
    _path().parent.mkdir(parents=True)
    _path().write_text("threads: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        update_config_file({"threads": 2})
    assert _path().read_text() == "threads: [1\n"
