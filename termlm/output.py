"""Streams and consoles: stdout is data, stderr is talk.

Rich is imported lazily so that ``termlm --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def err_console() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr, no_color=no_color(), highlight=False, soft_wrap=True)


def out_console() -> Console:
    from rich.console import Console

    return Console(file=sys.stdout, no_color=no_color(), highlight=False)


def notice(message: str) -> None:
    """A one-line notice on stderr (dim on a terminal)."""
    if is_tty(sys.stderr) and not no_color():
        sys.stderr.write(f"\x1b[2m{message}\x1b[0m\n")
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()


def error_line(message: str, hint: str | None = None) -> None:
    color = is_tty(sys.stderr) and not no_color()
    prefix = "\x1b[31mtermlm: error:\x1b[0m" if color else "termlm: error:"
    sys.stderr.write(f"{prefix} {message}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")
    sys.stderr.flush()


def silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
