"""Writers: one output record at a time, flushed at once.

Every record is formatted into one complete line (or CSV row), written with
a single ``write()`` call and flushed, so a pipe consumer sees results as
they come and a crash leaves at most one half-written last line (which
``termlm.records.resume`` repairs). ``BrokenPipeError`` propagates: the
driver turns it into a quiet exit. Any other failed write (a full disk, an
I/O error) is a ``termlm.fileio.WriteError``, ``cannot write FILE: REASON``;
the records written before it stay, so ``--resume`` continues from there.
Files are opened (checked, locked) by ``termlm.records.outfile.open_output``.

JSON is always JSON: a NaN or infinite number is written as ``null``, never as
the bare ``NaN`` / ``Infinity`` that other JSON readers reject.

Formats:

``jsonl``
    One JSON object per line, UTF-8 (``ensure_ascii=False``).
``csv`` / ``tsv``
    A header row, written once (not again when appending to a non-empty
    file, whose own header then decides the columns). Rows end in ``\\n``.
    Strings go in as they are (quoted by the csv module where needed,
    newlines included); None is an empty cell; booleans are
    ``true``/``false``; lists and dicts are JSON. Without ``columns`` the
    header is the first record's keys plus ``error``; keys outside the header
    are dropped, with one warning per key.
``text``
    One line per record: its main output (``output``, else ``label``, else
    ``data`` as JSON, else the rest of the record as JSON), or
    ``ERROR: <message>`` for an error record. So that every record stays on
    exactly one line, the value is escaped like a C string: a backslash is
    written ``\\\\``, a newline ``\\n``, a carriage return ``\\r``
    (``unescape_text_line`` reverses it). Tabs and everything else are kept.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import stat
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TextIO

from termlm.errors import TermlmError
from termlm.fileio import cannot_write
from termlm.records.types import Warn, one_line

WriterFormat = Literal["jsonl", "csv", "tsv", "text"]
WRITER_FORMATS: tuple[WriterFormat, ...] = ("jsonl", "csv", "tsv", "text")
_MAIN_FIELDS = ("output", "label", "data")
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r"})


class RecordWriter:
    """Writes records to one stream in one format; use as a context manager."""

    def __init__(
        self,
        stream: TextIO,
        fmt: WriterFormat,
        *,
        columns: list[str] | None = None,
        header: bool = True,
        close_stream: bool = False,
        durable: bool = False,
        warn: Warn | None = None,
        name: str = "the output",
    ) -> None:
        if fmt not in WRITER_FORMATS:
            raise ValueError(f"unknown output format {fmt!r}")
        self.stream = stream
        self.name = name
        self.fmt = fmt
        self.columns = list(columns) if columns is not None else None
        self._header_due = header and fmt in ("csv", "tsv")
        self._close_stream = close_stream
        self._durable = durable
        self._warn = warn
        self._dropped: set[str] = set()
        self.count = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line (a header first, for a new CSV), then flush."""
        if self.fmt == "jsonl":
            line = dumps_json(record) + "\n"
        elif self.fmt == "text":
            line = format_text_line(record) + "\n"
        else:
            line = self._csv_line(record)
        try:
            self.stream.write(line)
            self.stream.flush()
            if self._durable:
                os.fsync(self.stream.fileno())
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise cannot_write(self.name, exc) from None
        self.count += 1

    def _csv_line(self, record: Mapping[str, Any]) -> str:
        if self.columns is None:
            self.columns = list(record)
            if "error" not in self.columns:
                self.columns.append("error")
        for key in record:
            if key not in self.columns and key not in self._dropped:
                self._dropped.add(key)
                if self._warn is not None:
                    self._warn(f"field {key!r} is not a column of the CSV output; dropped")
        text = ""
        if self._header_due:
            text = self._csv_row(self.columns)
            self._header_due = False
        return text + self._csv_row([_cell(record.get(column)) for column in self.columns])

    def _csv_row(self, cells: list[str]) -> str:
        # "\r\n" as the terminator makes the csv module quote a cell holding a lone
        # "\r" as well as one holding "\n"; the row itself then ends in plain "\n".
        buffer = io.StringIO()
        csv.writer(buffer, delimiter="\t" if self.fmt == "tsv" else ",",
                   lineterminator="\r\n").writerow(cells)
        return buffer.getvalue()[:-2] + "\n"

    def close(self) -> None:
        try:
            if self._close_stream:
                self.stream.close()
            else:
                self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise cannot_write(self.name, exc) from None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        # already failing (a broken pipe, a full disk, Ctrl-C): close without a second
        # error hiding the first; what could not be flushed is lost either way
        with contextlib.suppress(OSError, TermlmError):
            self.close()  # a file is closed even when its last flush fails


def open_writer(
    path: str | None,
    fmt: WriterFormat,
    *,
    append: bool = False,
    columns: list[str] | None = None,
    durable: bool = False,
    stream: TextIO | None = None,
    warn: Warn | None = None,
) -> RecordWriter:
    """A writer to ``path`` (``None`` or ``-``: stdout, or ``stream`` when given).

    A shortcut for ``open_output(path, fmt, append=append).writer(...)``: the
    file is locked while the writer is open. ``append`` adds to an existing
    file: a CSV header is then written only when the file is empty, and the
    file's own header wins over ``columns``. A file that does not end in a
    newline gets one first, so a stray partial line can never merge with the
    next record. ``durable`` fsyncs each record (files only).
    """
    from termlm.records.outfile import open_output

    return open_output(path, fmt, append=append).writer(
        columns=columns, durable=durable, stream=stream, warn=warn)


def writer_for_file(fd: int, path: str, fmt: WriterFormat, *, append: bool,
                    columns: list[str] | None = None, durable: bool = False,
                    warn: Warn | None = None) -> RecordWriter:
    """A writer that owns ``fd`` (open on ``path``, ``O_APPEND``): emptied first unless
    ``append``; see ``open_writer``. Closing the writer closes ``fd``."""
    header = True
    prefix = ""
    info = os.fstat(fd)
    if not append:
        if info.st_size > 0 and stat.S_ISREG(info.st_mode):
            os.ftruncate(fd, 0)
    elif info.st_size > 0 and stat.S_ISREG(info.st_mode):
        header = False
        with open(path, "rb") as fp:
            fp.seek(-1, os.SEEK_END)
            if fp.read(1) != b"\n":
                prefix = "\n"
        if fmt in ("csv", "tsv"):
            existing = _read_header(path, "\t" if fmt == "tsv" else ",")
            if existing:
                columns = existing
    out = open(fd, "w", encoding="utf-8", newline="", closefd=True)  # noqa: SIM115
    if prefix:
        out.write(prefix)
        out.flush()
    return RecordWriter(out, fmt, columns=columns, header=header, close_stream=True,
                        durable=durable, warn=warn, name=path)


def dumps_json(value: Any) -> str:
    """One line of JSON (UTF-8 kept); NaN and infinities become null (see the docstring)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False, default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def format_text_line(record: Mapping[str, Any]) -> str:
    """The one-line text form of a record (see the module docstring)."""
    error = record.get("error")
    if error:
        return "ERROR: " + one_line(str(error))
    for key in _MAIN_FIELDS:
        if key in record:
            value = record[key]
            if isinstance(value, str):
                return value.translate(_ESCAPES)
            return dumps_json(value).translate(_ESCAPES)
    rest = {k: v for k, v in record.items() if k != "id"}
    return dumps_json(rest)


def unescape_text_line(line: str) -> str:
    """Reverse the escaping of ``format_text_line``."""
    out: list[str] = []
    chars = iter(line)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        nxt = next(chars, "")
        out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
    return "".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return dumps_json(value)


def _read_header(path: str, delimiter: str) -> list[str] | None:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fp:
        for row in csv.reader(fp, delimiter=delimiter):
            if row:
                return row
    return None
