"""The QA index: document chunks in SQLite FTS5, kept in step with the files.

One database (``<cache dir>/qa/index.sqlite``; ``TERMLM_CACHE_DIR`` moves it)
holds every file any ``termlm qa`` run has indexed, keyed by its real path.
``sync`` brings the files of one run up to date: a file whose mtime and size
match the index is not read at all; one whose bytes hash the same is not
chunked again; files that no longer exist are dropped. Searches only look at
the files of the current run (its *scope*).

The same file holds the chunks' embeddings (``termlm.qa.vectors``), keyed by
each chunk's text hash and the embedding model.

Questions never reach FTS5 as query syntax: they are cut into words, stopwords
are dropped, and each word is quoted, so quotes, ``*``, ``NEAR`` or brackets
in a question are just text.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import sqlite3
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from termlm import paths
from termlm.errors import InputError, TermlmError
from termlm.inputs import read_input_bytes, skip_reason
from termlm.qa.chunking import ChunkSpec, chunk_text
from termlm.qa.vectors import VECTOR_SCHEMA, chunk_hash, drop_orphans, migrate_v1
from termlm.records.types import Source, Warn

log = logging.getLogger("termlm.qa")
SCHEMA_VERSION = "2"  # 2: chunks.hash and chunk_vectors (1 is migrated)
MAX_TERMS = 24
BUSY_TIMEOUT_S = 60.0  # how long a run waits for another run's write to finish
MAX_FILE_BYTES = 32 * 2**20  # bigger files (logs, dumps) are skipped, not read whole
_COMMIT_EVERY = 64
_WORD = re.compile(r"\w+")
_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either else ever
few for from further get gets got had has have having he her here hers herself him himself his
how i if in into is it its itself just let me might more most must my myself no nor not now of
off on once only or other ought our ours ourselves out over own please same shall she should so
some such tell than that the their theirs them themselves then there these they this those
through to too under until up upon us very was we were what whatever when where whether which
while who whom whose why will with within without would yes yet you your yours yourself
yourselves know say said s t d ll m re ve
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, chunking TEXT NOT NULL, skipped TEXT);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, line_start INTEGER NOT NULL,
    line_end INTEGER NOT NULL, text TEXT NOT NULL, hash TEXT);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
"""


class QaIndexError(TermlmError):
    """The index database cannot be used."""


def default_path() -> Path:
    return paths.cache_dir() / "qa" / "index.sqlite"


def query_terms(question: str) -> list[str]:
    """The words of a question worth searching for: lower case, no stopwords, no repeats."""
    terms: list[str] = []
    for word in _WORD.findall(question.lower()):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()) or word in terms:
            continue
        terms.append(word)
        if len(terms) == MAX_TERMS:
            break
    return terms


def fts_query(terms: Iterable[str]) -> str:
    """An FTS5 query matching any of ``terms``, each quoted (so never parsed as syntax)."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


@dataclass
class SyncStats:
    files: int = 0  # files in this run's scope
    read: int = 0  # files whose bytes were read (new, or mtime/size changed)
    indexed: int = 0  # files chunked (new or changed content)
    unchanged: int = 0
    removed: int = 0  # files gone from disk, dropped from the index
    skipped: int = 0  # empty, binary, undecodable or unreadable
    reasons: dict[str, int] = field(default_factory=dict)  # skipped files by kind
    chunks: int = 0  # chunks in scope after the sync

    def line(self) -> str:
        parts = [f"{self.files} files", f"{self.chunks} chunks", f"{self.indexed} indexed",
                 f"{self.unchanged} unchanged"]
        if self.removed:
            parts.append(f"{self.removed} removed")
        if self.skipped:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.reasons.items()))
            parts.append(f"{self.skipped} skipped ({kinds})")
        return "index: " + ", ".join(parts)


@dataclass(frozen=True)
class Hit:
    """A chunk that matched: ``key`` is the file's real path, ``name`` what the user sees."""

    id: int
    key: str
    name: str
    start: int
    end: int
    text: str
    bm25: float  # FTS5's score: lower is better
    coverage: float  # share of the question's words (weighted by rarity) in this chunk


def _check_fts5(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
        conn.execute("DROP TABLE temp.fts5_probe")
    except sqlite3.OperationalError:
        raise QaIndexError(
            f"this Python's sqlite3 (SQLite {sqlite3.sqlite_version}) has no FTS5 full-text "
            "search, which termlm qa needs",
            hint="use a Python built with a standard SQLite (python.org, Homebrew, most Linux "
            "distributions)") from None


def _remove(path: Path) -> None:
    """Delete a database that only this process has used (a private rebuild file)."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(str(path) + suffix)


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode: readers never block the one writer, nor it them, and
    SQLite's own locking (with a busy timeout) orders concurrent runs."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if not mode or str(mode[0]).lower() != "wal":  # a filesystem without shared memory
            log.info("the QA index %s is not in WAL mode (%s)", path, mode)
    except BaseException:
        conn.close()
        raise
    return conn


class Index:
    """The QA index; concurrent runs share it safely (see ``open``)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.names: dict[str, str] = {}  # scope: real path -> the name shown
        self.spec = ChunkSpec()  # how the scope's files are chunked
        self._rebuild_of: Path | None = None  # set while building a replacement

    @classmethod
    def open(cls, path: Path | None = None, *, rebuild: bool = False) -> Index:
        """Open (creating) the index at ``path``.

        ``rebuild`` never deletes the database, which another run may have open: the
        new index is built in a private file beside it, and ``sync`` then copies it over
        the live one in one write transaction (SQLite's backup API), so concurrent
        readers see the old index or the new one, never a missing or half-built one.
        """
        path = path or default_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QaIndexError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
        target = path.with_name(f".{path.name}.rebuild-{os.getpid()}") if rebuild else path
        if rebuild:
            _remove(target)
        try:
            conn = _connect(target)
        except sqlite3.Error as exc:
            raise QaIndexError(f"cannot open the QA index {path}: {exc}",
                               hint="rebuild it with --reindex") from None
        try:
            _check_fts5(conn)
            index = cls(conn, path)
            index._setup()
            if rebuild:
                index._rebuild_of = target
        except sqlite3.Error as exc:
            conn.close()
            raise Index(conn, path)._error("cannot open", exc) from None
        except BaseException:
            conn.close()
            if rebuild:
                _remove(target)
            raise
        return index

    def _publish(self) -> None:
        """Copy a rebuilt index over the live one, then use the live one."""
        built = self._rebuild_of
        if built is None:
            return
        self.conn.commit()
        try:
            live = _connect(self.path)
            self.conn.backup(live)
        except sqlite3.DatabaseError:  # the live file is damaged, so no run can be using it
            with contextlib.suppress(NameError, sqlite3.Error):
                live.close()
            self.conn.close()
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(str(self.path) + suffix)
            os.replace(built, self.path)
            live = _connect(self.path)
        try:
            live.execute("CREATE TEMP TABLE IF NOT EXISTS qa_scope(path TEXT PRIMARY KEY)")
        except BaseException:
            live.close()
            raise
        self.conn.close()
        self.conn = live
        self._rebuild_of = None
        _remove(built)

    def _setup(self) -> None:
        conn = self.conn
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:  # a new database
            row = None
        if row is not None and row[0] == "1":
            migrate_v1(conn, SCHEMA_VERSION)
        elif row is not None and row[0] != SCHEMA_VERSION:  # another layout: start afresh
            for table in ("chunk_vectors", "chunks_fts", "chunks", "files", "meta"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.executescript(_SCHEMA + VECTOR_SCHEMA)
        if row is None or row[0] not in ("1", SCHEMA_VERSION):
            with conn:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                             (SCHEMA_VERSION,))
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS qa_scope(path TEXT PRIMARY KEY)")

    def close(self) -> None:
        self.conn.close()
        if self._rebuild_of is not None:  # stopped before the rebuild was published
            _remove(self._rebuild_of)
            self._rebuild_of = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- keeping the index in step with the files ---------------------------------------

    def sync(self, sources: Iterable[Source], spec: ChunkSpec | None = None,
             warn: Warn | None = None) -> SyncStats:
        """Index ``sources`` (reading only what changed) and make them the search scope."""
        spec = self.spec = spec or ChunkSpec()
        stats = SyncStats()
        conn = self.conn
        try:
            known = {row[0]: row[1:] for row in conn.execute(
                "SELECT path, mtime_ns, size, sha256, chunking, skipped FROM files")}
            for key in known:
                if not os.path.isfile(key):
                    self._drop(key)
                    stats.removed += 1
            self.names = {}
            pending = 0
            for source in sources:
                key = os.path.realpath(source.path)
                if key in self.names:
                    continue
                self.names[key] = os.path.normpath(source.name)
                stats.files += 1
                self._sync_one(key, source, known.get(key), spec, stats, warn)
                pending += 1
                if pending >= _COMMIT_EVERY:
                    conn.commit()
                    pending = 0
            if stats.read or stats.removed:
                drop_orphans(conn)
            conn.commit()
            self._publish()
            conn = self.conn
            conn.execute("DELETE FROM qa_scope")
            conn.executemany("INSERT INTO qa_scope VALUES (?)", [(k,) for k in self.names])
            conn.commit()
            stats.chunks = conn.execute(
                "SELECT count(*) FROM chunks WHERE path IN (SELECT path FROM qa_scope)"
            ).fetchone()[0]
        except sqlite3.Error as exc:
            conn.rollback()
            raise self._error("cannot update", exc) from None
        except BaseException:
            conn.rollback()
            raise
        return stats

    def _error(self, what: str, exc: sqlite3.Error) -> QaIndexError:
        locked = "locked" in str(exc) or "busy" in str(exc)
        return QaIndexError(
            f"{what} the QA index {self.path}: {exc}",
            hint="another termlm qa may be writing it; try again" if locked
            else "rebuild it with --reindex")

    def _sync_one(self, key: str, source: Source, row: tuple[object, ...] | None,
                  spec: ChunkSpec, stats: SyncStats, warn: Warn | None) -> None:
        try:
            st = os.stat(key)
        except OSError as exc:
            self._drop(key)
            _skip(source, str(exc.strerror or exc), stats, warn)
            return
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device: reading it could block
            self._drop(key)
            _skip(source, "not a regular file", stats, warn)
            return
        if row is not None and row[0] == st.st_mtime_ns and row[1] == st.st_size \
                and row[3] == spec.key:
            stats.unchanged += 1
            if row[4] is not None:
                _skip(source, str(row[4]), stats, warn)
            return
        if st.st_size > MAX_FILE_BYTES:
            self._drop(key)
            reason = f"too large ({st.st_size / 2**20:.0f} MB; the limit is " \
                     f"{MAX_FILE_BYTES // 2**20} MB)"
            self.conn.execute("INSERT INTO files VALUES (?, ?, ?, '', ?, ?)",
                              (key, st.st_mtime_ns, st.st_size, spec.key, reason))
            _skip(source, reason, stats, warn)
            return
        try:
            data = read_input_bytes(key)  # regular files only, and the open never blocks
        except InputError as exc:
            self._drop(key)
            _skip(source, skip_reason(exc, key), stats, warn)
            return
        stats.read += 1
        digest = hashlib.sha256(data).hexdigest()
        if row is not None and row[2] == digest and row[3] == spec.key:
            self.conn.execute("UPDATE files SET mtime_ns = ?, size = ? WHERE path = ?",
                              (st.st_mtime_ns, st.st_size, key))
            stats.unchanged += 1
            if row[4] is not None:
                _skip(source, str(row[4]), stats, warn)
            return
        self._drop(key)
        problem = _problem(data)
        self.conn.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                          (key, st.st_mtime_ns, st.st_size, digest, spec.key, problem))
        if problem is not None:
            _skip(source, problem, stats, warn)
            return
        text = data.decode("utf-8-sig")
        self.conn.executemany(
            "INSERT INTO chunks(path, line_start, line_end, text, hash) VALUES (?, ?, ?, ?, ?)",
            [(key, c.start, c.end, c.text, chunk_hash(c.text)) for c in chunk_text(text, spec)])
        stats.indexed += 1

    def _drop(self, key: str) -> None:
        self.conn.execute("DELETE FROM chunks WHERE path = ?", (key,))
        self.conn.execute("DELETE FROM files WHERE path = ?", (key,))

    def indexed_stat(self, key: str) -> tuple[int, int] | None:
        """(mtime_ns, size) of the file as it was indexed."""
        row = self.conn.execute("SELECT mtime_ns, size FROM files WHERE path = ?",
                                (key,)).fetchone()
        return (int(row[0]), int(row[1])) if row is not None else None

    def refresh(self, keys: Iterable[str]) -> None:
        """Index again files of the scope found changed or gone since the last sync."""
        stats = SyncStats()
        with self.conn:
            for key in keys:
                self._drop(key)
                if key in self.names:
                    self._sync_one(key, Source(key, self.names[key]), None, self.spec, stats,
                                   None)

    # -- searching ----------------------------------------------------------------------

    def chunks(self, ids: Iterable[int]) -> dict[int, tuple[str, str, int, int, str]]:
        """Chunks by id: (key, name, start, end, text)."""
        wanted = list(ids)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self.conn.execute(
            f"SELECT id, path, line_start, line_end, text FROM chunks WHERE id IN ({marks})",
            wanted).fetchall()
        return {int(r[0]): (str(r[1]), self.names.get(str(r[1]), str(r[1])), int(r[2]),
                            int(r[3]), str(r[4])) for r in rows}

    def search(self, question: str, limit: int = 24) -> list[Hit]:
        """The chunks in scope that best match ``question``, best first (see ``Hit``)."""
        terms = query_terms(question)
        if not terms or not self.names:
            return []
        try:
            return self._search(terms, limit)
        except sqlite3.Error as exc:
            raise self._error("cannot search", exc) from None

    def _search(self, terms: list[str], limit: int) -> list[Hit]:
        rows = self.conn.execute(
            "SELECT c.id, c.path, c.line_start, c.line_end, c.text, bm25(chunks_fts) AS score "
            "FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
            "WHERE chunks_fts MATCH ? AND c.path IN (SELECT path FROM qa_scope) "
            "ORDER BY score LIMIT ?", (fts_query(terms), limit)).fetchall()
        if not rows:
            return []
        coverage = self._coverage(terms, [int(r[0]) for r in rows])
        hits = [Hit(int(r[0]), str(r[1]), self.names.get(str(r[1]), str(r[1])), int(r[2]),
                    int(r[3]), str(r[4]), float(r[5]), coverage[int(r[0])]) for r in rows]
        # BM25 finds the candidates; coverage orders them (FTS5's IDF is zero for a word
        # in half the chunks or more, so in a small corpus BM25 alone cannot tell them apart)
        return sorted(hits, key=lambda h: (-round(h.coverage, 6), h.bm25))

    def _coverage(self, terms: list[str], ids: list[int]) -> dict[int, float]:
        """For each chunk, the IDF-weighted share of ``terms`` it contains.

        The IDF is smoothed (always positive, even in a corpus of one chunk, where
        FTS5's own BM25 IDF is zero) over the chunks in scope; a word no chunk has
        weighs as much as the rarest: a question about something the documents never
        mention scores low even when one of its common words matches.
        """
        total = self.conn.execute(
            "SELECT count(*) FROM chunks WHERE path IN (SELECT path FROM qa_scope)"
        ).fetchone()[0]
        marks = ",".join("?" * len(ids))
        weights: dict[int, float] = dict.fromkeys(ids, 0.0)
        whole = 0.0
        for term in terms:
            query = fts_query([term])
            df = self.conn.execute(
                "SELECT count(*) FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
                "WHERE chunks_fts MATCH ? AND c.path IN (SELECT path FROM qa_scope)",
                (query,)).fetchone()[0]
            df = max(df, 1)  # a word no chunk has weighs as a word one chunk has
            idf = math.log(1.0 + (total - df + 0.5) / (df + 0.5))
            whole += idf
            for (rowid,) in self.conn.execute(
                    f"SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid IN ({marks})",
                    (query, *ids)):
                weights[int(rowid)] += idf
        return {i: (w / whole if whole > 0 else 0.0) for i, w in weights.items()}


def _skip(source: Source, reason: str, stats: SyncStats, warn: Warn | None) -> None:
    """Count a file that cannot be indexed; warn about it when the user named it (one
    found by a directory walk or a glob is only logged, shown with -v)."""
    stats.skipped += 1
    kinds = {"empty": "empty", "binary": "binary", "not valid UTF-8": "not UTF-8",
             "too large": "too large"}
    kind = next((v for k, v in kinds.items() if reason.startswith(k)), "unreadable")
    stats.reasons[kind] = stats.reasons.get(kind, 0) + 1
    message = f"skipping {source.name}: {reason}"
    if warn is not None and not source.walked:
        warn(message)
    else:
        log.info(message)


def _problem(data: bytes) -> str | None:
    """Why a file cannot be indexed (empty, binary, not UTF-8), or None."""
    if b"\x00" in data:
        return "binary data, not text"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return f"not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line})"
    return "empty" if not text.strip() else None
