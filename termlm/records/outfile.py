"""The one place that opens an output file: checked and locked before the model loads.

``open_output`` runs before any model is loaded, so that a mistake costs nothing:

* **never an input.** An output that is the same file as an input (the same
  path, a symlink to it, or a hard link: the same device and inode; stdin
  redirected from it counts too) is a usage error, exit 2. A file found by
  walking a directory or matching a glob that is the output is not an input
  at all: it is left out of the inputs, with a notice.
* **writable.** The file is opened (created if need be) at once: a missing
  directory, a directory, a read-only place is a one-line ``cannot write``
  error, exit 1. An existing file is not emptied yet: that waits until the
  run starts writing (``OutputFile.writer``), so a model that fails to load
  loses nothing. A file this run created and never wrote to is removed again.
* **one writer.** A regular file is locked (``flock``, exclusive, not
  waiting beyond half a second, the time a killed run takes to let go) on the
  file itself, from here until the writer closes. A second run on the same
  file stops at once: ``FILE is being written by another termlm run (pid N)``,
  exit 1.

Why the file itself and not a ``FILE.lock`` beside it: nothing is left lying
around, and a lock can never outlive its file. Resume rewrites the file
through a temporary file and ``os.replace`` (a new inode), so it locks the new
file *before* the rename and hands that descriptor back here (``OutputFile.keep``):
whoever opens the path finds a locked file either way. A run that opened the
old file just before the rename and got its lock just after checks, once
locked, that the path still names the file it locked, and otherwise tries
again.

Other kinds of output (``/dev/null``, a FIFO, a terminal) are opened but not
locked or resumed. A FIFO with no reader yet is waited for, with a notice on
stderr first (``waiting for a reader on the FIFO PATH``), not in silence.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TextIO

from termlm.errors import TermlmError, UsageError
from termlm.fileio import cannot_write
from termlm.output import notice
from termlm.records.types import Source, Warn
from termlm.records.writers import RecordWriter, WriterFormat, writer_for_file

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
_TRIES = 20
_GRACE_S = 0.5  # a run killed with SIGKILL may take a moment to let go of its lock


class OutputBusy(TermlmError):
    """Another run holds the output file's lock."""


class OutputFile:
    """An output opened by ``open_output``: stdout, or a checked, locked file."""

    def __init__(self, path: str | None, fmt: WriterFormat, *, append: bool,
                 fd: int | None = None, created: bool = False,
                 inputs: Sequence[Source] = ()) -> None:
        self.path = path
        self.fmt = fmt
        self.append = append
        self.inputs = list(inputs)
        self._fd = fd
        self._created = created
        self._started = False
        self._writer: RecordWriter | None = None

    def writer(self, *, columns: list[str] | None = None, durable: bool = False,
               stream: TextIO | None = None, warn: Warn | None = None) -> RecordWriter:
        """The record writer; from here on the run owns the file (emptied unless appending)."""
        if self._writer is not None:
            raise RuntimeError("OutputFile.writer() called twice")
        if self.path is None:
            from termlm.output import stdout_name

            self._writer = RecordWriter(stream if stream is not None else sys.stdout, self.fmt,
                                        columns=columns, warn=warn,
                                        name="stdout" if stream is not None else stdout_name())
            return self._writer
        fd = self._take_fd()
        self._started = True
        try:
            self._writer = writer_for_file(fd, self.path, self.fmt, append=self.append,
                                           columns=columns, durable=durable, warn=warn)
        except OSError as exc:
            raise cannot_write(self.path, exc) from None
        return self._writer

    def keep(self, fd: int) -> None:
        """Resume replaced the file by a new one, already locked on ``fd``: write to it."""
        old, self._fd = self._fd, fd
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Close the writer (releasing the lock), or give the file up untouched."""
        if self._writer is not None:
            self._writer.close()
            return
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._created and not self._started and self.path is not None \
                    and os.fstat(fd).st_size == 0:
                real = os.path.realpath(self.path)  # a dangling link keeps its link
                if _same_file(fd, real):
                    os.unlink(real)  # created for nothing: leave no empty file behind
        except OSError:
            pass
        finally:
            os.close(fd)

    def _take_fd(self) -> int:
        fd, self._fd = self._fd, None
        assert fd is not None
        return fd

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(OSError, TermlmError):
            self.close()  # already failing: closing must not replace that error


def open_output(path: str | None, fmt: WriterFormat, *, append: bool = False,
                inputs: Sequence[Source] = (), warn: Warn | None = None) -> OutputFile:
    """Check and open the output (``None`` or ``-``: stdout); see the module docstring.

    ``OutputFile.inputs`` is ``inputs`` without walked files that are the output.
    """
    if path is None or path == "-":
        return OutputFile(None, fmt, append=append, inputs=inputs)
    kept = _check_inputs(path, inputs, warn)
    for _ in range(_TRIES):
        existed = os.path.exists(path)
        try:
            fd = _open(path, warn)
        except OSError as exc:
            raise cannot_write(path, exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return OutputFile(path, fmt, append=append, fd=fd, created=not existed,
                                  inputs=kept)
            _lock(fd, path)
            if _same_file(fd, path):  # not replaced (by a resume) while we waited
                return OutputFile(path, fmt, append=append, fd=fd, created=not existed,
                                  inputs=kept)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OutputBusy(f"{path} keeps changing under another termlm run: try again")


def _open(path: str, warn: Warn | None) -> int:
    """``os.open`` that says so, rather than hanging silently, when the output is a
    FIFO nobody reads yet (opening it waits for a reader; Ctrl-C stops the wait)."""
    try:
        fd = os.open(path, _OPEN_FLAGS | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        (warn or notice)(f"waiting for a reader on the FIFO {path}")
        fd = os.open(path, _OPEN_FLAGS, 0o666)
    os.set_blocking(fd, True)
    return fd


def check_side_output(path: str, flag: str, *, output: str | None = None,
                      inputs: Sequence[Source] = (), files: Sequence[str] = ()) -> None:
    """Before any model loads: a file written whole at the end of a run (``--summary-json``,
    ``-o FILE.npy``, ``--report``) is not an input (``inputs``, or the plain paths
    ``files``), not the ``-o`` output, and can be written."""
    import tempfile

    if output not in (None, "-") and _same_path(path, output):
        raise UsageError(f"{flag} {path} is also the output (-o): one would replace the "
                         "other", hint=f"give {flag} another file")
    _check_inputs(path, inputs, None, flag=flag)
    for name in files:
        if _same_path(path, name):
            raise UsageError(f"{flag} {path} is also an input ({name}): writing it would "
                             "destroy the input", hint="write to another file")
    if os.path.isdir(path):
        raise cannot_write(path, IsADirectoryError(errno.EISDIR, "Is a directory"))
    folder = os.path.dirname(path) or "."
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{os.path.basename(path)}."):
            pass
    except OSError as exc:
        raise cannot_write(path, exc) from None


def _same_path(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_inputs(path: str, inputs: Sequence[Source], warn: Warn | None,
                  flag: str = "the output") -> list[Source]:
    try:
        out = os.stat(path)
    except OSError:
        return list(inputs)  # not there yet (or unreachable: opening it will say why)
    if not stat.S_ISREG(out.st_mode):
        return list(inputs)
    kept: list[Source] = []
    for source in inputs:
        if not _is(source, out):
            kept.append(source)
        elif source.walked:
            if warn is not None:
                warn(f"skipping {source.name}: it is the output file")
        else:
            where = "stdin" if source.is_stdin else source.name
            raise UsageError(f"{flag} {path} is also an input ({where}): writing it "
                             "would destroy the input", hint="write to another file")
    return kept


def _is(source: Source, out: os.stat_result) -> bool:
    try:
        info = os.fstat(sys.stdin.fileno()) if source.is_stdin else os.stat(source.path)
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (out.st_dev, out.st_ino)


def _lock(fd: int, path: str) -> None:
    deadline = time.monotonic() + _GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        except OSError:
            return  # a file system without flock (some network mounts): run unlocked
    pid = lock_holder(fd)
    who = f" (pid {pid})" if pid is not None else ""
    raise OutputBusy(f"{path} is being written by another termlm run{who}",
                     hint="wait for it to finish, or write to another file")


def _same_file(fd: int, path: str) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino)


def lock_holder(fd: int) -> int | None:
    """The pid holding a ``flock`` on the file open at ``fd`` (Linux ``/proc/locks``)."""
    info = os.fstat(fd)
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fp:
            lines = fp.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 5888 fe:00:2146338 0 EOF"; waiters have "->" after "1:"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key:
            try:
                pid = int(parts[4])
            except ValueError:
                continue
            if pid != os.getpid():
                return pid
    return None
