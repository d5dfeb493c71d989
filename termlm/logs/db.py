"""The log database: one SQLite file, one row per exchange (ask, chat) or batch run.

Schema version 1 (``PRAGMA user_version``): the table ``entries``, and where this
Python's SQLite has FTS5, ``entries_fts``, an external-content index over prompt,
system, reply and command kept by triggers. WAL and a busy timeout let several
termlm processes log at once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from termlm.errors import TermlmError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0
TYPES = ("ask", "chat", "batch")
JSON_COLUMNS = ("settings", "timings", "inputs", "counts")

_TABLE = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,             -- ask, chat or batch
    time TEXT NOT NULL,             -- ISO 8601, UTC
    model TEXT,
    prompt TEXT NOT NULL DEFAULT '',
    system TEXT,
    reply TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',   -- JSON, scrubbed of credentials
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    timings TEXT NOT NULL DEFAULT '{}',    -- JSON: seconds
    finish_reason TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0,
    session TEXT,                   -- chat: the conversation
    command TEXT,                   -- batch: the command line, scrubbed
    cwd TEXT,
    inputs TEXT,                    -- batch: JSON list of the inputs as given
    output TEXT,
    counts TEXT,                    -- batch: JSON {ok, failed, skipped, ...}
    seconds REAL,
    status TEXT                     -- batch: ok, partial, failed, interrupted
);
CREATE INDEX IF NOT EXISTS entries_type ON entries(type);
"""

_FTS = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS entries_fts USING fts5("
    "prompt, system, reply, command, content='entries', content_rowid='id')",
    """CREATE TRIGGER IF NOT EXISTS entries_fts_insert AFTER INSERT ON entries BEGIN
    INSERT INTO entries_fts(rowid, prompt, system, reply, command)
    VALUES (new.id, new.prompt, new.system, new.reply, new.command);
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_fts_delete AFTER DELETE ON entries BEGIN
    INSERT INTO entries_fts(entries_fts, rowid, prompt, system, reply, command)
    VALUES ('delete', old.id, old.prompt, old.system, old.reply, old.command);
END""",
]

_STATEMENTS = [s.strip() for s in _TABLE.split(";") if s.strip()]


class LogUnreadable(TermlmError):
    """The log database is corrupt, or from a newer termlm."""


class EntryNotFound(TermlmError):
    """No log entry has that id (exit 1, like any unknown name)."""


@cache
def fts5_available() -> bool:
    """Whether this Python's SQLite was built with FTS5."""
    try:
        conn = sqlite3.connect(":memory:")
        try:
            conn.execute("CREATE VIRTUAL TABLE probe USING fts5(x)")
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return True


def corrupt(path: Path) -> LogUnreadable:
    return LogUnreadable(f"the log database {path} is not readable (corrupt?)",
                         hint=f"move it aside and a new one is started: mv {path} {path}.bad")


def connect(path: Path, *, create: bool) -> sqlite3.Connection | None:
    """An open, current database; None when it does not exist and ``create`` is false.

    Raises ``sqlite3.Error``/``OSError`` when it cannot be opened or written, and
    :class:`LogUnreadable` when the file is not a database."""
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise
            raise corrupt(path) from None
        if version > SCHEMA_VERSION:
            raise LogUnreadable(f"the log database {path} is from a newer termlm "
                                f"(schema {version}, this one knows {SCHEMA_VERSION})",
                                hint="upgrade termlm, or move the file aside")
        if version < SCHEMA_VERSION or _fts_missing(conn):
            _migrate(conn)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _fts_missing(conn: sqlite3.Connection) -> bool:
    return fts5_available() and not _has_fts(conn)


def _has_fts(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'entries_fts'").fetchone()
    return row is not None


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")  # one process sets the schema up; the others wait
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version < 1:
            for statement in _STATEMENTS:
                conn.execute(statement)
        if fts5_available() and not _has_fts(conn):
            for statement in _FTS:
                conn.execute(statement)
            conn.execute("INSERT INTO entries_fts(entries_fts) VALUES ('rebuild')")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def insert(conn: sqlite3.Connection, row: Mapping[str, Any]) -> int:
    values = {k: json.dumps(v, ensure_ascii=False) if k in JSON_COLUMNS else v
              for k, v in row.items()}
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    cursor = conn.execute(f"INSERT INTO entries ({columns}) VALUES ({marks})",
                          tuple(values.values()))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


@dataclass(frozen=True)
class Query:
    count: int = 20
    text: str | None = None  # full-text search
    type: str | None = None
    model: str | None = None  # a part of the model's name, any case


def fts_match(text: str) -> str | None:
    """``text`` as a safe FTS5 query: each word a quoted string, all of them required; a
    word ending in ``*`` matches as a prefix (``capit*``).

    Quotes, ``-``, ``:``, ``NEAR``, ``AND``/``OR``, parentheses are matched as text,
    never as query syntax."""
    terms = []
    for word in text.split():
        prefix = word.endswith("*") and word.strip("*") != ""
        body = word.rstrip("*") if prefix else word
        terms.append('"' + body.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms) or None


def _like(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(conn: sqlite3.Connection, query: Query) -> list[dict[str, Any]]:
    """Entries, newest first (best match first with ``text``)."""
    where: list[str] = []
    params: list[Any] = []
    order = "entries.id DESC"
    source = "entries"
    if query.text is not None and query.text.strip():
        if _has_fts(conn) and fts5_available():
            source = "entries JOIN entries_fts ON entries_fts.rowid = entries.id"
            where.append("entries_fts MATCH ?")
            params.append(fts_match(query.text))
            order = "entries_fts.rank, entries.id DESC"
        else:
            for word in query.text.split():
                where.append("(" + " OR ".join(
                    f"coalesce(entries.{c}, '') LIKE ? ESCAPE '\\'"
                    for c in ("prompt", "system", "reply", "command")) + ")")
                params.extend([_like(word)] * 4)
    if query.type is not None:
        where.append("entries.type = ?")
        params.append(query.type)
    if query.model is not None:
        where.append("instr(lower(coalesce(entries.model, '')), lower(?)) > 0")
        params.append(query.model)
    sql = f"SELECT entries.* FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT ?"
    params.append(query.count)
    return _rows(conn.execute(sql, params))


def get(conn: sqlite3.Connection, entry_id: int) -> dict[str, Any] | None:
    found = _rows(conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)))
    return found[0] if found else None


def last_id(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT max(id) FROM entries").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(t): int(n) for t, n in
            conn.execute("SELECT type, count(*) FROM entries GROUP BY type ORDER BY type")}


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [str(d[0]) for d in cursor.description]
    return [_decode(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def _decode(entry: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_COLUMNS:
        raw = entry.get(key)
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):  # else kept as the text it is
                entry[key] = json.loads(raw)
    entry["interrupted"] = bool(entry.get("interrupted"))
    return entry
