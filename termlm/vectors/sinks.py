"""Where ``termlm embed`` puts vectors: a collection, JSONL lines, or a .npy matrix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from termlm.engine.embedding import Embedded
from termlm.errors import TermlmError
from termlm.output import notice
from termlm.records.types import Record, error_record

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from termlm.records.resume import DoneSet
    from termlm.records.writers import RecordWriter
    from termlm.vectors.store import Store

DIGITS = 7  # decimals kept in JSON: float32 holds about 7 significant digits


def json_vector(vector: npt.NDArray[np.float32]) -> list[float]:
    return [round(float(x), DIGITS) for x in vector]


class CollectionSink:
    """Into a named collection; an id already there with the same text is skipped."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self._known = store.hashes(name)
        self._seen: set[str] = set()

    def refuse(self, record: Record) -> str | None:
        """A second record with an id already seen this run: a collection holds one
        vector per id, and the first record keeps it (so a rerun changes nothing)."""
        if record.id in self._seen:
            return (f"duplicate id {record.id!r}: collection {self.name!r} keeps one vector "
                    "per id, the first record's")
        self._seen.add(record.id)
        return None

    def unchanged(self, record_id: str, digest: str) -> bool:
        return self._known.get(record_id) == digest

    def write(self, done: list[tuple[Record, str, Embedded]]) -> None:
        from termlm.vectors.store import Item

        self.store.put(self.name, [Item(record.id, digest, record.text or "", result.chunks,
                                        result.vector) for record, digest, result in done])
        for record, digest, _ in done:
            self._known[record.id] = digest

    def fail(self, record: Record, message: str) -> None:
        notice(f"warning: {record.id}: {message}")


class JsonlSink:
    """``{"id": ..., "embedding": [...], "chunks": n}`` per record (an error: ``error``)."""

    def __init__(self, writer: RecordWriter, done: DoneSet | None = None) -> None:
        self.writer = writer
        self.done = done

    def refuse(self, record: Record) -> str | None:
        return None

    def unchanged(self, record_id: str, digest: str) -> bool:
        return self.done is not None and self.done.is_done(record_id)

    def write(self, done: list[tuple[Record, str, Embedded]]) -> None:
        for record, _, result in done:
            out: dict[str, Any] = {"id": record.id, "embedding": json_vector(result.vector),
                                   "chunks": result.chunks}
            if result.truncated:
                out["truncated"] = True
            self.writer.write(out)

    def fail(self, record: Record, message: str) -> None:
        self.writer.write(error_record(record, message))


class NpySink:
    """One float32 matrix, rows in input order, written when the run ends; the ids go
    beside it (``FILE.ids.txt``, one per line) so that rows can be matched to records."""

    def __init__(self, path: Path, dims: int) -> None:
        self.path = path
        self.dims = dims
        self.rows: list[npt.NDArray[np.float32]] = []
        self.ids: list[str] = []

    def refuse(self, record: Record) -> str | None:
        if "\n" in record.id or "\r" in record.id:  # FILE.ids.txt has one id per line
            return f"an id with a line break cannot go in {ids_path(self.path)} (one per line)"
        return None

    def unchanged(self, record_id: str, digest: str) -> bool:
        return False

    def write(self, done: list[tuple[Record, str, Embedded]]) -> None:
        for record, _, result in done:
            self.ids.append(record.id)
            self.rows.append(result.vector)

    def fail(self, record: Record, message: str) -> None:
        notice(f"warning: {record.id}: {message} (not in {self.path})")

    def finish(self) -> None:
        import os
        import tempfile

        import numpy as np

        from termlm.fileio import write_atomic

        matrix = np.stack(self.rows) if self.rows else np.zeros((0, self.dims), np.float32)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.save(handle, matrix.astype(np.float32), allow_pickle=False)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            write_atomic(ids_path(self.path), "".join(f"{i}\n" for i in self.ids))
        except OSError as exc:
            raise TermlmError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def ids_path(path: Path) -> Path:
    return path.with_name(path.name + ".ids.txt")
