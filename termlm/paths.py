"""Where termlm keeps its files. Each can be moved with an environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def _dir(env: str, kind: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override).expanduser()
    import platformdirs

    getter = {
        "config": platformdirs.user_config_dir,
        "cache": platformdirs.user_cache_dir,
        "state": platformdirs.user_state_dir,
        "data": platformdirs.user_data_dir,
    }[kind]
    return Path(getter("termlm", appauthor=False))


def config_dir() -> Path:
    return _dir("TERMLM_CONFIG_DIR", "config")


def cache_dir() -> Path:
    return _dir("TERMLM_CACHE_DIR", "cache")


def state_dir() -> Path:
    return _dir("TERMLM_STATE_DIR", "state")


def data_dir() -> Path:
    """Where termlm keeps what it records for you: the log database (``logs.db``)."""
    return _dir("TERMLM_DATA_DIR", "data")


def models_dir() -> Path:
    override = os.environ.get("TERMLM_MODELS_DIR")
    return Path(override).expanduser() if override else cache_dir() / "models"


def config_file() -> Path:
    override = os.environ.get("TERMLM_CONFIG")
    return Path(override).expanduser() if override else config_dir() / "config.yaml"


def user_prompts_dir() -> Path:
    return config_dir() / "prompts"
