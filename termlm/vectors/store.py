"""Named collections of embeddings in one SQLite file (``data_dir()/vectors.sqlite``).

Each row holds a record's id, its text, the sha256 of model + text (so an
unchanged record is never embedded again), how many pieces it was embedded in,
and its unit vector as float32 bytes. A collection remembers the model (and its
dimensions) it was made with: adding to it with another model is an error, as
their vectors do not compare. Writes are one transaction per batch, so Ctrl-C
loses at most the batch in flight and never leaves half a row.

Search is exact: every vector is loaded once per run into one numpy matrix and
a query is one matrix-vector product (about 20 ms at 100,000 x 384 on one core).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from termlm import paths
from termlm.errors import TermlmError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

SCHEMA_VERSION = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dims INTEGER NOT NULL,
    pooling TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0  -- new and random at every change: the cache's key
);
CREATE TABLE IF NOT EXISTS items (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    hash TEXT NOT NULL,
    text TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (collection, id)
);
"""


def default_path() -> Path:
    return paths.data_dir() / "vectors.sqlite"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a collection name",
                         hint="use letters, digits, '.', '_' and '-' (at most 64), starting "
                         "with a letter or digit")
    return name


def damaged(path: Path, exc: sqlite3.DatabaseError) -> TermlmError:
    return TermlmError(f"cannot read the collections file {path}: {exc}",
                       hint=f"move it aside (mv {path} {path}.bad) to start a new one")


def _stamp() -> int:
    """A new value for a collection's ``version``: random, not a counter, so that a
    cache made for another file (moved aside, restored from a backup) never matches."""
    import secrets

    return secrets.randbits(62)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str
    dims: int
    pooling: str | None
    count: int
    created: str
    updated: str


@dataclass(frozen=True)
class Item:
    id: str
    hash: str
    text: str
    chunks: int
    vector: npt.NDArray[np.float32]


class Store:
    """The collections file; ``with Store.open() as store: ...``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path | None = None, *, create: bool = True) -> Store:
        path = path or default_path()
        if not create and not path.exists():
            raise UsageError("there are no collections yet",
                             hint="termlm embed FILES -c NAME makes one")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                conn.close()
                raise TermlmError(f"{path} was written by a newer termlm (schema {version})")
            if version < SCHEMA_VERSION:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise damaged(path, exc) from None
        except OSError as exc:
            raise TermlmError(f"cannot open the collections file {path}: "
                              f"{exc.strerror or exc}") from None
        return cls(conn, path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        self.close()
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
            raise damaged(self.path, exc) from None  # a file that opened, damaged further in

    def close(self) -> None:
        self.conn.close()

    # collections

    def info(self, name: str) -> CollectionInfo | None:
        row = self.conn.execute(
            "SELECT c.name, c.model, c.dims, c.pooling, "
            "(SELECT count(*) FROM items i WHERE i.collection = c.name), c.created, c.updated "
            "FROM collections c WHERE c.name = ?", (name,)).fetchone()
        return CollectionInfo(*row) if row else None

    def listing(self) -> list[CollectionInfo]:
        rows = self.conn.execute(
            "SELECT c.name, c.model, c.dims, c.pooling, "
            "(SELECT count(*) FROM items i WHERE i.collection = c.name), c.created, c.updated "
            "FROM collections c ORDER BY c.name").fetchall()
        return [CollectionInfo(*row) for row in rows]

    def require(self, name: str) -> CollectionInfo:
        found = self.info(check_name(name))
        if found is None:
            known = ", ".join(c.name for c in self.listing()) or "none yet"
            raise UsageError(f"no collection named {name!r} (collections: {known})",
                             hint="termlm embed --list shows them")
        return found

    def ensure(self, name: str, model: str, dims: int, pooling: str | None) -> CollectionInfo:
        """The collection, made now if new; an error if it was made with another model."""
        check_name(name)
        found = self.info(name)
        if found is None:
            stamp = _now()
            self.conn.execute("INSERT INTO collections VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (name, model, dims, pooling, stamp, stamp, _stamp()))
            return self.require(name)
        if found.pooling is not None and pooling is not None and found.pooling != pooling:
            raise UsageError(f"collection {name!r} was embedded with {found.pooling} pooling, "
                             f"not {pooling}: their vectors do not compare",
                             hint=f"use --pooling {found.pooling}, another collection, or "
                             f"termlm embed --drop {name} first")
        if found.model != model or found.dims != dims:
            raise UsageError(f"collection {name!r} was embedded with {found.model} "
                             f"({found.dims} dimensions), not {model} ({dims}): their vectors "
                             "do not compare",
                             hint=f"use -m {found.model}, another collection, or "
                             f"termlm embed --drop {name} first")
        return found

    def drop(self, name: str) -> int:
        """Delete a collection; how many items it had."""
        found = self.require(name)
        with self._transaction():
            self.conn.execute("DELETE FROM items WHERE collection = ?", (name,))
            self.conn.execute("DELETE FROM collections WHERE name = ?", (name,))
        for stale in self._cache_dir().glob(f"{name}+*"):
            stale.unlink(missing_ok=True)
        return found.count

    # items

    def hashes(self, name: str) -> dict[str, str]:
        return dict(self.conn.execute("SELECT id, hash FROM items WHERE collection = ?",
                                      (name,)).fetchall())

    def put(self, name: str, items: Iterable[Item]) -> int:
        """Add or replace items, all in one transaction."""
        rows = [(name, item.id, item.hash, item.text, item.chunks,
                 item.vector.astype("<f4").tobytes()) for item in items]
        if not rows:
            return 0
        with self._transaction():
            self.conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?)",
                                  rows)
            self.conn.execute("UPDATE collections SET updated = ?, version = ? "
                              "WHERE name = ?", (_now(), _stamp(), name))
        return len(rows)

    def items(self, name: str, ids: Sequence[str] | None = None) -> Iterator[Item]:
        """Items in insertion order (or those of ``ids``, in that order)."""
        import numpy as np

        info = self.require(name)
        if ids is None:
            cursor = self.conn.execute("SELECT id, hash, text, chunks, vector FROM items "
                                       "WHERE collection = ? ORDER BY rowid", (name,))
            for row in cursor:
                yield Item(row[0], row[1], row[2], row[3], _vector(row[4], info.dims, np))
            return
        for item_id in ids:
            row = self.conn.execute("SELECT id, hash, text, chunks, vector FROM items "
                                    "WHERE collection = ? AND id = ?", (name, item_id)
                                    ).fetchone()
            if row is not None:
                yield Item(row[0], row[1], row[2], row[3], _vector(row[4], info.dims, np))

    def matrix(self, name: str) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Every id and one (n, dims) float32 matrix of the vectors.

        Read from a cache beside the database (``vectors.cache/NAME+VERSION.npy`` and its
        ids; VERSION is random and new at every change, so a cache never matches another
        file's collection), made from the rows the first time and again after any change:
        at 100,000 vectors, mapping it takes milliseconds where reading the rows takes a
        second.
        The matrix may be a read-only memory map: copy it before changing it."""
        info = self.require(name)
        version = self._version(name)
        cached = self._cached(name, version, info.dims)
        if cached is not None:
            return cached
        ids, matrix = self._matrix_from_rows(name, info.dims)
        self._write_cache(name, version, ids, matrix)
        return ids, matrix

    def _version(self, name: str) -> int:
        row = self.conn.execute("SELECT version FROM collections WHERE name = ?",
                                (name,)).fetchone()
        return int(row[0]) if row else 0

    def _cache_dir(self) -> Path:
        return self.path.with_name(self.path.stem + ".cache")

    def _cached(self, name: str, version: int, dims: int
                ) -> tuple[list[str], npt.NDArray[np.float32]] | None:
        import json

        import numpy as np

        base = self._cache_dir() / f"{name}+{version}"
        try:
            ids = json.loads(Path(f"{base}.ids.json").read_text(encoding="utf-8"))
            matrix = np.load(f"{base}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if not isinstance(ids, list) or matrix.dtype != np.float32 or \
                matrix.shape != (len(ids), dims):
            return None
        return [str(i) for i in ids], matrix

    def _write_cache(self, name: str, version: int, ids: list[str],
                     matrix: npt.NDArray[np.float32]) -> None:
        """Best effort: a cache that cannot be written only costs speed."""
        import json
        import os
        import tempfile

        import numpy as np

        folder = self._cache_dir()
        base = folder / f"{name}+{version}"  # '+' is in no collection name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(f"{name}+*"):
                stale.unlink(missing_ok=True)
            for suffix, write in ((".ids.json", lambda f: f.write(json.dumps(ids).encode())),
                                  (".npy", lambda f: np.save(f, matrix, allow_pickle=False))):
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
                with os.fdopen(fd, "wb") as handle:
                    write(handle)
                os.replace(tmp, f"{base}{suffix}")
        except OSError:
            return

    def _matrix_from_rows(self, name: str, dims: int
                          ) -> tuple[list[str], npt.NDArray[np.float32]]:
        import numpy as np

        ids: list[str] = []
        blobs: list[bytes] = []
        for item_id, blob in self.conn.execute(
                "SELECT id, vector FROM items WHERE collection = ? ORDER BY rowid", (name,)):
            ids.append(item_id)
            blobs.append(blob)
        if any(len(b) != 4 * dims for b in blobs):
            raise TermlmError(f"collection {name!r} has a damaged vector")
        matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), dims)
        return ids, matrix.astype(np.float32, copy=False)

    def texts(self, name: str, ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for item_id in ids:
            row = self.conn.execute("SELECT text FROM items WHERE collection = ? AND id = ?",
                                    (name, item_id)).fetchone()
            if row is not None:
                out[item_id] = row[0]
        return out

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)


def _vector(blob: bytes, dims: int, np: object) -> npt.NDArray[np.float32]:
    import numpy

    if len(blob) != 4 * dims:
        raise TermlmError("a stored vector is damaged (wrong size)")
    return numpy.frombuffer(blob, dtype="<f4").astype(numpy.float32)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
