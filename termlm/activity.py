"""What termlm is doing while nothing else shows: a spinner line on stderr.

Only on a terminal: in a pipe or a log file it prints nothing at all. The line
is transient (rich's Status): it disappears when the work it names is done.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, TypeVar

from termlm.output import is_tty, no_color

if TYPE_CHECKING:
    from rich.live import Live
    from rich.spinner import Spinner

T = TypeVar("T")


class Activity:
    """``say(text)`` shows or changes the line; ``stop()`` removes it."""

    def __init__(self, stream: IO[str] | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = is_tty(self.stream) if enabled is None else enabled
        self._live: Live | None = None
        self._spinner: Spinner | None = None

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self._live is None or self._spinner is None:
            from rich.console import Console
            from rich.live import Live
            from rich.spinner import Spinner

            console = Console(file=self.stream, no_color=no_color(), highlight=False,
                              force_terminal=True)  # enabled: it is one, or said to be
            self._spinner = Spinner("dots", text, style="dim")
            # stderr notices printed meanwhile go above the line; stdout is left alone
            # (it is data, and never goes through the talk console)
            self._live = Live(self._spinner, console=console, transient=True,
                              refresh_per_second=12.5, redirect_stdout=False)
            self._live.start()
        else:
            self._spinner.update(text=text)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._spinner = None

    def __enter__(self) -> Activity:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def until_first(items: Iterator[T], activity: Activity, text: str) -> Iterator[T]:
    """Pass ``items`` through, showing ``text`` until the first one arrives.

    The wrapper keeps ``close()`` working, so a caller that closes the stream on
    Ctrl-C still closes the engine's stream underneath.
    """
    return _UntilFirst(items, activity, text)


class _UntilFirst(Iterator[T]):
    def __init__(self, items: Iterator[T], activity: Activity, text: str) -> None:
        self._items = items
        self._activity = activity
        self._text = text
        self._started = False

    def __next__(self) -> T:
        if not self._started:
            self._started = True
            self._activity.say(self._text)
            try:
                return next(self._items)
            finally:
                self._activity.stop()
        return next(self._items)

    def close(self) -> None:
        self._activity.stop()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()
