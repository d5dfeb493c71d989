"""A pure-Python GGUF header reader: metadata, tensor infos, completeness check.

It reads only the header (it seeks, never touching tensor data), so it is fast
enough to run before every model load. Anything wrong with the file becomes a
one-line :class:`~termlm.errors.ModelFileError` naming it, so llama.cpp never
sees a bad file.
"""

from __future__ import annotations

import collections
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from termlm.errors import InputError, ModelFileError
from termlm.inputs import NotRegular, open_input

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KEPT_ARRAY = 256  # longer arrays (tokenizer vocabularies) keep only their length
MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 8
_MAX_COUNT = 1 << 40  # a cap on any count, whatever the file size

# ggml tensor types (ggml.h numbering): id -> (name, block size, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 31: ("Q4_0_4_4", 32, 18), 32: ("Q4_0_4_8", 32, 18),
    33: ("Q4_0_8_8", 32, 18), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    36: ("IQ4_NL_4_4", 32, 18), 37: ("IQ4_NL_4_8", 32, 18), 38: ("IQ4_NL_8_8", 32, 18),
    39: ("MXFP4", 32, 17),
}

# general.file_type (llama_ftype) -> the name people use for the quantization
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0",
    9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS",
    21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S",
    27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    33: "Q4_0_4_4", 34: "Q4_0_4_8", 35: "Q4_0_8_8", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}

# GGUF metadata value types: id -> (name, struct format or None for string/array)
_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
    4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<?"),
    8: ("string", None), 9: ("array", None), 10: ("uint64", "<Q"), 11: ("int64", "<q"),
    12: ("float64", "<d"),
}
_STRING, _ARRAY = 8, 9
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array too long to keep (e.g. a tokenizer vocabulary): its length only."""

    element_type: str
    length: int

    def to_dict(self) -> dict[str, Any]:
        return {"array_of": self.element_type, "length": self.length}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # relative to the start of the tensor data
    n_elements: int
    n_bytes: int | None  # None for a tensor type this reader does not know

    @property
    def type_name(self) -> str:
        known = GGML_TYPES.get(self.type_id)
        return known[0] if known else f"type{self.type_id}"


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    file_size: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    def _arch_key(self, suffix: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}")

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_types(self) -> dict[str, int]:
        """Tensor type name -> how many tensors have it."""
        return dict(collections.Counter(t.type_name for t in self.tensors).most_common())

    @property
    def quantization(self) -> str | None:
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int) and not isinstance(file_type, bool):
            return FILE_TYPES.get(file_type, f"file type {file_type}")
        weights: collections.Counter[str] = collections.Counter()
        for tensor in self.tensors:
            weights[tensor.type_name] += tensor.n_elements
        return weights.most_common(1)[0][0] if weights else None

    @property
    def context_length(self) -> int | None:
        return _as_int(self._arch_key("context_length"))

    @property
    def block_count(self) -> int | None:
        return _as_int(self._arch_key("block_count"))

    @property
    def head_count(self) -> int | None:
        return _as_int(self._arch_key("attention.head_count"))

    @property
    def head_count_kv(self) -> int | None:
        return _as_int(self._arch_key("attention.head_count_kv"))

    @property
    def embedding_length(self) -> int | None:
        return _as_int(self._arch_key("embedding_length"))

    @property
    def feed_forward_length(self) -> int | None:
        return _as_int(self._arch_key("feed_forward_length"))

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes or 0 for t in self.tensors)

    @property
    def bits_per_weight(self) -> float | None:
        """Average storage bits per parameter over every tensor (4.5 for pure Q4_0)."""
        count = self.parameter_count
        return self.tensor_bytes * 8 / count if count else None

    @property
    def vocab_size(self) -> int | None:
        explicit = _as_int(self._arch_key("vocab_size"))
        if explicit is not None:
            return explicit
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, GGUFArray):
            return tokens.length
        return len(tokens) if isinstance(tokens, list) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: the derived fields, then all metadata."""
        return {
            "path": str(self.path),
            "file_size": self.file_size,
            "gguf_version": self.version,
            "architecture": self.architecture,
            "name": self.name,
            "parameter_count": self.parameter_count,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "block_count": self.block_count,
            "head_count": self.head_count,
            "head_count_kv": self.head_count_kv,
            "embedding_length": self.embedding_length,
            "feed_forward_length": self.feed_forward_length,
            "bits_per_weight": None if self.bits_per_weight is None
            else round(self.bits_per_weight, 3),
            "vocab_size": self.vocab_size,
            "has_chat_template": self.has_chat_template,
            "tensor_count": self.tensor_count,
            "tensor_types": self.tensor_types,
            "metadata": {k: _jsonable(v) for k, v in sorted(self.metadata.items())},
        }


def _as_int(value: Any) -> int | None:
    """An int metadata value; for per-layer arrays, the largest entry."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        return max(ints) if ints else None
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, GGUFArray):
        return value.to_dict()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):  # not valid JSON
        return None
    return value


class _Bad(Exception):
    """A problem with the file's contents; becomes a ModelFileError naming the file."""


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Bad(f"truncated header while reading {what}")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def count(self, what: str, min_item_bytes: int) -> int:
        """A count that must fit in what is left of the file."""
        value = self.u64(what)
        remaining = self.size - self.pos
        if value > _MAX_COUNT or value * min_item_bytes > remaining:
            raise _Bad(f"implausible {what} {value} (only {remaining} bytes left in the file)")
        return value

    def string(self, what: str) -> str:
        length = self.u64(f"the length of {what}")
        if length > self.size - self.pos:
            raise _Bad(f"implausible length {length} for {what} (the file is {self.size} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, n: int, what: str) -> None:
        """Step over ``n`` strings without decoding them (the hot loop for vocabularies)."""
        buf, pos, last, unpack = self.buf, self.pos, self.size - 8, _U64.unpack_from
        for _ in range(n):
            if pos > last:
                raise _Bad(f"truncated header while reading {what}")
            pos += 8 + unpack(buf, pos)[0]
        if pos > self.size:
            raise _Bad(f"truncated header while reading {what}")
        self.pos = pos

    def value(self, type_id: int, what: str, depth: int = 0) -> Any:
        spec = _VALUE_TYPES.get(type_id)
        if spec is None:
            raise _Bad(f"unknown metadata value type {type_id} for {what}")
        fmt = spec[1]
        if fmt is not None:
            width = struct.calcsize(fmt)
            self.need(width, what)
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
            self.pos += width
            return value
        if type_id == _STRING:
            return self.string(what)
        return self.array(what, depth)

    def array(self, what: str, depth: int) -> Any:
        if depth >= _MAX_NESTING:
            raise _Bad(f"arrays nested too deeply in {what}")
        elem_type = self.u32(f"the element type of {what}")
        spec = _VALUE_TYPES.get(elem_type)
        if spec is None:
            raise _Bad(f"unknown array element type {elem_type} in {what}")
        width = struct.calcsize(spec[1]) if spec[1] else (8 if elem_type == _STRING else 12)
        n = self.count(f"element count of {what}", width)
        if n > MAX_KEPT_ARRAY:
            if spec[1] is not None:
                self.pos += n * width
            elif elem_type == _STRING:
                self.skip_strings(n, what)
            else:
                for _ in range(n):
                    self.array(what, depth + 1)
            return GGUFArray(spec[0], n)
        return [self.value(elem_type, what, depth + 1) for _ in range(n)]


def tensor_nbytes(type_id: int, shape: tuple[int, ...]) -> int | None:
    """Bytes a tensor of this type and shape takes; None for an unknown type."""
    known = GGML_TYPES.get(type_id)
    if known is None:
        return None
    _, block, type_size = known
    n = 1
    for dim in shape:
        n *= dim
    return n // block * type_size


def _parse(buf: memoryview, file_size: int) -> tuple[int, dict[str, Any], list[TensorInfo],
                                                          int, int]:
    cur = _Cursor(buf)
    cur.pos = 4
    version = cur.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        if version in (0x02000000, 0x03000000):
            raise _Bad("is a big-endian GGUF file, which is not supported")
        raise _Bad(f"unsupported GGUF version {version} (supported: 2 and 3)")
    n_tensors = cur.count("tensor count", 24)
    n_kv = cur.count("metadata count", 13)
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if key in metadata:
            raise _Bad(f"duplicate metadata key {key!r}")
        type_id = cur.u32(f"the type of {key!r}")
        metadata[key] = cur.value(type_id, repr(key))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
            or alignment & (alignment - 1)):
        raise _Bad(f"invalid general.alignment {alignment!r} (must be a power of two)")
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor #{i}")
        if name in names:
            raise _Bad(f"duplicate tensor {name!r}")
        names.add(name)
        n_dims = cur.u32(f"the dimensions of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(cur.u64(f"the shape of tensor {name!r}") for _ in range(n_dims))
        type_id = cur.u32(f"the type of tensor {name!r}")
        offset = cur.u64(f"the offset of tensor {name!r}")
        tensors.append(_tensor(name, shape, type_id, offset, alignment, file_size))
    data_offset = -(-cur.pos // alignment) * alignment
    return version, metadata, tensors, alignment, data_offset


def _tensor(name: str, shape: tuple[int, ...], type_id: int, offset: int, alignment: int,
            file_size: int) -> TensorInfo:
    n_elements = 1
    for dim in shape:
        n_elements *= dim
        if n_elements > file_size * 256:  # no type packs more than ~256 elements per byte
            raise _Bad(f"tensor {name!r} has an implausible shape {list(shape)}")
    known = GGML_TYPES.get(type_id)
    if known is not None and shape and shape[0] % known[1]:
        raise _Bad(f"tensor {name!r} row of {shape[0]} is not a multiple of the "
                   f"{known[0]} block size {known[1]}")
    if offset % alignment:
        raise _Bad(f"tensor {name!r} has a misaligned offset {offset}")
    return TensorInfo(name, shape, type_id, offset, n_elements, tensor_nbytes(type_id, shape))


def read_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read and check a GGUF file's header; raise ModelFileError if anything is wrong."""
    path = Path(path)
    try:
        fh = open_input(path)  # a regular file: a FIFO or a device never blocks the check
    except NotRegular as exc:  # a directory, a FIFO, a device: never handed to llama.cpp
        raise ModelFileError(f"{path} is {exc.kind}, not a GGUF file") from None
    except InputError as exc:
        if "no such file" in exc.message:
            raise ModelFileError(f"model file not found: {path}") from None
        raise ModelFileError(exc.message) from None
    try:
        with fh:
            file_size = os.fstat(fh.fileno()).st_size
            head = fh.read(4)
            if not head:
                raise ModelFileError(f"{path} is empty, not a GGUF file")
            if head != GGUF_MAGIC:
                raise ModelFileError(f"{path} is not a GGUF file (starts with {head!r})")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    version, metadata, tensors, alignment, data_offset = _parse(view, file_size)
                finally:
                    view.release()
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory, not a GGUF file") from None
    except _Bad as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except (OSError, ValueError) as exc:
        if path.is_dir():  # Windows reports a directory as PermissionError
            raise ModelFileError(f"{path} is a directory, not a GGUF file") from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ModelFileError(f"cannot read {path}: {reason}") from None
    _check_complete(path, file_size, data_offset, tensors)
    return GGUFHeader(path, version, file_size, metadata, tuple(tensors), alignment, data_offset)


def _check_complete(path: Path, file_size: int, data_offset: int,
                    tensors: list[TensorInfo]) -> None:
    expected = data_offset
    for tensor in tensors:
        expected = max(expected, data_offset + tensor.offset + (tensor.n_bytes or 0))
    if tensors and file_size < expected:
        raise ModelFileError(
            f"{path} is truncated: expected at least {expected} bytes, file has {file_size}",
            hint="delete it and pull or download it again",
        )


def check_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Check a file before handing it to llama.cpp (an alias of :func:`read_gguf`)."""
    return read_gguf(path)
