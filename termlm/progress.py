"""Progress of a record run, on stderr.

On a terminal: a rich progress bar that counts records as they complete (in
whatever order the engine finishes them, written yet or not), shows how many
are in flight, and an ETA recomputed at every refresh from the rate so far, so
it keeps moving while a slow batch is out. Elsewhere (``--progress`` into a log
file): one plain line every few seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from termlm.output import is_tty, no_color

if TYPE_CHECKING:
    from rich.progress import Progress, Task
    from rich.text import Text

PLAIN_EVERY_S = 5.0  # a line per this many seconds in a log file


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else \
        f"{rest // 60}:{rest % 60:02d}"


class RunProgress:
    """Counts for one run; thread-safe (the engine may report from its own thread)."""

    def __init__(self, enabled: bool, total: int | None, *, stream: IO[str] | None = None,
                 label: str = "records") -> None:
        self.enabled = enabled
        self.total = total
        self.stream = stream or sys.stderr
        self.label = label
        self.completed = 0  # done this run: answered or failed, written or not
        self.failed = 0
        self.skipped = 0  # done by an earlier run (resume)
        self.in_flight = 0
        self.tokens = 0
        self.written = 0
        self._lock = threading.Lock()
        self._started: float | None = None  # the first record started (not the model load)
        self._bar: Progress | None = None
        self._task_id: Any = None
        self._last_plain = 0.0

    # events

    def start(self) -> None:
        if not self.enabled:
            return
        if is_tty(self.stream):
            self._bar = self._make_bar()
            self._task_id = self._bar.add_task(self.label, total=self.total)
            self._bar.start()
        self._refresh(force=True)

    def skip(self) -> None:
        with self._lock:
            self.skipped += 1
        self._refresh()

    def submitted(self) -> None:
        with self._lock:
            self.in_flight += 1
            if self._started is None:
                self._started = time.perf_counter()
        self._refresh()

    def completed_one(self, *, failed: bool, in_flight: bool = True) -> None:
        """A record is done (``in_flight``: it was one of the submitted ones)."""
        with self._lock:
            if self._started is None:
                self._started = time.perf_counter()
            self.completed += 1
            self.failed += failed
            if in_flight:
                self.in_flight = max(0, self.in_flight - 1)
        self._refresh()

    def add_tokens(self, n: int) -> None:
        with self._lock:
            self.tokens += n

    def finish(self) -> None:
        if self._bar is not None:
            self._refresh(force=True)
            self._bar.stop()
            self._bar = None

    # numbers

    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started

    def rate(self) -> float:
        elapsed = self.elapsed()
        return self.completed / elapsed if elapsed > 0 and self.completed else 0.0

    def eta(self) -> float | None:
        """Seconds left, from the rate so far: recomputed whenever it is asked, so it
        grows while nothing completes and drops when something does."""
        if self.total is None:
            return None
        rate = self.rate()
        left = max(self.total - self.skipped - self.completed, 0)
        if left == 0:
            return 0.0
        return left / rate if rate > 0 else None

    def line(self) -> str:
        done = self.completed + self.skipped
        head = f"{done}/{self.total}" if self.total is not None else f"{done}"
        eta = self.eta()
        parts = [f"{head} {self.label}", f"{self.in_flight} in flight", f"{self.failed} failed",
                 f"{self.rate():.2f} rec/s"]
        if self.elapsed() > 0:
            parts.append(f"{self.tokens / self.elapsed():.0f} tok/s")
        parts.append(f"ETA {_clock(eta)}" if eta is not None else "ETA -:--")
        return ", ".join(parts)

    # display

    def _refresh(self, force: bool = False) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task_id, completed=self.completed + self.skipped,
                             in_flight=self.in_flight, failed=self.failed)
            return
        now = time.monotonic()
        if force or now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def _make_bar(self) -> Progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        run = self

        class Numbers(ProgressColumn):
            max_refresh = None

            def render(self, task: Task) -> Text:
                eta = run.eta()
                tok = f"{run.tokens / run.elapsed():.0f} tok/s  " if run.elapsed() > 0 else ""
                return Text(f"{run.in_flight} in flight  {run.failed} failed  "
                            f"{run.rate():.2f} rec/s  {tok}"
                            f"ETA {_clock(eta) if eta is not None else '-:--'}")

        console = Console(file=self.stream, no_color=no_color(), highlight=False)
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), Numbers(), TimeElapsedColumn(),
                        console=console, refresh_per_second=4, transient=True,
                        redirect_stdout=False)

