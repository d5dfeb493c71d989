"""Resume: find what an earlier run already wrote, repair its output, skip those records.

``load_done`` reads an existing JSONL, CSV or TSV output file before a
resumed run appends to it:

* a half-written last line (one without its newline, or one that does not
  parse) is cut off the file, with a warning;
* with ``retry_errors`` (the default), the error records of the earlier run
  are removed from the file, so those inputs run again and the finished file
  holds each record exactly once (retried records come after the others);
  without it, an error record counts as done;
* any other unreadable line is removed too, with a warning.

Removing lines rewrites the file atomically (a temporary file beside it,
then ``os.replace``); cutting only the last line truncates in place. A
symlinked output is followed: the file it points to is rewritten, and the
link stays a link. A hard link cannot survive an atomic rewrite: the other
names of a file with several keep the earlier content, and a warning says
so. A run that holds the output's lock (``open_output``) passes ``keep``: the
new file is locked before it replaces the old one, and its descriptor is
handed to ``keep``, so the lock never lapses.

Records are matched by id and occurrence: the k-th input record with id X is
done when the output holds at least k finished records with id X. For
unique ids that is plain id matching; for duplicate ids it assumes the
earlier run wrote them in input order (a retried error can break that, and
the reader warns about duplicate ids for this reason).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shlex
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from termlm.errors import UsageError
from termlm.fileio import WriteError
from termlm.records.types import Record, Warn


class DoneSet:
    """The records an earlier run finished, matched by id and occurrence.

    ``is_done`` is stateful: call it once per input record, in input order.
    """

    def __init__(self, ids: Iterable[str] = (), *, errors_removed: int = 0,
                 repaired: bool = False) -> None:
        self.ids: list[str] = list(ids)
        self.errors_removed = errors_removed
        self.repaired = repaired
        self._counts = Counter(self.ids)
        self._seen: Counter[str] = Counter()

    def is_done(self, record: Record | str) -> bool:
        rec_id = record if isinstance(record, str) else record.id
        self._seen[rec_id] += 1
        return self._seen[rec_id] <= self._counts[rec_id]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Unit:
    """One line (JSONL) or row (CSV) of the output file, as a byte range."""

    start: int
    end: int
    line: int
    kind: str  # "done", "error", "junk", "keep"
    id: str | None
    complete: bool


def load_done(path: str, fmt: str = "jsonl", *, retry_errors: bool = True,
              warn: Warn | None = None, keep: Callable[[int], None] | None = None) -> DoneSet:
    """Read (and repair) an earlier run's output; see the module docstring.

    A missing or empty file means nothing is done yet. ``keep`` gets the
    locked descriptor of a rewritten file (see the module docstring).
    """
    if fmt not in ("jsonl", "csv", "tsv"):
        raise UsageError(f"cannot resume into {fmt} output: use jsonl, csv or tsv")
    if path in ("", "-"):
        raise UsageError("resuming needs an output file, not stdout")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return DoneSet()
    ids: list[str] = []
    drop: list[tuple[int, int]] = []
    errors = 0
    cut: int | None = None
    with open(path, "rb") as fp:
        _check_format(path, fp, fmt)
        units = _scan_jsonl(fp) if fmt == "jsonl" else _scan_csv(fp, fmt)
        for unit, final in _with_final(units):
            if final and (not unit.complete or unit.kind == "junk"):
                cut = unit.start
                _notify(warn, f"{path}: removed a half-written last line (line {unit.line})")
            elif unit.kind == "done" and unit.id is not None:
                ids.append(unit.id)
            elif unit.kind == "error" and unit.id is not None:
                if retry_errors:
                    drop.append((unit.start, unit.end))
                    errors += 1
                else:
                    ids.append(unit.id)
            elif unit.kind == "junk":
                drop.append((unit.start, unit.end))
                _notify(warn, f"{path}: removed unreadable line {unit.line}")
    try:
        if drop:
            links = os.stat(path).st_nlink
            if links > 1:  # os.replace makes a new file: only this name gets the repair
                _notify(warn, f"{path} has {links} hard links: the repaired file replaces "
                        "this name only; the other names keep the earlier content")
            _rewrite(path, drop, cut, keep)
        elif cut is not None:
            os.truncate(path, cut)
    except OSError as exc:
        raise WriteError(f"cannot repair {path} for --resume: {exc.strerror or exc}") from None
    if errors:
        _notify(warn, f"{path}: retrying {errors} record{'s' if errors != 1 else ''} "
                      "that failed before")
    return DoneSet(ids, errors_removed=errors, repaired=cut is not None or bool(drop))


def resume_hint(argv: list[str], from_stdin: bool) -> str:
    """What to run to resume ``argv``; when the records came from stdin, the command
    alone would wait on the terminal, so it says to pipe the same input in again."""
    command = resume_command(argv)
    if not from_stdin:
        return command
    return f"<the same input> | {command}  (the input was stdin: pipe it in again)"


def resume_command(argv: list[str]) -> str:
    """The shell command that resumes ``argv``: ``--resume`` added (before ``--``) if missing."""
    args = list(argv)
    if "--resume" not in args:
        at = args.index("--") if "--" in args else len(args)
        args.insert(at, "--resume")
    return shlex.join(args)


def _check_format(path: str, fp: IO[bytes], fmt: str) -> None:
    """Refuse, before anything is removed, an output written in another format: read as
    this one, every line of it would be junk to remove (or a header to misread)."""
    first = b""
    for _ in range(100):  # the first line with something on it
        first = fp.readline(1 << 20)
        if first.strip() or not first:
            break
    fp.seek(0)
    if not first.endswith(b"\n"):
        return  # a half-written first line (or none): the repair cuts it
    line = first.decode("utf-8", "replace").lstrip("\ufeff").strip()
    if fmt == "jsonl":
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        what = "a JSON record"
        like = " (it looks like CSV or TSV)" if "id" in line and ("," in line or "\t" in line) \
            else ""
    else:
        cells = next(csv.reader([line], delimiter="\t" if fmt == "tsv" else ","), [])
        ok = not line.startswith("{") and "id" in cells
        what = f"a {fmt.upper()} header with an id column"
        like = " (it looks like JSONL)" if line.startswith("{") else ""
    if not ok:
        raise UsageError(f"cannot resume {path} as {fmt.upper()}: its first line is not "
                         f"{what}{like}; nothing was changed",
                         hint="resume with the --output-format it was written with")


def _scan_jsonl(fp: IO[bytes]) -> Iterator[_Unit]:
    pos = 0
    for number, raw in enumerate(fp, 1):
        start, pos = pos, pos + len(raw)
        complete = raw.endswith(b"\n")
        if not raw.strip():
            yield _Unit(start, pos, number, "keep", None, complete)
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError
            yield _Unit(start, pos, number, "junk", None, complete)
            continue
        if not isinstance(obj, dict):
            yield _Unit(start, pos, number, "junk", None, complete)
        elif obj.get("id") is None:
            yield _Unit(start, pos, number, "keep", None, complete)
        else:
            kind = "error" if obj.get("error") else "done"
            yield _Unit(start, pos, number, kind, str(obj["id"]), complete)


class _Lines:
    """Decoded lines for the csv module, keeping count of the bytes consumed."""

    def __init__(self, fp: IO[bytes]) -> None:
        self.fp = fp
        self.pos = 0
        self.complete = True

    def __iter__(self) -> Iterator[str]:
        for raw in self.fp:
            self.pos += len(raw)
            self.complete = raw.endswith(b"\n")
            yield raw.decode("utf-8", "replace")


def _scan_csv(fp: IO[bytes], fmt: str) -> Iterator[_Unit]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    lines = _Lines(fp)
    rows = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",")
    header: list[str] | None = None
    start = 0
    while True:
        line = rows.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error:
            yield _Unit(start, lines.pos, line, "junk", None, lines.complete)
            start = lines.pos
            continue
        unit_start, start = start, lines.pos
        if not row:
            yield _Unit(unit_start, start, line, "keep", None, lines.complete)
        elif header is None:
            header = [row[0].removeprefix("\ufeff"), *row[1:]]
            yield _Unit(unit_start, start, line, "keep", None, lines.complete)
        elif len(row) != len(header):
            yield _Unit(unit_start, start, line, "junk", None, lines.complete)
        elif "id" not in header or not row[header.index("id")]:
            yield _Unit(unit_start, start, line, "keep", None, lines.complete)
        else:
            failed = "error" in header and row[header.index("error")] != ""
            yield _Unit(unit_start, start, line, "error" if failed else "done",
                        row[header.index("id")], lines.complete)


def _with_final(units: Iterator[_Unit]) -> Iterator[tuple[_Unit, bool]]:
    previous: _Unit | None = None
    for unit in units:
        if previous is not None:
            yield previous, False
        previous = unit
    if previous is not None:
        yield previous, True


def _rewrite(path: str, drop: list[tuple[int, int]], cut: int | None,
             keep: Callable[[int], None] | None = None) -> None:
    """Rewrite ``path`` without the ``drop`` byte ranges and anything from ``cut`` on.

    A symlink is followed: its target is replaced, the link kept."""
    real = os.path.realpath(path)
    end = os.path.getsize(real) if cut is None else cut
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix=".termlm-", suffix=".tmp")
    try:
        with open(real, "rb") as src, os.fdopen(fd, "wb", closefd=False) as dst:
            pos = 0
            for start, stop in [*drop, (end, end)]:
                _copy(src, dst, pos, min(start, end))
                pos = stop
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copymode(real, tmp)
        if keep is not None:  # locked before anyone can open it under the real name
            with contextlib.suppress(OSError):  # a file system without flock: as unlocked
                fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(tmp, real)
    except BaseException:
        os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if keep is not None:
        keep(fd)
    else:
        os.close(fd)


def _copy(src: IO[bytes], dst: IO[bytes], start: int, stop: int) -> None:
    src.seek(start)
    left = stop - start
    while left > 0:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            return
        dst.write(chunk)
        left -= len(chunk)


def _notify(warn: Warn | None, message: str) -> None:
    if warn is not None:
        warn(message)
