"""The GGUF header reader: fields from synthetic files, and every way a file can be bad."""

from __future__ import annotations

import json
import os
import random
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from termlm.errors import ModelFileError
from termlm.models.gguf import GGUFArray, check_gguf, read_gguf, tensor_nbytes

from .helpers_gguf import (
    ARRAY,
    FLOAT64,
    INT8,
    INT64,
    STRING,
    UINT8,
    UINT64,
    GGUFSpec,
    Tensor,
    Typed,
    gguf_bytes,
    tiny_llama_spec,
    write_gguf,
    write_sparse_gguf,
)


def test_reads_the_fields_of_a_tiny_llama(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    header = read_gguf(path)
    assert header.path == path
    assert header.version == 3
    assert header.file_size == path.stat().st_size
    assert header.architecture == "llama"
    assert header.name == "Tiny Llama"
    assert header.quantization == "Q4_1"
    assert header.context_length == 2048
    assert header.block_count == 2
    assert header.head_count == 4
    assert header.head_count_kv == 2
    assert header.embedding_length == 64
    assert header.vocab_size == 300
    assert header.has_chat_template
    assert header.chat_template == "{{ messages }}"
    assert header.tensor_count == 8
    assert header.parameter_count == 64 * 300 + 2 * (64 + 64 * 64 + 64 * 128) + 64
    assert header.tensor_types == {"F32": 3, "Q4_1": 3, "Q8_0": 2}


def test_big_arrays_keep_only_their_length(tmp_path: Path) -> None:
    header = read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny_llama_spec(vocab=5000)))
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert tokens == GGUFArray("string", 5000)
    assert header.metadata["tokenizer.ggml.token_type"] == GGUFArray("int32", 5000)
    assert header.vocab_size == 5000


def test_small_arrays_are_kept(tmp_path: Path) -> None:
    header = read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny_llama_spec(vocab=4)))
    assert header.metadata["tokenizer.ggml.tokens"] == ["tok0", "tok1", "tok2", "tok3"]
    assert header.vocab_size == 4


def test_every_value_type_and_nested_arrays(tmp_path: Path) -> None:
    spec = GGUFSpec(metadata={
        "general.architecture": "test",
        "u8": Typed(UINT8, 255), "i8": Typed(INT8, -5), "u64": Typed(UINT64, 2**63),
        "i64": Typed(INT64, -(2**40)), "f64": Typed(FLOAT64, 0.25), "flag": True,
        "f32": 1.5, "text": "héllo",
        "nested": Typed(ARRAY, [[1, 2], [3]], ARRAY),
        "strings": Typed(ARRAY, ["a", "b"], STRING),
        "big_nested": Typed(ARRAY, [[1]] * 300, ARRAY),
    })
    header = read_gguf(write_gguf(tmp_path / "types.gguf", spec))
    md = header.metadata
    assert (md["u8"], md["i8"], md["u64"], md["i64"]) == (255, -5, 2**63, -(2**40))
    assert (md["f64"], md["flag"], md["f32"], md["text"]) == (0.25, True, 1.5, "héllo")
    assert md["nested"] == [[1, 2], [3]]
    assert md["strings"] == ["a", "b"]
    assert md["big_nested"] == GGUFArray("array", 300)
    assert header.tensor_count == 0
    assert header.parameter_count == 0
    assert header.quantization is None


def test_per_layer_head_counts_report_the_largest(tmp_path: Path) -> None:
    spec = tiny_llama_spec()
    spec.metadata["llama.attention.head_count_kv"] = [1, 2, 4]
    assert read_gguf(write_gguf(tmp_path / "m.gguf", spec)).head_count_kv == 4


def test_version_2_and_custom_alignment(tmp_path: Path) -> None:
    spec = tiny_llama_spec()
    spec.version = 2
    spec.alignment = 64
    header = read_gguf(write_gguf(tmp_path / "v2.gguf", spec))
    assert header.version == 2
    assert header.alignment == 64
    assert header.data_offset % 64 == 0


def test_quantization_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    spec = tiny_llama_spec(chat_template=None)
    del spec.metadata["general.file_type"]
    header = read_gguf(write_gguf(tmp_path / "m.gguf", spec))
    assert header.quantization == "Q4_1"
    assert not header.has_chat_template
    assert header.chat_template is None


def test_to_dict_is_json(tmp_path: Path) -> None:
    data = read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny_llama_spec(vocab=1000))).to_dict()
    text = json.dumps(data)
    assert json.loads(text)["metadata"]["tokenizer.ggml.tokens"] == {
        "array_of": "string", "length": 1000}
    assert data["parameter_count"] > 0 and data["quantization"] == "Q4_1"


def test_tensor_sizes_use_the_ggml_table() -> None:
    assert tensor_nbytes(0, (10, 3)) == 120  # F32
    assert tensor_nbytes(3, (64, 2)) == 2 * 2 * 20  # Q4_1: 32 per block, 20 bytes
    assert tensor_nbytes(12, (256, 4)) == 4 * 144  # Q4_K
    assert tensor_nbytes(39, (32,)) == 17  # MXFP4
    assert tensor_nbytes(1000, (32,)) is None


# --- bad files -------------------------------------------------------------------------


def _error(path: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        read_gguf(path)
    message = info.value.message
    assert "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope.gguf") == f"model file not found: {tmp_path / 'nope.gguf'}"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    assert "is a directory" in _error(tmp_path / "dir.gguf")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "is empty" in _error(tmp_path / "empty.gguf")


def test_text_file_named_gguf(tmp_path: Path) -> None:
    path = tmp_path / "hello.gguf"
    path.write_text("hello world\n")
    assert _error(path) == f"{path} is not a GGUF file (starts with b'hell')"


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root can read anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "locked.gguf")
    path.chmod(0)
    assert "cannot read" in _error(path)


def test_unsupported_versions(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 1) + bytes(16))
    assert "unsupported GGUF version 1" in _error(path)
    path.write_bytes(b"GGUF" + struct.pack(">I", 3) + bytes(16))
    assert "big-endian" in _error(path)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    data = gguf_bytes(tiny_llama_spec())
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:-100])
    message = _error(path)
    assert message == (f"{path} is truncated: expected at least {len(data)} bytes, "
                       f"file has {len(data) - 100}")


@pytest.mark.parametrize("keep", [5, 8, 23, 24, 40, 100, 500, 2000])
def test_truncated_header(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(gguf_bytes(tiny_llama_spec())[:keep])
    message = _error(path)
    assert str(path) in message and "truncated" in message


def test_absurd_counts_and_lengths(tmp_path: Path) -> None:
    path = tmp_path / "absurd.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 1) + bytes(64))
    assert "implausible tensor count" in _error(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**60) + bytes(64))
    assert "implausible length" in _error(path)
    key = struct.pack("<Q", 1) + b"k"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + key
                     + struct.pack("<IIQ", ARRAY, STRING, 2**50) + bytes(64))
    assert "implausible element count" in _error(path)


def test_bad_tensor_infos(tmp_path: Path) -> None:
    bad_dims = GGUFSpec(tensors=[Tensor("t", (1, 1, 1, 1, 1))])
    path = write_gguf(tmp_path / "dims.gguf", bad_dims)
    assert "5 dimensions" in _error(path)
    bad_block = GGUFSpec(tensors=[Tensor("q", (32,), 3)])
    data = bytearray(gguf_bytes(bad_block))
    row = data.index(struct.pack("<Q", 32))  # the first dimension
    data[row:row + 8] = struct.pack("<Q", 33)
    path.write_bytes(bytes(data))
    assert "block size" in _error(path)


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    spec = GGUFSpec(tensors=[Tensor("t", (4,)), Tensor("t", (4,))])
    assert "duplicate tensor 't'" in _error(write_gguf(tmp_path / "dup.gguf", spec))


def test_bad_alignment(tmp_path: Path) -> None:
    spec = tiny_llama_spec()
    spec.metadata["general.alignment"] = 48
    assert "general.alignment" in _error(write_gguf(tmp_path / "a.gguf", spec))


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes_after_magic(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    body = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 3, 16, 200, 5000])))
    prefixes = [b"GGUF", b"GGUF" + struct.pack("<I", 3),
                b"GGUF" + struct.pack("<IQQ", 3, rng.randrange(4), rng.randrange(1, 6))]
    path = tmp_path / "random.gguf"
    for prefix in prefixes:
        path.write_bytes(prefix + body)
        _error(path)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), cut=st.integers(0, 4000), flip=st.integers(0, 4000))
def test_mangled_files_never_crash(tmp_path: Path, data: bytes, cut: int, flip: int) -> None:
    """Real headers with bytes flipped or cut, or random tails: a header or ModelFileError."""
    good = bytearray(gguf_bytes(tiny_llama_spec(vocab=20)))
    good[flip % len(good)] ^= 0xFF
    candidate = bytes(good[: max(4, len(good) - cut)]) + data
    path = tmp_path / "mangled.gguf"
    path.write_bytes(candidate)
    try:
        read_gguf(path)
    except ModelFileError as exc:
        assert "\n" not in exc.message


def test_check_gguf_is_the_same_check(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    assert check_gguf(path) == read_gguf(path)
    path.write_bytes(b"nope")
    with pytest.raises(ModelFileError):
        check_gguf(path)


def test_a_100mb_file_with_a_big_vocabulary_keeps_only_the_header(tmp_path: Path) -> None:
    """Only the header is parsed: the vocabulary is kept as its length, tensor data unread.

    (Speed is measured by scripts/bench, not timed here: timings flake on a shared machine.)
    """
    spec = tiny_llama_spec(vocab=50_000)
    spec.tensors.append(Tensor("big.weight", (1024, 24_000), 0))  # ~98 MB of F32
    path = write_sparse_gguf(tmp_path / "big.gguf", spec)
    assert path.stat().st_size > 98_000_000
    header = read_gguf(path)
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, GGUFArray) and tokens.length == 50_000
    assert header.vocab_size == 50_000
    assert header.data_offset < 2_000_000 < header.file_size
