"""Readers: turn paths, globs, directories and stdin into a stream of records.

Files are read streaming, line by line in binary mode and decoded per line,
so huge inputs never sit in memory (per-file mode reads each file whole, as
it must). Nothing a file contains stops the stream: an undecodable line, a
malformed JSONL line, a ragged CSV row or a missing text field becomes a
record with ``error`` set, naming the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as globlib
import io
import json
import math
import os
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from fnmatch import fnmatch
from typing import IO, Any, BinaryIO

from termlm.errors import InputError, UsageError
from termlm.inputs import is_pipe, open_input, skip_reason
from termlm.records.types import Record, Source, Warn

FORMATS = ("txt", "jsonl", "csv", "tsv")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
_BOM = b"\xef\xbb\xbf"
_SNIFF = 8192
_GLOB_MAGIC = frozenset("*?[")


# -- sources -----------------------------------------------------------------

def expand_inputs(paths: list[str], glob: str | None = None) -> list[Source]:
    """Files, globs (also quoted ones), directories and ``-`` as a list of sources.

    An empty list means stdin. Directories are walked recursively in sorted
    order, skipping hidden files and directories; ``glob`` (``*.txt``,
    ``sub/*.jsonl``, ``**/*.csv``) filters the files a walk finds. A file
    named twice is read once. Every argument must name something: a missing
    path, a glob that matches nothing, or a directory with no matching files
    is an InputError.
    """
    if not paths:
        return [Source("-", "stdin")]
    sources: list[Source] = []
    seen: set[str] = set()

    def add(source: Source) -> None:
        key = "-" if source.is_stdin else os.path.realpath(source.path)
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for arg in paths:
        if arg == "-":
            add(Source("-", "stdin"))
        elif os.path.isdir(arg):
            for found in _walk(arg, glob):
                add(found)
        elif os.path.exists(arg):
            _check_named(arg)
            add(Source(arg, arg))
        elif _GLOB_MAGIC.intersection(arg):
            matches = sorted(globlib.glob(arg, recursive=True))
            if not matches:
                raise InputError(f"no files match {arg}")
            for match in matches:
                if os.path.isdir(match):
                    for found in _walk(match, glob):
                        add(found)
                else:
                    add(Source(match, match, walked=True))
        else:
            raise InputError(f"no such file: {arg}")
    return sources


def _check_named(path: str) -> None:
    """A file named on the command line must be readable, before any model loads: a
    regular file that opens, or a pipe (``<(cmd)``, read as a stream like stdin, and
    not opened here, which would lose what its writer sends)."""
    if not is_pipe(path):
        open_input(path).close()


def _walk(directory: str, pattern: str | None) -> list[Source]:
    found: list[tuple[tuple[str, ...], str]] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_root = os.path.relpath(root, directory)
        parts = () if rel_root == "." else tuple(rel_root.split(os.sep))
        for name in files:
            if name.startswith("."):
                continue
            rel = "/".join((*parts, name))
            if pattern is None or _glob_match(rel, name, pattern):
                found.append(((*parts, name), os.path.join(root, name)))
    if not found:
        what = f"files matching {pattern}" if pattern else "files"
        raise InputError(f"no {what} in {directory}")
    return [Source(path, path, walked=True) for _, path in sorted(found)]


def _glob_match(rel: str, name: str, pattern: str) -> bool:
    if "/" not in pattern:
        return fnmatch(name, pattern)
    return fnmatch(rel, pattern) or (pattern.startswith("**/") and fnmatch(rel, pattern[3:]))


def detect_format(source: Source, input_format: str | None) -> str:
    """``input_format`` if given, else from the extension; stdin and others are txt."""
    if input_format is not None:
        if input_format not in FORMATS:
            raise UsageError(f"unknown input format {input_format!r} "
                             f"(choose from {', '.join(FORMATS)})")
        return input_format
    if source.is_stdin:
        return "txt"
    return _EXTENSIONS.get(os.path.splitext(source.path)[1].lower(), "txt")


# -- records -----------------------------------------------------------------

def read_records(
    sources: Iterable[Source],
    *,
    input_format: str | None = None,
    text_field: str = "text",
    id_field: str = "id",
    per_file: bool = False,
    encoding_errors: str = "strict",
    warn: Warn | None = None,
    stdin: BinaryIO | None = None,
) -> Iterator[Record]:
    """Yield the records of ``sources`` in order, error records included.

    ``encoding_errors`` is ``"strict"`` (a line with invalid UTF-8 becomes an
    error record) or ``"replace"`` (decoded with U+FFFD). ``warn`` hears of
    skipped files found by a walk (binary, not a regular file, unreadable) and
    of duplicate ids, once per id. No file stops the stream: one named on the
    command line that cannot be read becomes an error record, and a read that
    fails half way ends that file with an error record after the records
    already read.
    """
    if encoding_errors not in ("strict", "replace"):
        raise ValueError(f"encoding_errors must be strict or replace, not {encoding_errors!r}")
    sources = list(sources)
    reader = _Reader(text_field, id_field, encoding_errors == "replace", len(sources) > 1)
    seen: set[str] = set()
    warned: set[str] = set()
    position = 0
    for source in sources:
        fmt = detect_format(source, input_format)
        for rec in _read_source(source, fmt, per_file, reader, warn, stdin):
            if rec.id in seen:
                if warn is not None and rec.id not in warned:
                    warned.add(rec.id)
                    where = f"line {rec.line}" + (f" of {rec.source}" if reader.several else "")
                    warn(f"duplicate id {rec.id} ({where}); resume counts records by position")
            else:
                seen.add(rec.id)
            yield dataclasses.replace(rec, position=position)
            position += 1


def count_records(
    sources: Iterable[Source], *, input_format: str | None = None, per_file: bool = False,
) -> int | None:
    """How many records the sources hold, for a progress ETA; None when stdin is among them.

    An estimate: it reads the files once more (cheaply, without decoding) and
    counts non-blank lines, CSV rows, or files. A pipe can be read only once, so
    a named one gives None too; files that cannot be read (a walked FIFO, a
    device) count as nothing, as they will be skipped.
    """
    total = 0
    for source in sources:
        if source.is_stdin or (not source.walked and is_pipe(source.path)):
            return None
        if per_file:
            total += 1
            continue
        fmt = detect_format(source, input_format)
        try:
            with open_input(source.path) as fp:
                if fmt in ("csv", "tsv"):
                    _allow_big_cells()
                    lines = (raw.decode("utf-8", "replace") for raw in fp)
                    rows = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",")
                    total += max(0, sum(1 for row in rows if row) - 1)
                else:
                    total += sum(1 for raw in fp if raw.strip())
        except (InputError, OSError, csv.Error):
            continue
    return total


class _Reader:
    """Per-format parsers sharing the field options."""

    def __init__(self, text_field: str, id_field: str, replace: bool, several: bool) -> None:
        self.text_field = text_field
        self.id_field = id_field
        self.replace = replace
        self.several = several

    def line_id(self, source: Source, line: int) -> str:
        return f"{source.name}:{line}" if self.several else str(line)

    def field_id(self, fields: dict[str, Any], source: Source, line: int) -> str:
        value = fields.get(self.id_field)
        if value is None or value == "":
            return self.line_id(source, line)
        if isinstance(value, str):
            return value
        # true, 7, 1.5, {"k":1}: their (compact) JSON text, never a Python repr ("True")
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def text_of(self, fields: dict[str, Any], what: str,
                place: str) -> tuple[str | None, str | None]:
        if self.text_field not in fields:
            names = ", ".join(map(str, fields)) or "none"
            return None, f'no {what} "{self.text_field}" {place} ({what}s: {names})'
        value = fields[self.text_field]
        if not isinstance(value, str):
            return None, (f'{what} "{self.text_field}" is not a string {place} '
                          f"(got {_json_type(value)})")
        return value, None

    @staticmethod
    def lines(fp: IO[bytes]) -> Iterator[tuple[int, str, bool]]:
        """(line number, text without its line ending, had invalid UTF-8).

        A NUL byte anywhere, not only in the first 8 KiB, makes the file binary."""
        for number, raw in enumerate(fp, 1):
            if b"\x00" in raw:
                raise _Binary(number)
            data = raw[3:] if number == 1 and raw.startswith(_BOM) else raw
            if data.endswith(b"\n"):
                data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
            text, bad = _decode(data)
            yield number, text, bad

    def txt(self, source: Source, fp: IO[bytes]) -> Iterator[Record]:
        for number, text, bad in self.lines(fp):
            if not text.strip():
                continue
            rec_id = self.line_id(source, number)
            if bad and not self.replace:
                yield _error(rec_id, source, number,
                             f"invalid UTF-8 on line {number} of {source.name}")
            else:
                yield Record(rec_id, text, {}, source.name, 0, None, number)

    def jsonl(self, source: Source, fp: IO[bytes]) -> Iterator[Record]:
        for number, text, bad in self.lines(fp):
            if not text.strip():
                continue
            place = f"on line {number} of {source.name}"
            line_id = self.line_id(source, number)
            if bad and not self.replace:
                yield _error(line_id, source, number, f"invalid UTF-8 {place}")
                continue
            try:
                obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
            except (ValueError, RecursionError) as exc:
                reason = getattr(exc, "msg", None) or (
                    "nested too deeply" if isinstance(exc, RecursionError) else str(exc))
                yield _error(line_id, source, number, f"invalid JSON {place}: {reason}")
                continue
            if not isinstance(obj, dict):
                yield _error(line_id, source, number,
                             f"not a JSON object {place} (got {_json_type(obj)})")
                continue
            if "\\u" in text and _has_surrogate(obj):  # valid JSON, but not Unicode text
                if not self.replace:
                    yield _error(line_id, source, number,
                                 f"invalid Unicode {place}: a lone surrogate (\\ud800 to "
                                 "\\udfff) in a string")
                    continue
                obj = _mend(obj)
            value, problem = self.text_of(obj, "field", place)
            yield Record(self.field_id(obj, source, number), value, obj, source.name, 0,
                         problem, number)

    def csv(self, source: Source, fp: IO[bytes], delimiter: str) -> Iterator[Record]:
        """CSV/TSV rows. A quote that is never closed would swallow every later row into
        one field (up to the next quote, or the end of the file); a row read over several
        lines that ends ragged or at the end inside a quote is reported as "unterminated
        quote starting on line N", and the lines after it are read again as rows."""
        _allow_big_cells()
        bad_lines: list[int] = []
        pending: deque[tuple[int, str, bool]] = deque()  # lines to read again
        consumed: list[tuple[int, str, bool]] = []  # the lines of the row being read
        raw_lines = enumerate(fp, 1)

        def feed() -> Iterator[str]:
            while True:
                if pending:
                    number, text, bad = pending.popleft()
                else:
                    item = next(raw_lines, None)
                    if item is None:
                        return
                    number, raw = item
                    if b"\x00" in raw:
                        raise _Binary(number)
                    data = raw[3:] if number == 1 and raw.startswith(_BOM) else raw
                    text, bad = _decode(data)
                consumed.append((number, text, bad))
                if bad:
                    bad_lines.append(number)
                yield text

        rows = csv.reader(feed(), delimiter=delimiter)
        header: list[str] | None = None
        while True:
            consumed.clear()
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                at = consumed[0][0] if consumed else 0
                bad_lines.clear()
                yield _error(self.line_id(source, at), source, at,
                             f"malformed CSV row on line {at} of {source.name}: {exc}")
                continue
            start = consumed[0][0] if consumed else 0
            # a quote that runs over lines into a ragged row, or to the end of the file
            if len(consumed) > 1 and (
                    (header is not None and len(row) != len(header))
                    or _unterminated(consumed, delimiter)):
                bad_lines.clear()
                yield _error(self._first_line_id(header, consumed[0][1], delimiter, source,
                                                 start), source, start,
                             f"unterminated quote starting on line {start} of {source.name}")
                pending.extend(consumed[1:])
                rows = csv.reader(feed(), delimiter=delimiter)
                continue
            bad = bool(bad_lines)
            bad_lines.clear()
            if not row:
                continue
            place = f"on line {start} of {source.name}"
            if header is None:
                header = row
                if bad and not self.replace:  # unreadable header: every row is unusable
                    header = []
                twice = next((name for i, name in enumerate(header) if name in header[:i]),
                             None)
                if twice is not None:  # which of the two is the text? the file is refused
                    yield _error(source.name, source, start,
                                 f"the header of {source.name} names the column {twice!r} "
                                 "twice: no row can be read")
                    return
                continue
            fields: dict[str, Any] = dict(zip(header, row, strict=False))
            rec_id = self.field_id(fields, source, start)
            if bad and not self.replace:
                yield _error(rec_id, source, start, f"invalid UTF-8 {place}")
            elif not header:
                yield _error(rec_id, source, start,
                             f"invalid UTF-8 in the header of {source.name}")
            elif len(row) != len(header):
                yield _error(rec_id, source, start, f"ragged row {place}: {len(row)} cells, "
                                                    f"the header has {len(header)}")
            else:
                value, problem = self.text_of(fields, "column", place)
                yield Record(rec_id, value, fields, source.name, 0, problem, start)

    def _first_line_id(self, header: list[str] | None, line: str, delimiter: str,
                       source: Source, number: int) -> str:
        """The id of a row whose quote never closes, from its first line when the id
        cell is whole there (so it cannot take another row's id); else its line number."""
        if header:
            cells = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
            if self.id_field in header and header.index(self.id_field) < len(cells) - 1:
                return self.field_id(dict(zip(header, cells, strict=False)), source, number)
        return self.line_id(source, number)

    def whole(self, source: Source, fp: IO[bytes]) -> Record:
        data = fp.read()
        nul = data.find(b"\x00")
        if nul >= 0:  # anywhere in the file, not only in the first 8 KiB
            raise _Binary(data.count(b"\n", 0, nul) + 1)
        if data.startswith(_BOM):
            data = data[3:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not self.replace:
                line = data[: exc.start].count(b"\n") + 1
                return _error(source.name, source, 0,
                              f"invalid UTF-8 on line {line} of {source.name}")
            text = data.decode("utf-8", "replace")
        return Record(source.name, text, {}, source.name)


def _read_source(source: Source, fmt: str, per_file: bool, reader: _Reader,
                 warn: Warn | None, stdin: BinaryIO | None) -> Iterator[Record]:
    """The records of one source. Nothing about one file stops the run: a file found by
    a walk that cannot be read (not a regular file, permission denied, binary) is
    skipped with a warning; a named one becomes an error record, and the run goes on."""
    def skip_or_fail(reason: str, message: str | None = None) -> Iterator[Record]:
        if source.walked:
            if warn is not None:
                warn(f"skipping {source.name}: {reason}")
        else:
            yield _error(source.name, source, 0, message or f"{source.name}: {reason}")

    try:
        fp, wrapped = _open(source, stdin)
    except InputError as exc:
        yield from skip_or_fail(skip_reason(exc, source.path), exc.message)
        return
    yielded = 0
    try:
        if b"\x00" in fp.peek(_SNIFF)[:_SNIFF]:
            yield from skip_or_fail("binary data, not text",
                                    f"{source.name} looks like binary data, not text")
            return
        if per_file:
            records: Iterator[Record] = iter([reader.whole(source, fp)])
        elif fmt == "jsonl":
            records = reader.jsonl(source, fp)
        elif fmt in ("csv", "tsv"):
            records = reader.csv(source, fp, "\t" if fmt == "tsv" else ",")
        else:
            records = reader.txt(source, fp)
        for rec in records:
            yielded += 1
            yield rec
    except _Binary as exc:
        if yielded == 0:
            yield from skip_or_fail("binary data, not text",
                                    f"{source.name} looks like binary data, not text")
        else:
            yield _error(f"{source.name}:{exc.line}" if reader.several else str(exc.line),
                         source, exc.line, f"binary data (a NUL byte) on line {exc.line} of "
                         f"{source.name}; the rest of the file is not read")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if yielded == 0:
            yield from skip_or_fail(f"cannot read it ({reason})")
        else:
            yield _error(f"{source.name}:read-error", source, 0,
                         f"cannot read {source.name} after {yielded} records: {reason}")
    finally:
        if not source.is_stdin:
            fp.close()
        elif wrapped:
            fp.detach()  # leave stdin itself open


def _open(source: Source, stdin: BinaryIO | None) -> tuple[io.BufferedReader, bool]:
    """A buffered binary stream (one that can ``peek``), and whether it wraps stdin.

    Files go through ``open_input``: regular files only (a pipe the user named, such
    as ``<(cmd)``, too; never a FIFO found by a walk), and an open never blocks."""
    if not source.is_stdin:
        stream = open_input(source.path, pipes=not source.walked)
        assert isinstance(stream, io.BufferedReader)
        return stream, False
    raw: Any = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text-only stdin (some test harnesses)
        raw = io.BytesIO(sys.stdin.read().encode("utf-8"))
    if isinstance(raw, io.BufferedReader):
        return raw, False
    return io.BufferedReader(raw), True


def _allow_big_cells() -> None:
    """Let a CSV cell be as large as a text (the csv module's default cap is 128 KiB)."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


class _Binary(Exception):
    """A NUL byte on ``line``: the file is binary data."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _no_constant(name: str) -> Any:
    """NaN, Infinity, -Infinity: Python's json reads them, but they are not JSON (and
    would be written back bare, which no JSON reader accepts)."""
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a float (1e999) would become inf."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def _unterminated(lines: list[tuple[int, str, bool]], delimiter: str) -> bool:
    """Whether a row read over several lines ran into the end of the file inside a quote."""
    try:
        for _ in csv.reader((text for _, text, _ in lines), delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        return "end of data" in str(exc) or "EOF" in str(exc)
    return False


def _decode(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), True


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(value: object) -> bool:
    """Whether a parsed JSON value holds a lone surrogate (``"\\ud800"`` is valid JSON
    that no UTF-8 file can hold: writing it would fail), in a key or a string."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _mend(value: Any) -> Any:
    """``value`` with each lone surrogate replaced by U+FFFD (--encoding-errors replace)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend(v) for v in value]
    return value


def _error(rec_id: str, source: Source, line: int, message: str) -> Record:
    return Record(rec_id, None, {}, source.name, 0, message, line)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
