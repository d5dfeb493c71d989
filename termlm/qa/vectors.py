"""Chunk embeddings, stored in the QA index's own SQLite file beside the FTS5 table.

A vector belongs to a chunk's *text* (its sha256, ``chunks.hash``) and to the
embedding model that made it (``model``: name, pooling, dimensions and document
prefix), not to a row id: an unchanged chunk is never embedded again, even when
its file is re-chunked or another file holds the same text; a changed chunk has a
new hash, so it gets a new vector. Rows are kept per model, so switching
embedding models back and forth embeds each text once per model; vectors whose
text no chunk holds any more are deleted when the index is synced.

Only the chunks of the current run's scope are embedded, in batches, each batch
committed on its own: Ctrl-C while embedding keeps every batch already done, and
the next run embeds only the rest.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from termlm.engine.embedding import Embedder, EmbedInfo
    from termlm.qa.index import Index

    Matrix = npt.NDArray[np.float32]

log = logging.getLogger("termlm.qa")
BATCH = 32  # chunks per embedding call (and per commit)

VECTOR_SCHEMA = """
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(hash);
CREATE TABLE IF NOT EXISTS chunk_vectors(
    hash TEXT NOT NULL, model TEXT NOT NULL, dims INTEGER NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (hash, model)) WITHOUT ROWID;
"""


def chunk_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def model_key(info: EmbedInfo) -> str:
    """What must match for a stored vector to be reused: the model and how it embeds."""
    key = f"{info.name}|{info.pooling}|{info.dims}"
    if info.document_prefix:
        key += "|" + hashlib.sha256(info.document_prefix.encode()).hexdigest()[:12]
    return key


def migrate_v1(conn: sqlite3.Connection, version: str) -> None:
    """Bring a schema-1 index (no vectors) to ``version``: its files and chunks are kept,
    the chunks get their ``hash`` (their vectors are made when a run with an embedding
    model syncs them). One run migrates; others wait for its write, then see the new
    version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] == "1":
            conn.execute("ALTER TABLE chunks ADD COLUMN hash TEXT")
            rows = conn.execute("SELECT id, text FROM chunks").fetchall()
            conn.executemany("UPDATE chunks SET hash = ? WHERE id = ?",
                             [(chunk_hash(str(text)), int(rowid)) for rowid, text in rows])
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def drop_orphans(conn: sqlite3.Connection) -> None:
    """Delete vectors whose text is in no chunk any more (of any file)."""
    conn.execute("DELETE FROM chunk_vectors WHERE hash NOT IN "
                 "(SELECT hash FROM chunks WHERE hash IS NOT NULL)")


class ChunkVectors:
    """The vectors of the index's scope for one embedder: kept up to date, searched."""

    def __init__(self, index: Index, embedder: Embedder, *, batch: int = BATCH) -> None:
        self.index = index
        self.embedder = embedder
        self.model = model_key(embedder.info)
        self.batch = batch
        self._ids: list[int] = []
        self._matrix: Matrix | None = None
        self._rows: dict[int, int] | None = None

    @property
    def name(self) -> str:
        return self.embedder.info.name

    def missing(self) -> int:
        """Distinct chunk texts in scope with no vector from this model."""
        return int(self.index.conn.execute(
            "SELECT count(DISTINCT c.hash) FROM chunks c "
            "WHERE c.path IN (SELECT path FROM qa_scope) AND NOT EXISTS "
            "(SELECT 1 FROM chunk_vectors v WHERE v.hash = c.hash AND v.model = ?)",
            (self.model,)).fetchone()[0])

    def update(self, say: Callable[[str], None] | None = None) -> int:
        """Embed the chunks in scope that have no vector yet; the number embedded.

        ``say`` gets a progress line before each batch (a spinner on a terminal)."""
        import numpy as np

        from termlm.engine.embedding import embed_texts

        conn = self.index.conn
        todo = conn.execute(
            "SELECT c.hash, min(c.text) FROM chunks c "
            "WHERE c.path IN (SELECT path FROM qa_scope) AND NOT EXISTS "
            "(SELECT 1 FROM chunk_vectors v WHERE v.hash = c.hash AND v.model = ?) "
            "GROUP BY c.hash ORDER BY min(c.id)", (self.model,)).fetchall()
        if not todo:
            return 0
        self.invalidate()
        dims = self.embedder.info.dims
        done = 0
        try:
            for at in range(0, len(todo), self.batch):
                if say is not None:
                    say(f"embedding {len(todo)} new passages with {self.name}"
                        + (f" ({done} done)..." if done else "..."))
                part = todo[at:at + self.batch]
                embedded = embed_texts(self.embedder, [str(t) for _, t in part],
                                       kind="document")
                conn.executemany(
                    "INSERT OR REPLACE INTO chunk_vectors VALUES (?, ?, ?, ?)",
                    [(str(h), self.model, dims, e.vector.astype(np.dtype("<f4")).tobytes())
                     for (h, _), e in zip(part, embedded, strict=True)])
                conn.commit()  # each batch is kept, whatever happens to the next
                done += len(part)
        except BaseException:
            conn.rollback()
            log.info("embedded %d of %d passages before stopping", done, len(todo))
            raise
        return done

    def matrix(self) -> tuple[list[int], Matrix]:
        """The chunk ids in scope that have a vector, and their vectors (one row each)."""
        import numpy as np

        if self._matrix is None:
            dims = self.embedder.info.dims
            rows = self.index.conn.execute(
                "SELECT c.id, v.vector FROM chunks c JOIN chunk_vectors v "
                "ON v.hash = c.hash AND v.model = ? "
                "WHERE c.path IN (SELECT path FROM qa_scope) AND v.dims = ? ORDER BY c.id",
                (self.model, dims)).fetchall()
            self._ids = [int(r[0]) for r in rows]
            matrix = np.zeros((len(rows), dims), dtype=np.float32)
            for i, (_, blob) in enumerate(rows):
                matrix[i] = np.frombuffer(blob, dtype=np.dtype("<f4"), count=dims)
            self._matrix = matrix
            self._rows = None
        return self._ids, self._matrix

    def invalidate(self) -> None:
        """Forget the loaded matrix (the index changed)."""
        self._matrix = None
        self._rows = None

    def query(self, question: str) -> Matrix:
        """The question's unit vector (with the model's query prefix)."""
        from termlm.engine.embedding import embed_texts

        return embed_texts(self.embedder, [question], kind="query")[0].vector

    def search(self, query: Matrix, n: int) -> list[tuple[int, float]]:
        """The ``n`` chunks in scope nearest ``query``, best first, as (id, cosine)."""
        from termlm.vectors.search import top_k

        ids, matrix = self.matrix()
        return [(ids[row], score) for row, score in top_k(matrix, query, n)]

    def cosines(self, query: Matrix, chunks: list[int]) -> dict[int, float]:
        """The cosine similarity to ``query`` of each of ``chunks`` that has a vector."""
        ids, matrix = self.matrix()
        if self._rows is None:
            self._rows = {chunk: row for row, chunk in enumerate(ids)}
        rows = self._rows
        return {c: float(matrix[rows[c]] @ query) for c in chunks if c in rows}
