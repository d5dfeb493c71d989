"""Reading user text: stdin and files, with clear errors for binary or undecodable data."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from termlm.errors import InputError


class NotRegular(InputError):
    """A path that is not a regular file (a FIFO, a device, a socket, a directory).

    ``kind`` says what it is, in words ("a FIFO")."""

    def __init__(self, message: str, *, kind: str = "not a regular file") -> None:
        super().__init__(message)
        self.kind = kind


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words ("a FIFO"); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def is_pipe(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a pipe (a FIFO, ``<(cmd)``, ``/dev/stdin`` on a pipe)."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def open_input(path: str | os.PathLike[str], *, pipes: bool = False) -> BinaryIO:
    """The one way termlm opens a file it reads: a buffered binary stream.

    Only regular files: the path is opened without blocking (``O_NONBLOCK``, so a
    FIFO with no writer cannot hang the open), checked with ``fstat`` on the open
    descriptor (no race with a rename), and anything else is a ``NotRegular`` error
    naming what it is. Other failures (missing, permission denied) are an
    ``InputError``.

    ``pipes`` lets a pipe the user named through (``<(cmd)``, ``/dev/stdin``, a
    FIFO given as an argument), read as a stream like stdin: the open waits for
    its writer, as ``cat`` does (Ctrl-C stops it). Devices and sockets never are.
    A pipe is never opened without blocking and then reopened: a writer that
    came in between would lose what it wrote.
    """
    name = os.fspath(path)
    if "\0" in name:  # os.stat and os.open raise ValueError, not OSError, for these
        raise InputError(f"{name!r}: a file name cannot hold a NUL byte")
    stream = pipes and is_pipe(name)
    try:
        fd = os.open(name, _READ if stream else _READ | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise NotRegular(f"{name} is a directory, not a file", kind="a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        kind = file_kind(mode)
        if kind == "a directory":
            raise NotRegular(f"{name} is a directory, not a file", kind=kind)
        if kind is not None and not (stream and stat.S_ISFIFO(mode)):
            raise NotRegular(f"{name} is {kind}, not a regular file", kind=kind)
        if not stream and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=1 << 16)
    except BaseException:
        os.close(fd)
        raise


def skip_reason(exc: InputError, path: str | os.PathLike[str]) -> str:
    """Why a file found by a walk is skipped, without its name: ``a FIFO, not a
    regular file``, ``cannot read it: Permission denied``."""
    name = os.fspath(path)
    return (exc.message.replace(f"cannot read {name}: ", "cannot read it: ")
            .replace(f"{name} is ", "").replace(f"{name}: ", ""))


def read_input_bytes(path: str | os.PathLike[str], *, pipes: bool = False) -> bytes:
    """A regular file's bytes (or a named pipe's, with ``pipes``), through ``open_input``."""
    with open_input(path, pipes=pipes) as fp:
        try:
            return fp.read()
        except OSError as exc:
            raise InputError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 (a BOM is dropped, CRLF kept as is); binary or invalid bytes are an InputError."""
    if b"\x00" in data:
        raise InputError(f"{source} looks like binary data, not text")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{source} is not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line})",
        ) from None


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (ValueError, AttributeError):
        return True  # closed or missing stdin: nothing to read


def read_stdin() -> str:
    stream: BinaryIO | None = getattr(sys.stdin, "buffer", None)
    try:
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    except OSError as exc:
        raise InputError(f"cannot read stdin: {exc.strerror or exc}") from None
    return decode_text(data, "stdin")


def read_file(path: Path) -> str:
    return decode_text(read_input_bytes(path), str(path))


def read_text_input(path: str | os.PathLike[str]) -> str:
    """A small file termlm reads whole (labels, schema, template, conversation) as UTF-8,
    through ``open_input``: a named pipe is read, a device is refused, nothing blocks.

    Raises as ``Path.read_text`` does, so callers keep their messages: FileNotFoundError
    when missing, OSError (with the reason) when it cannot be read, UnicodeDecodeError."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    try:
        data = read_input_bytes(path, pipes=True)
    except InputError as exc:
        raise OSError(exc.message) from None
    return data.decode("utf-8")
