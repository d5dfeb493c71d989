"""Records: what readers yield, and the dicts that writers write.

A record that could not be read is still a record: its ``error`` says why in
one line (naming the file and line), so a batch driver writes an error record
for it and goes on with the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Warn = Callable[[str], None]
"""A callback for notices (duplicate ids, skipped files, repaired output)."""


@dataclass(frozen=True)
class Source:
    """One input: a file, or stdin (``path == "-"``).

    ``name`` is what messages and ids show: the path as the user wrote it (or
    joined under the directory they named), ``stdin`` for stdin. ``walked``
    is true for files found by a directory walk or a glob, which are skipped
    with a warning when binary; a binary file named explicitly is an error
    record instead.
    """

    path: str
    name: str
    walked: bool = False

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"


@dataclass(frozen=True)
class Record:
    """One unit of work.

    ``position`` counts records from 0 across all sources, error records
    included; ``line`` is the line the record starts on in ``source`` (0 for
    a whole file). ``text`` is None exactly when ``error`` is set. ``fields``
    holds the input's own fields (a JSONL object, a CSV row), empty for text
    lines and whole files.
    """

    id: str
    text: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    position: int = 0
    error: str | None = None
    line: int = 0


def one_line(message: str) -> str:
    """Collapse a message onto one line (error records and notices are one line)."""
    return " ".join(message.split())


# the names a task's result may use: an input field by one of these names is kept as
# input_NAME, so that it never reads as a result (a writer's main field, a truncation, an
# error that resume would retry) whether or not this task sets it
RESULT_FIELDS = frozenset({
    "id", "error", "truncated", "output", "finish_reason", "label", "confidence", "scores",
    "labels", "data", "summary", "chunks", "cut_off", "copied", "inputs", "question",
    "answer", "found", "citations", "retrieval", "passages", "embedding"})


def result_record(record: Record, fields: Mapping[str, Any], keep_fields: bool) -> dict[str, Any]:
    """The output dict for a record: id first, then the task's fields.

    With ``keep_fields`` the input's own fields follow under their own names, except
    those named like a result field (``RESULT_FIELDS``), which follow as ``input_NAME``:
    an input field never replaces, or passes for, a task field.
    """
    out: dict[str, Any] = {"id": record.id}
    for key, value in fields.items():
        if key != "id":
            out[key] = value
    if keep_fields:
        for key, value in record.fields.items():
            if key != "id":  # the record's id is already first
                out.setdefault(f"input_{key}" if key in RESULT_FIELDS else key, value)
    return out


def error_record(record: Record, message: str) -> dict[str, Any]:
    """The output dict for a record that failed: ``{"id": ..., "error": "<one line>"}``."""
    return {"id": record.id, "error": one_line(message) or "unknown error"}
