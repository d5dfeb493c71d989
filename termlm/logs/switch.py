"""Where the log lives and whether it is on.

``TERMLM_LOG`` (``0``/``1``) wins; else a ``logs-off`` marker file beside the database
(written by ``termlm logs off``) turns it off; else it is on. No sqlite3 here: the
check runs on every ``ask``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from termlm import paths
from termlm.errors import TermlmError

ENV = "TERMLM_LOG"
DB_NAME = "logs.db"
MARKER_NAME = "logs-off"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def db_path() -> Path:
    return paths.data_dir() / DB_NAME


def marker_path() -> Path:
    return paths.data_dir() / MARKER_NAME


@dataclass(frozen=True)
class Switch:
    on: bool
    why: str  # what decided it, in words


def current() -> Switch:
    """Whether to log now, and why."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        if raw.lower() in _TRUE:
            return Switch(True, f"{ENV}={raw}")
        if raw.lower() in _FALSE:
            return Switch(False, f"{ENV}={raw}")
        # a value we do not understand: the private reading wins
        return Switch(False, f"{ENV}={raw} (not 0 or 1: read as off)")
    if marker_path().exists():
        return Switch(False, "termlm logs off")
    return Switch(True, "default")


def turn_off() -> Path:
    """Write the marker; the database, if any, is kept as it is."""
    marker = marker_path()
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("termlm logs off: nothing is logged while this file exists\n",
                          encoding="utf-8")
    except OSError as exc:
        raise TermlmError(f"cannot write {marker}: {exc.strerror or exc}") from None
    return marker


def turn_on() -> None:
    marker = marker_path()
    try:
        marker.unlink(missing_ok=True)
    except OSError as exc:
        raise TermlmError(f"cannot remove {marker}: {exc.strerror or exc}") from None
