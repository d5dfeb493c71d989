"""The translate cache: checked translations by key, so a rerun asks only for what changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol


class Cache(Protocol):
    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...


class SqliteCache:
    """Checked translations by key, in one SQLite file; a broken cache is just a miss."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.broken = False

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None and not self.broken:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=10)
                self._db.execute("CREATE TABLE IF NOT EXISTS units "
                                 "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            except (OSError, sqlite3.Error):
                self.close()
                self.broken = True
        return self._db

    def get(self, key: str) -> str | None:
        db = self._conn()
        try:
            row = db.execute("SELECT value FROM units WHERE key = ?", (key,)).fetchone() \
                if db else None
        except sqlite3.Error:
            return None
        return str(row[0]) if row else None

    def put(self, key: str, value: str) -> None:
        db = self._conn()
        try:
            if db is not None:
                with db:
                    db.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (key, value))
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
