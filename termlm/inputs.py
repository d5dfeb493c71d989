"""Reading user text: stdin and files, with clear errors for binary or undecodable data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

from termlm.errors import InputError


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 (a BOM is dropped, CRLF kept as is); binary or invalid bytes are an InputError."""
    if b"\x00" in data[:8192]:
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
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_text(data, str(path))
