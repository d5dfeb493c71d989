"""From what the user typed (``-m NAME``) to a checked GGUF file on disk.

Order: a local alias from the settings, a catalog name, an ``hf:`` spec, then a
filesystem path. Catalog and ``hf:`` models are pulled on first use unless
offline mode is on. Whatever the route, the file's GGUF header is checked last,
so a bad file never reaches llama.cpp.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from termlm import paths
from termlm.config import Settings
from termlm.engine.types import TurnFormat
from termlm.errors import ModelMissing, ModelNotFound
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
