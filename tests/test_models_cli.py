"""`termlm models ...` through the real Typer app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from termlm.models.catalog import load_catalog

from .helpers_gguf import tiny_llama_spec, write_gguf

if TYPE_CHECKING:  # the fixture's type only
    from .conftest import Cli


@pytest.fixture(autouse=True)
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models"
    monkeypatch.setenv("TERMLM_MODELS_DIR", str(path))
    return path


def fake_pull(models: Path, name: str) -> Path:
    """Put a file of the catalog's size in place (a tiny valid GGUF, zero-padded)."""
    entry = load_catalog()[name]
    models.mkdir(exist_ok=True)
    path = write_gguf(models / entry.file, tiny_llama_spec(chat_template=None))
    with open(path, "r+b") as fh:
        fh.truncate(entry.size)
    return path


def write_config(tmp_path: Path, text: str) -> None:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text(text)


def test_list_plain_text_when_piped(cli: Cli, tmp_path: Path, models: Path) -> None:
    fake_pull(models, "gemma3-270m")
    mine = write_gguf(tmp_path / "mine.gguf")
    write_config(tmp_path, f"models:\n  mine: {mine}\n  gone: {tmp_path / 'gone.gguf'}\n")
    result = cli("models", "list")
    assert result.exit_code == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split("\t") == ["name", "params", "quant", "size", "memory", "fits", "tags",
                                  "pulled", "default", "license", "notes"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert rows["smollm2"][1:4] == ["134.5M", "Q4_1", "98 MB"]
    assert rows["smollm2"][6:10] == ["chat", "no", "-", "Apache-2.0"]
    assert rows["qwen2.5-coder-0.5b"][8] == "*"
    assert rows["smollm2"][8] == "-"
    assert rows["gemma3-270m"][3] == "253 MB" and rows["gemma3-270m"][7] == "yes"
    assert rows["mine"][7] == "local"
    assert rows["gone"][3] == "-" and rows["gone"][7] == "missing"


def test_list_json_marks_the_configured_default(cli: Cli, tmp_path: Path) -> None:
    write_config(tmp_path, "model: gemma3-270m\n")
    result = cli("models", "list", "--json")
    data = {row["name"]: row for row in json.loads(result.stdout)}
    assert data["gemma3-270m"]["default"] is True
    assert data["smollm2"]["default"] is False
    assert data["smollm2"]["pulled"] is False
    assert data["smollm2"]["size"] == 98362432
    assert data["smollm2"]["source"] == [str(load_catalog()["smollm2"].sources[0])]


def test_info_json_of_a_path(cli: Cli, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    result = cli("models", "info", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "tiny.gguf"
    assert data["model_name"] == "Tiny Llama"
    assert data["architecture"] == "llama"
    assert data["quantization"] == "Q4_1"
    assert (data["block_count"], data["head_count"], data["head_count_kv"]) == (2, 4, 2)
    assert data["context_length"] == 2048
    assert data["has_chat_template"] is True
    assert data["path"] == str(path)
    assert data["catalog"] is None


def test_info_text(cli: Cli, tmp_path: Path) -> None:
    spec = tiny_llama_spec(chat_template=None, vocab=2000)
    path = write_gguf(tmp_path / "tiny.gguf", spec)
    result = cli("models", "info", str(path))
    assert result.exit_code == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["architecture"] == "llama"
    assert fields["parameters"] == "152.8K (the file's tensors)"
    assert fields["attention heads"] == "4" and fields["KV heads"] == "2"
    assert fields["layers"].isdigit() and fields["embedding size"].isdigit()
    assert fields["vocab"] == "2000"
    assert fields["trained context"] == "2048"
    assert fields["chat template"].startswith("no")
    assert "bits per weight" in fields["quantization"]
    assert fields["memory at 2048"].endswith("(estimate)")
    assert " + KV cache " in fields["memory at 2048"]
    assert fields["fits here"].startswith(("yes", "NO", "unknown"))
    assert fields["path"] == str(path)


def test_info_json_has_the_memory_at_the_context(cli: Cli, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama_spec(vocab=2000))
    result = cli("--ctx", "1024", "models", "info", "--json", str(path))
    data = json.loads(result.stdout)
    memory = data["memory"]
    assert memory["n_ctx"] == 1024
    assert memory["total"] == memory["weights"] + memory["kv_cache"] + memory["compute"]
    assert memory["kv_cache"] > 0 and isinstance(memory["fits"], bool)
    assert data["bits_per_weight"] > 0


@pytest.mark.model
def test_kv_estimate_matches_what_llama_cpp_allocates() -> None:
    """The estimate's KV cache is the buffer llama.cpp reports for the same context."""
    import re
    import subprocess
    import sys

    from termlm.config import Settings
    from termlm.models.memory import kv_cache_bytes
    from termlm.models.resolve import resolve_model

    header = resolve_model("smollm2", Settings()).header
    proc = subprocess.run([sys.executable, "-m", "termlm", "-v", "--ctx", "4096", "batch",
                           "-p", "{text}", "-n", "1", "-P", "1"], input="hi\n",
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**__import__("os").environ, "TERMLM_MODEL": "smollm2"})
    found = re.search(r"KV buffer size =\s*([\d.]+) MiB", proc.stderr)
    assert found, proc.stderr[-2000:]
    assert float(found.group(1)) * 2**20 == pytest.approx(kv_cache_bytes(header, 4096), rel=0.02)


def test_info_of_a_catalog_model_shows_its_turn_format(cli: Cli, models: Path) -> None:
    fake_pull(models, "gemma3-270m")
    result = cli("models", "info", "gemma3-270m")
    assert result.exit_code == 0, result.stderr
    assert "gemma3-270m turn format" in result.stdout
    data = json.loads(cli("models", "info", "gemma3-270m", "--json").stdout)
    assert data["catalog"]["license"] == "Gemma terms of use"


def test_info_never_pulls(cli: Cli) -> None:
    result = cli("models", "info", "smollm2")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "model 'smollm2' is not downloaded" in result.stderr
    assert "hint: run: termlm models pull smollm2" in result.stderr


def test_info_of_a_bad_file(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello there")
    result = cli("models", "info", str(bad))
    assert result.exit_code == 1
    assert f"{bad} is not a GGUF file (starts with b'hell')" in result.stderr


def test_info_of_an_unknown_name(cli: Cli) -> None:
    result = cli("models", "info", "nosuch")
    assert result.exit_code == 1
    assert "unknown model 'nosuch'" in result.stderr
    assert "hint: termlm models list" in result.stderr


def test_path(cli: Cli, models: Path) -> None:
    result = cli("models", "path", "smollm2")
    assert result.exit_code == 1
    assert "termlm models pull smollm2" in result.stderr
    path = fake_pull(models, "smollm2")
    result = cli("models", "path", "smollm2")
    assert (result.exit_code, result.stdout) == (0, f"{path}\n")


def test_pull_offline_is_refused(cli: Cli) -> None:
    result = cli("--offline", "models", "pull", "smollm2")
    assert result.exit_code == 1
    assert "offline mode is on" in result.stderr


def test_pull_already_pulled_prints_the_path(cli: Cli, models: Path) -> None:
    path = fake_pull(models, "smollm2")
    result = cli("models", "pull", "smollm2")
    assert (result.exit_code, result.stdout) == (0, f"{path}\n")
    assert "already pulled" in result.stderr


def test_pull_unknown(cli: Cli) -> None:
    result = cli("models", "pull", "nosuch")
    assert result.exit_code == 1
    assert "unknown model 'nosuch'" in result.stderr


def test_rm_needs_yes_when_not_interactive(cli: Cli, models: Path) -> None:
    path = fake_pull(models, "smollm2")
    result = cli("models", "rm", "smollm2")
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert path.exists()
    result = cli("models", "rm", "smollm2", "--yes")
    assert result.exit_code == 0, result.stderr
    assert not path.exists()
    assert "deleted" in result.stderr
    result = cli("models", "rm", "smollm2", "--yes")
    assert result.exit_code == 1
    assert "not pulled" in result.stderr


def test_rm_asks_on_a_terminal(cli: Cli, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake_pull(models, "smollm2")
    monkeypatch.setattr("termlm.output.is_tty", lambda stream: True)
    monkeypatch.setenv("NO_COLOR", "1")
    result = cli("models", "rm", "smollm2", input="n\n")
    assert result.exit_code == 1
    assert path.exists()
    result = cli("models", "rm", "smollm2", input="y\n")
    assert result.exit_code == 0
    assert not path.exists()


def test_rm_refuses_files_it_did_not_pull(cli: Cli, tmp_path: Path) -> None:
    mine = write_gguf(tmp_path / "mine.gguf")
    write_config(tmp_path, f"models:\n  mine: {mine}\n")
    result = cli("models", "rm", "mine", "--yes")
    assert result.exit_code == 2
    assert "local alias" in result.stderr
    assert mine.exists()


@pytest.mark.parametrize("command", ["list", "pull", "info", "path", "rm"])
def test_every_command_has_an_example(cli: Cli, command: str) -> None:
    result = cli("models", command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout


def test_models_modules_import_nothing_heavy() -> None:
    code = ("import sys, termlm.models.resolve, termlm.models.pull, termlm.models.gguf, "
            "termlm.models.catalog; "
            "print(sorted(m for m in ('rich', 'huggingface_hub', 'llama_cpp', 'yaml') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
