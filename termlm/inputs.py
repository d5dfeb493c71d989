"""Reading user text: stdin and files, with clear errors for binary or undecodable data."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from termlm.errors import InputError


class NotRegular(InputError):
    """A path that is not a regular file (a FIFO, a device, a socket, a directory)."""


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words ("a FIFO"); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_input(path: str | os.PathLike[str], *, pipes: bool = False) -> BinaryIO:
    """The one way termlm opens a file it reads: a buffered binary stream.

    Only regular files: the path is opened without blocking (``O_NONBLOCK``, so a
    FIFO with no writer cannot hang the open), checked with ``fstat`` on the open
    descriptor (no race with a rename), and anything else is a ``NotRegular`` error
    naming what it is. ``pipes`` lets an explicitly named pipe through (``<(cmd)``,
    ``/dev/stdin``), read as a stream like stdin; devices and sockets never are.
    Other failures (missing, permission denied) are an ``InputError``.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise NotRegular(f"{name} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        kind = file_kind(mode)
        if kind == "a directory":
            raise NotRegular(f"{name} is a directory, not a file")
        if kind is not None and not (pipes and stat.S_ISFIFO(mode)):
            raise NotRegular(f"{name} is {kind}, not a regular file")
        if kind is not None:  # a pipe the user named: wait for its writer, as cat does
            os.close(fd)
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=1 << 16)
    except BaseException:
        os.close(fd)
        raise


def read_input_bytes(path: str | os.PathLike[str]) -> bytes:
    """A regular file's bytes, through ``open_input``."""
    with open_input(path) as fp:
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
