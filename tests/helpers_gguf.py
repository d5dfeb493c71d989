"""Builders for tiny synthetic GGUF files and wheels that carry them (test fixtures)."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ggml type id -> (block size, bytes per block); a few, enough for fixtures
_TYPE_SIZES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 12: (256, 144)}

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL = 0, 1, 2, 3, 4, 5, 6, 7
STRING, ARRAY, UINT64, INT64, FLOAT64 = 8, 9, 10, 11, 12
_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
            FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}


@dataclass
class Typed:
    """A metadata value with an explicit GGUF type (arrays: ``elem`` is the element type)."""

    type_id: int
    value: Any
    elem: int | None = None


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    type_id: int = 0  # F32

    @property
    def n_bytes(self) -> int:
        block, size = _TYPE_SIZES[self.type_id]
        n = 1
        for dim in self.shape:
            n *= dim
        return n // block * size


@dataclass
class GGUFSpec:
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)
    version: int = 3
    alignment: int = 32


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _infer(value: Any) -> Typed:
    if isinstance(value, Typed):
        return value
    if isinstance(value, bool):
        return Typed(BOOL, value)
    if isinstance(value, int):
        return Typed(UINT32 if 0 <= value < 2**32 else INT64, value)
    if isinstance(value, float):
        return Typed(FLOAT32, value)
    if isinstance(value, str):
        return Typed(STRING, value)
    if isinstance(value, list):
        elem = _infer(value[0]).type_id if value else INT32
        return Typed(ARRAY, value, elem)
    raise TypeError(f"no GGUF type for {value!r}")


def _payload(typed: Typed) -> bytes:
    if typed.type_id == STRING:
        return _string(typed.value)
    if typed.type_id == ARRAY:
        elem = typed.elem if typed.elem is not None else INT32
        out = struct.pack("<IQ", elem, len(typed.value))
        for item in typed.value:
            inner = item if isinstance(item, Typed) else Typed(elem, item,
                                                              _infer(item).elem)
            out += _payload(inner)
        return out
    return struct.pack(_FORMATS[typed.type_id], typed.value)


def gguf_bytes(spec: GGUFSpec) -> bytes:
    """A complete GGUF file: header, metadata, tensor infos, aligned tensor data."""
    header, offsets = _header(spec)
    data = bytearray()
    for tensor, start in zip(spec.tensors, offsets, strict=True):
        data += b"\0" * (start - len(data))
        data += bytes(range(256)) * (tensor.n_bytes // 256) + b"\x07" * (tensor.n_bytes % 256)
    return header + bytes(data)


def write_sparse_gguf(path: Path, spec: GGUFSpec) -> Path:
    """Write the header only, then extend the file (sparse) to its full size."""
    header, offsets = _header(spec)
    end = max((o + t.n_bytes for o, t in zip(offsets, spec.tensors, strict=True)), default=0)
    path.write_bytes(header)
    os.truncate(path, len(header) + end)
    return path


def _header(spec: GGUFSpec) -> tuple[bytes, list[int]]:
    metadata = dict(spec.metadata)
    if spec.alignment != 32:
        metadata.setdefault("general.alignment", Typed(UINT32, spec.alignment))
    out = b"GGUF" + struct.pack("<IQQ", spec.version, len(spec.tensors), len(metadata))
    for key, value in metadata.items():
        typed = _infer(value)
        out += _string(key) + struct.pack("<I", typed.type_id) + _payload(typed)
    offset = 0
    offsets = []
    for tensor in spec.tensors:
        offsets.append(offset)
        out += _string(tensor.name) + struct.pack("<I", len(tensor.shape))
        out += b"".join(struct.pack("<Q", d) for d in tensor.shape)
        out += struct.pack("<IQ", tensor.type_id, offset)
        offset += -(-tensor.n_bytes // spec.alignment) * spec.alignment
    out += b"\0" * (-len(out) % spec.alignment)
    return out, offsets


def tiny_llama_spec(*, chat_template: str | None = "{{ messages }}", vocab: int = 300,
                    name: str = "Tiny Llama") -> GGUFSpec:
    """A llama-shaped fixture: 2 layers, 4 heads, 2 kv heads, embedding 64, Q4_1."""
    metadata: dict[str, Any] = {
        "general.architecture": "llama",
        "general.name": name,
        "general.file_type": Typed(UINT32, 3),
        "llama.context_length": Typed(UINT32, 2048),
        "llama.block_count": Typed(UINT32, 2),
        "llama.embedding_length": Typed(UINT32, 64),
        "llama.attention.head_count": Typed(UINT32, 4),
        "llama.attention.head_count_kv": Typed(UINT32, 2),
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": Typed(ARRAY, [f"tok{i}" for i in range(vocab)], STRING),
        "tokenizer.ggml.token_type": Typed(ARRAY, [1] * vocab, INT32),
        "tokenizer.ggml.add_bos_token": False,
    }
    if chat_template is not None:
        metadata["tokenizer.chat_template"] = chat_template
    tensors = [Tensor("token_embd.weight", (64, vocab), 3)]
    for layer in range(2):
        tensors += [
            Tensor(f"blk.{layer}.attn_norm.weight", (64,), 0),
            Tensor(f"blk.{layer}.attn_q.weight", (64, 64), 3),
            Tensor(f"blk.{layer}.ffn_up.weight", (64, 128), 8),
        ]
    tensors.append(Tensor("output_norm.weight", (64,), 0))
    return GGUFSpec(metadata, tensors)


def write_gguf(path: Path, spec: GGUFSpec | None = None) -> Path:
    path.write_bytes(gguf_bytes(spec or tiny_llama_spec()))
    return path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel(directory: Path, name: str, version: str,
                members: Sequence[tuple[str, bytes]]) -> Path:
    """A real, installable-looking wheel: the given members plus dist-info metadata."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files: list[tuple[str, bytes]] = [(f"{dist}/__init__.py", b"")]
    files += list(members)
    files.append((f"{info}/METADATA",
                  f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: termlm-tests\n"
                  b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files)
    record += f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in files:
            zf.writestr(member, data)
    return wheel
