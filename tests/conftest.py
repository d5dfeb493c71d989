"""Shared fixtures.

Every test gets its own config, state and data directories, so nothing leaks from
the developer's own ~/.config/termlm. The model cache (TERMLM_MODELS_DIR, or
the user cache dir) is shared, so the real default model is pulled once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.fake import FakeEngine

PLUMBING_MODEL = "smollm2"  # the tiny one: tests that check plumbing, not answers


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("TERMLM_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TERMLM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TERMLM_DATA_DIR", str(tmp_path / "data"))  # the log database
    for var in ("TERMLM_MODEL", "TERMLM_OFFLINE", "TERMLM_CTX", "TERMLM_THREADS",
                "TERMLM_GPU_LAYERS", "TERMLM_SEED", "TERMLM_CONFIG", "NO_COLOR", "TERMLM_LOG"):
        monkeypatch.delenv(var, raising=False)
    # Tests run on the tiny model for speed unless they are about the default model's
    # answers (marked default_model), which run on the real default, as a user gets it.
    if (request.node.get_closest_marker("model") is not None
            and request.node.get_closest_marker("default_model") is None):
        monkeypatch.setenv("TERMLM_MODEL", PLUMBING_MODEL)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Cli:
    """Runs the real Typer app in-process with a FakeEngine behind it."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.settings_seen: list[object] = []

    def __call__(self, *args: str, input: str | bytes | None = None) -> Result:
        def factory(settings: object) -> FakeEngine:
            self.settings_seen.append(settings)
            return self.engine

        runner = CliRunner()
        result = runner.invoke(app, list(args), input=input,
                               obj=AppState(engine_factory=factory))  # type: ignore[arg-type]
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def cli(fake_engine: FakeEngine) -> Iterator[Cli]:
    yield Cli(fake_engine)


def model_env() -> dict[str, str]:
    """Environment for subprocess runs of the real CLI."""
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    return env


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """llama-cpp-python opens two /dev/null files when llama_cpp._utils is imported and
    never closes them: close them here, so the run does not end in ResourceWarnings
    (users never see those: Python's default filters hide them)."""
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None and not handle.closed:
            handle.close()
