"""Convert a BERT sentence-transformers checkpoint (safetensors) to GGUF, without torch.

What llama.cpp's own ``convert_hf_to_gguf.py`` writes for a ``BertModel``, written here
with ggml's ``gguf`` library (its writer, its Hugging Face to GGUF tensor-name map and its
special-token reader): architecture ``bert``, the hyperparameters from ``config.json``,
non-causal attention, the pooling from the sentence-transformers ``Pooling`` module, and a
WordPiece vocabulary (``tokenizer.ggml.model = bert``) in llama.cpp's "phantom space" form.

Tensor types follow llama.cpp's default (``--outtype f16``): 2-D weight matrices become
float16 (half the size; llama.cpp computes with them in f16 anyway), while 1-D tensors
(biases, norms), the position embeddings and the token-type embeddings stay float32, as
llama.cpp keeps them (its kernels for those expect f32).

The output is deterministic: the same inputs give the same bytes (tensors in name order,
metadata in a fixed order, nothing from the clock or the machine), so the catalog pins its
sha256. The file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from termlm.errors import ModelFileError

if TYPE_CHECKING:
    import gguf
    import numpy as np
    import numpy.typing as npt

_POOLING = {"mean": 1, "cls": 2, "last": 3}  # gguf.PoolingType
_POOLING_MODES = (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                  ("pooling_mode_lasttoken", "last"))
_POOLING_MODULE = "sentence_transformers.models.Pooling"
_HPARAMS = ("num_hidden_layers", "max_position_embeddings", "hidden_size", "intermediate_size",
            "num_attention_heads", "vocab_size")
_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_SKIPPED = ("embeddings.position_ids", "pooler.", "cls.")  # not used to embed
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class BertInfo:
    """What the conversion found: the numbers llama.cpp will read back."""

    pooling: str
    dims: int
    layers: int
    context: int
    vocab: int
    params: int  # elements in the tensors written


def convert_bert(model_dir: Path, out: Path, *, name: str,
                 weights: str = "model.safetensors") -> BertInfo:
    """Write ``out`` (a GGUF named ``name``) from the checkpoint in ``model_dir``:
    ``config.json``, the ``weights`` (safetensors), ``vocab.txt``, ``tokenizer.json`` /
    ``tokenizer_config.json``, and the sentence-transformers ``modules.json`` with its
    pooling config.

    Raises ModelFileError, naming the file, for anything this converter cannot handle.
    """
    import gguf

    config = _json(model_dir / "config.json")
    if config.get("model_type") != "bert" or "BertModel" not in config.get("architectures", []):
        raise ModelFileError(f"{model_dir / 'config.json'}: not a BertModel checkpoint "
                             "(only BERT models can be converted)")
    hp = {key: _int(config, key, model_dir) for key in _HPARAMS}
    pooling = _pooling(model_dir)
    tokens, types = _vocab(model_dir, hp["vocab_size"])
    tensors = _tensors(model_dir / weights, hp["num_hidden_layers"])
    params = sum(math.prod(t.shape) for _, t in tensors)
    partial = out.with_name(f".{out.name}.converting")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_size_label(gguf.size_label(params, 0, 0, 0))
        writer.add_block_count(hp["num_hidden_layers"])
        writer.add_context_length(hp["max_position_embeddings"])
        writer.add_embedding_length(hp["hidden_size"])
        writer.add_feed_forward_length(hp["intermediate_size"])
        writer.add_head_count(hp["num_attention_heads"])
        writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType(_POOLING[pooling]))
        _add_vocab(writer, model_dir, tokens, types, int(config.get("type_vocab_size", 1)))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, data in tensors:
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, out)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return BertInfo(pooling=pooling, dims=hp["hidden_size"], layers=hp["num_hidden_layers"],
                    context=hp["max_position_embeddings"], vocab=len(tokens), params=params)


def _add_vocab(writer: gguf.GGUFWriter, model_dir: Path, tokens: list[str], types: list[int],
               type_count: int) -> None:
    import gguf

    writer.add_token_type_count(type_count)  # sentence A / B embeddings
    writer.add_tokenizer_model("bert")  # WordPiece
    # the name llama.cpp's converter gives bge-small-en-v1.5's tokenizer, BERT's uncased
    # WordPiece like this one; llama.cpp's WordPiece tokenizer does not read it
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # special tokens and add_bos/eos from tokenizer.json and tokenizer_config.json, read by
    # gguf's own SpecialVocab; asked only for the kinds this writer has keys for (a CLS
    # token is written as the BOS token, as llama.cpp's converter does)
    kinds = [k for k in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
             if hasattr(writer, f"add_{k}_token_id")]
    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens), special_token_types=kinds)
    special.add_to_gguf(writer, quiet=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path.name} is missing from {path.parent}") from None
    except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise ModelFileError(f"cannot read {path}: {exc}") from None


def _json(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return data


def _int(config: dict[str, Any], key: str, model_dir: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelFileError(f"{model_dir / 'config.json'}: {key} must be a positive integer")
    return value


def _pooling(model_dir: Path) -> str:
    """The pooling of the sentence-transformers Pooling module (as llama.cpp reads it)."""
    modules = _read_json(model_dir / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and module.get("type") == _POOLING_MODULE:
            config = _json(model_dir / str(module.get("path", "")) / "config.json")
            for key, pooling in _POOLING_MODES:
                if config.get(key) is True:
                    return pooling
            raise ModelFileError(f"{model_dir}: only mean, cls and last pooling are supported")
    raise ModelFileError(f"{model_dir}: no sentence-transformers Pooling module (modules.json)")


def _vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens from ``vocab.txt`` in llama.cpp's form: special (control) tokens as they are,
    a ``##`` continuation without its ``##``, any other word piece after a U+2581."""
    import gguf

    path = model_dir / "vocab.txt"
    try:
        words = path.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from None
    if words and words[-1] == "":
        words.pop()
    if not words or len(words) > vocab_size:
        raise ModelFileError(f"{path}: {len(words)} tokens for a vocabulary of {vocab_size}")
    control = _special_tokens(model_dir)
    tokens: list[str] = []
    types: list[int] = []
    for word in (w.rstrip("\r") for w in words):
        if word in control:
            tokens.append(word)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(word[2:] if word.startswith("##") else "\u2581" + word)
            types.append(gguf.TokenType.NORMAL)
    for i in range(len(words), vocab_size):  # rows the embedding has and the vocab lacks
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.USER_DEFINED)
    return tokens, types


def _special_tokens(model_dir: Path) -> set[str]:
    found: set[str] = set()
    if (model_dir / "tokenizer.json").is_file():
        added = _json(model_dir / "tokenizer.json").get("added_tokens", [])
        found |= {t["content"] for t in added if isinstance(t, dict) and t.get("special")
                  and isinstance(t.get("content"), str)}
    if (model_dir / "special_tokens_map.json").is_file():
        for value in _json(model_dir / "special_tokens_map.json").values():
            content = value.get("content") if isinstance(value, dict) else value
            if isinstance(content, str):
                found.add(content)
    if not found:
        raise ModelFileError(f"{model_dir}: no special tokens (tokenizer.json or "
                             "special_tokens_map.json)")
    return found


def _tensors(path: Path, layers: int) -> list[tuple[str, npt.NDArray[Any]]]:
    """The GGUF tensors, in the checkpoint's name order (as llama.cpp's converter)."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    f32_always = {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".weight",
                  gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES] + ".weight"}
    header, data = _safetensors(path)
    out: list[tuple[str, npt.NDArray[Any]]] = []
    for hf_name in sorted(header):
        name = _hf_name(hf_name)
        if hf_name == "__metadata__" or name.startswith(_SKIPPED):
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelFileError(f"{path}: cannot map tensor {hf_name!r} to GGUF "
                                 "(not a BERT checkpoint?)")
        tensor = _tensor_view(path, data, hf_name, header[hf_name])
        keep_f32 = (tensor.ndim <= 1 or gguf_name.endswith("_norm.weight")
                    or not gguf_name.endswith(".weight") or gguf_name in f32_always)
        out.append((gguf_name, _as_float(tensor, f32=keep_f32)))
    return out


def _hf_name(name: str) -> str:
    name = name.removeprefix("bert.")
    if name.endswith(".gamma"):
        return name[: -len(".gamma")] + ".weight"
    if name.endswith(".beta"):
        return name[: -len(".beta")] + ".bias"
    return name


def _as_float(data: npt.NDArray[Any], *, f32: bool) -> npt.NDArray[Any]:
    import numpy as np

    if data.dtype == np.uint16:  # bfloat16: the top half of a float32
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(data, dtype=np.float32 if f32 else np.float16)


def _safetensors(path: Path) -> tuple[dict[str, Any], npt.NDArray[np.uint8]]:
    """A safetensors file (8-byte header length, a JSON header, the data): its header,
    and its data memory-mapped."""
    import numpy as np

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n <= 0 or n > min(size - 8, _MAX_HEADER):
                raise ModelFileError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ModelFileError(f"{path}: not a safetensors file")
        return header, np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise ModelFileError(f"cannot read {path}: {exc}") from None


def _tensor_view(path: Path, data: npt.NDArray[np.uint8], name: str, info: Any
                 ) -> npt.NDArray[Any]:
    """One tensor of the mapped data, its range and size checked against the file."""
    try:
        dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
    except (TypeError, KeyError, ValueError):
        raise ModelFileError(f"{path}: bad entry for tensor {name!r}") from None
    numpy_type = _DTYPES.get(dtype)
    if numpy_type is None:
        raise ModelFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    itemsize = int(numpy_type[-1])
    if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * itemsize:
        raise ModelFileError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
    return data[begin:end].view(numpy_type).reshape(shape)
