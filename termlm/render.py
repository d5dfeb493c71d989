"""Show a streamed reply: plain text for pipes, live Markdown on a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from termlm.engine.types import Completion, Delta, StreamEvent

if TYPE_CHECKING:
    from rich.console import Console


class TextSink(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


@dataclass
class StreamResult:
    text: str
    completion: Completion | None  # None when interrupted
    interrupted: bool


class PipeClosed(BrokenPipeError):
    """The reader went away mid-reply (``| head``): a BrokenPipeError (a quiet exit at the
    CLI's edge) that carries what was written before, for the log."""

    def __init__(self, result: StreamResult) -> None:
        super().__init__("the reader closed the pipe")
        self.result = result


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
    except BrokenPipeError:
        _close(events)
        raise PipeClosed(StreamResult("".join(pieces), None, True)) from None
    return StreamResult("".join(pieces), completion, False)


def stream_markdown(events: Iterator[StreamEvent], *, no_color: bool = False,
                    console: Console | None = None) -> StreamResult:
    """Render the growing reply as Markdown on a terminal, each line reaching the
    scrollback once (see termlm.markdown_stream)."""
    from rich.console import Console
    from rich.live import Live

    from termlm.markdown_stream import MarkdownView

    console = console or Console(file=sys.stdout, no_color=no_color, highlight=False)
    completion: Completion | None = None
    interrupted = False
    live: Live | None = None  # started at the first text, so a spinner before it has the line
    view: MarkdownView | None = None
    try:
        for event in events:
            if isinstance(event, Delta):
                if view is None:
                    live = Live(console=console, auto_refresh=False, vertical_overflow="crop",
                                redirect_stdout=False, redirect_stderr=False)
                    live.start()
                    view = MarkdownView(console, live)
                view.feed(event.text)
            else:
                completion = event
    except KeyboardInterrupt:
        _close(events)
        interrupted = True
    finally:
        if live is not None and view is not None:
            view.finish()
            live.stop()
    return StreamResult(view.text if view else "", completion, interrupted)


def _close(events: Iterator[StreamEvent]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
