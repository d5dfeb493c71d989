"""From what the user typed (``-m NAME``) to a checked GGUF file on disk.

Order: a local alias from the settings, a catalog name, an ``hf:`` spec, then a
filesystem path. Catalog and ``hf:`` models are pulled on first use unless
offline mode is on. Whatever the route, the file's GGUF header is checked last,
so a bad file never reaches llama.cpp.

Chat and embedding models are not interchangeable: ``resolve_chat_model`` refuses an
embedding model and ``resolve_embedding_model`` a chat model, before anything is pulled
when the catalog knows the name, else from the GGUF header (an encoder architecture, or
a declared pooling type, makes an embedding model).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from termlm import paths
from termlm.config import Settings
from termlm.engine.types import TurnFormat
from termlm.errors import ModelMissing, ModelNotFound, UsageError
from termlm.models import catalog
from termlm.models.catalog import CatalogEntry, HfSource, LocalSource, parse_source
from termlm.models.gguf import GGUFHeader, check_gguf

Notify = Callable[[str], None]


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path
    entry: CatalogEntry | None
    turn_format: TurnFormat | None
    header: GGUFHeader  # read and checked: llama.cpp may open this file


@dataclass(frozen=True)
class ResolvedEmbedding:
    """An embedding model, checked, with what the embedder needs to use it."""

    name: str
    path: Path
    entry: CatalogEntry | None
    header: GGUFHeader
    pooling: str  # mean, cls or last
    dims: int  # the vector size
    context: int | None  # the most tokens it was trained on, when known
    query_prefix: str = ""
    document_prefix: str = ""


# llama.cpp architectures that only encode (their GGUFs have no use for chat)
_ENCODERS = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3",
                       "modern-bert", "neo-bert", "eurobert", "t5encoder"})
_POOLING_TYPES = {1: "mean", 2: "cls", 3: "last"}  # llama.cpp's enum llama_pooling_type


def stderr_notify(message: str) -> None:
    """The default progress sink: one line on stderr."""
    from termlm.output import notice

    notice(message)


def hf_local_path(source: HfSource) -> Path:
    """Where an ``hf:`` file lives once pulled: ``<models>/hf/<owner>/<repo>/<file>``."""
    return paths.models_dir() / "hf" / source.repo_id / source.filename


def local_path(entry: CatalogEntry) -> Path:
    """Where a catalog model's file lives (or will, once pulled), whatever its source."""
    first = entry.sources[0]
    if isinstance(first, LocalSource):
        return first.path
    return paths.models_dir() / entry.file


def is_pulled(entry: CatalogEntry) -> bool:
    """The file is there and has the catalog's size (the checksum is checked on pull)."""
    try:
        return local_path(entry).stat().st_size == entry.size
    except OSError:
        return False


def looks_like_path(spec: str) -> bool:
    return (os.sep in spec or (os.altsep is not None and os.altsep in spec)
            or spec.endswith(".gguf") or spec.startswith("~") or os.path.exists(spec))


def _may_pull(spec: str, settings: Settings, allow_pull: bool) -> None:
    hint = f"run: termlm models pull {spec}"
    if settings.offline:
        raise ModelMissing(f"model {spec!r} is not downloaded and offline mode is on", hint=hint)
    if not allow_pull:
        raise ModelMissing(f"model {spec!r} is not downloaded", hint=hint)


def resolve_model(spec: str, settings: Settings, *, allow_pull: bool = True,
                  notify: Notify | None = None) -> ResolvedModel:
    """Find (and, when allowed, pull) the model ``spec`` names; check its header."""
    from termlm.models.pull import pull

    spec = spec.strip()
    if not spec:
        raise ModelNotFound("no model given", hint="termlm models list")
    sink = notify or stderr_notify
    if spec in settings.models:
        path = Path(settings.models[spec]).expanduser()
        return ResolvedModel(spec, path, None, None, check_gguf(path))
    entry = catalog.get_entry(spec)
    if entry is not None:
        path = local_path(entry)
        if not isinstance(entry.sources[0], LocalSource) and not is_pulled(entry):
            _may_pull(spec, settings, allow_pull)
            path = pull(entry, notify=sink)
        return ResolvedModel(spec, path, entry, entry.turn_format, check_gguf(path))
    if spec.startswith("hf:"):
        source = parse_source(spec)
        assert isinstance(source, HfSource)
        path = hf_local_path(source)
        if not path.is_file():
            _may_pull(spec, settings, allow_pull)
            path = pull(spec, notify=sink)
        return ResolvedModel(spec, path, None, None, check_gguf(path))
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        return ResolvedModel(path.name, path, None, None, check_gguf(path))
    known = sorted(catalog.load_catalog()) + sorted(settings.models)
    raise ModelNotFound(f"unknown model {spec!r} (known: {', '.join(known)})",
                        hint="termlm models list")


def header_pooling(header: GGUFHeader) -> str | None:
    """The pooling a GGUF declares (``{arch}.pooling_type``): mean, cls, last, or None."""
    arch = header.architecture
    value = header.metadata.get(f"{arch}.pooling_type") if arch else None
    return _POOLING_TYPES.get(value) if isinstance(value, int) else None


def is_embedding_file(header: GGUFHeader) -> bool:
    return header.architecture in _ENCODERS or header_pooling(header) is not None


def _catalog_entry(spec: str, settings: Settings) -> CatalogEntry | None:
    spec = spec.strip()
    return None if spec in settings.models else catalog.get_entry(spec)


def _not_embedding(spec: str, why: str) -> UsageError:
    return UsageError(f"{spec!r} is a chat model{why}, not an embedding model",
                      hint="termlm models list --task embedding (or give --pooling to embed "
                           "with a generative model)")


def resolve_chat_model(spec: str, settings: Settings, *, allow_pull: bool = True,
                       notify: Notify | None = None) -> ResolvedModel:
    """:func:`resolve_model` for commands that generate text: refuses an embedding model."""
    entry = _catalog_entry(spec, settings)
    if entry is not None and entry.is_embedding:
        raise UsageError(f"{spec.strip()!r} is an embedding model; this command needs a chat "
                         "model", hint="termlm models list --task chat")
    model = resolve_model(spec, settings, allow_pull=allow_pull, notify=notify)
    if entry is None and is_embedding_file(model.header):
        raise UsageError(f"{spec.strip()!r} is an embedding model ({model.header.architecture})"
                         "; this command needs a chat model", hint="termlm models list --task chat")
    return model


def resolve_embedding_model(spec: str, settings: Settings, *, allow_pull: bool = True,
                            notify: Notify | None = None,
                            pooling: str | None = None) -> ResolvedEmbedding:
    """Find (and, when allowed, pull) the embedding model ``spec`` names (the default is
    ``catalog.default_embedding()``, pulled on first use like the chat default): its
    checked path, pooling, vector size, context and prompt prefixes. A catalog entry
    gives its own; an alias, ``hf:`` spec or path is read from its GGUF header.

    A chat model is refused unless ``pooling`` is given (``--pooling``: the user asks to
    embed with a generative model); ``pooling`` also overrides a declared one.
    """
    entry = _catalog_entry(spec, settings)
    if entry is not None and not entry.is_embedding and pooling is None:
        raise _not_embedding(spec.strip(), "")
    model = resolve_model(spec, settings, allow_pull=allow_pull, notify=notify)
    header = model.header
    if entry is not None and entry.embedding is not None:
        emb = entry.embedding
        return ResolvedEmbedding(model.name, model.path, entry, header, pooling or emb.pooling,
                                 header.embedding_length or emb.dims,
                                 entry.context or header.context_length,
                                 emb.query_prefix, emb.document_prefix)
    declared = pooling or header_pooling(header) or (
        "mean" if header.architecture in _ENCODERS else None)
    if declared is None or not header.embedding_length:
        raise _not_embedding(spec.strip(), f" ({header.architecture or 'unknown architecture'}"
                                           ", no pooling type in its GGUF)")
    return ResolvedEmbedding(model.name, model.path, entry, header, declared,
                             header.embedding_length, header.context_length)
