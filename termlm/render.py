"""Show a streamed reply: plain text for pipes, live Markdown on a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from termlm.engine.types import Completion, Delta, StreamEvent


class TextSink(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


@dataclass
class StreamResult:
    text: str
    completion: Completion | None  # None when interrupted
    interrupted: bool


def stream_plain(events: Iterator[StreamEvent], out: TextSink | None = None) -> StreamResult:
    """Write deltas as they come, flushed, so a pipe consumer sees them at once."""
    stream: TextSink = out or sys.stdout
    pieces: list[str] = []
    completion: Completion | None = None
    try:
        for event in events:
            if isinstance(event, Delta):
                pieces.append(event.text)
                stream.write(event.text)
                stream.flush()
            else:
                completion = event
    except KeyboardInterrupt:
        _close(events)
        return StreamResult("".join(pieces), None, True)
    return StreamResult("".join(pieces), completion, False)


def stream_markdown(events: Iterator[StreamEvent], *, no_color: bool = False) -> StreamResult:
    """Render the growing reply as Markdown in place (a terminal only)."""
    from rich.console import Console
    from rich.live import Live
    from rich.markdown import Markdown

    console = Console(file=sys.stdout, no_color=no_color, highlight=False)
    pieces: list[str] = []
    completion: Completion | None = None
    interrupted = False
    with Live(console=console, refresh_per_second=10, vertical_overflow="visible",
              auto_refresh=False) as live:
        try:
            for event in events:
                if isinstance(event, Delta):
                    pieces.append(event.text)
                    live.update(Markdown("".join(pieces)), refresh=True)
                else:
                    completion = event
        except KeyboardInterrupt:
            _close(events)
            interrupted = True
        live.update(Markdown("".join(pieces)), refresh=True)
    return StreamResult("".join(pieces), completion, interrupted)


def _close(events: Iterator[StreamEvent]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
