"""Streams and consoles: stdout is data, stderr is talk.

Rich is imported lazily so that ``termlm --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
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
    """After EPIPE or a failed write: point stdout at /dev/null so the interpreter's final
    flush is quiet (no "Exception ignored ... BrokenPipeError" at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def guard_stdout(run: Callable[[], object]) -> None:
    """Run the whole CLI so that a failed write to stdout that no command caught (``--help``,
    ``--version``, the interpreter's last flush) is one line and exit 1, EPIPE a quiet exit:
    the commands' own edge is ``termlm.cli.common.handles_errors``."""
    try:
        try:
            run()
        except SystemExit:
            sys.stdout.flush()
            raise
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        sys.exit(0)
    except OSError as exc:
        message = io_error_message(exc)
        if message is None:
            raise
        silence_stdout()
        error_line(message)
        sys.exit(1)


def settle_stdout() -> None:
    """Before exiting on an error: flush stdout, or silence it if that fails too."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        silence_stdout()


def stdout_name() -> str:
    """How errors name stdout: ``stdout``, with the file it goes to when that is one."""
    try:
        target = os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
    except (OSError, ValueError, AttributeError):
        return "stdout"
    return f"stdout ({target})" if target.startswith("/") else "stdout"


def io_error_message(exc: OSError) -> str | None:
    """The one line for an I/O error that reached the CLI edge, or None when it is not one
    (a bug, a network error: those keep their traceback).

    An error without a file name is a write to stdout (the only stream commands write
    without naming it); one with a file name names it.
    """
    from termlm.fileio import WRITE_ERRNOS

    if exc.errno not in WRITE_ERRNOS:
        return None
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {reason}"
    return f"cannot write {stdout_name()}: {reason}"


class StdoutSink:
    """``sys.stdout`` for streamed text whose write errors must not pass for other errors:
    a failed write is a ``WriteError`` (EPIPE stays a ``BrokenPipeError``)."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._error(exc) from None

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._error(exc) from None

    @staticmethod
    def _error(exc: OSError) -> Exception:
        from termlm.fileio import cannot_write

        error = cannot_write(stdout_name(), exc)
        silence_stdout()
        return error


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 segment``, ``4 segments`` (``many`` for irregular plurals)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
