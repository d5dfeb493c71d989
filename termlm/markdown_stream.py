"""Live Markdown that renders each line once.

A live view redraws its whole region on every update; whatever has scrolled
above the top of the terminal cannot be redrawn, so every redraw of a region
taller than the screen leaves another copy in the scrollback. This view keeps
only the unfinished end of the reply live:

- the text is split into blocks at blank lines outside fenced code; a block is
  finished once the next one has begun, and is printed once, for good;
- the live region shows the last, unfinished block; when that alone grows
  taller than the screen, its top lines are printed for good too, and only the
  rest stays live.

So the live region never outgrows the terminal, and each line of the reply
reaches the scrollback exactly once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.live import Live
    from rich.segment import Segment

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
REFRESH_S = 0.05  # at most 20 redraws a second: each one re-renders the unfinished block


def split_finished(text: str) -> tuple[list[str], str]:
    """Split ``text`` into finished blocks and the unfinished rest.

    A block ends at a blank line outside fenced code, once a later line has begun
    that starts a new block (not an indented continuation, which may still belong
    to a list item or the block above). A closed code fence ends its block at once.
    """
    lines = text.split("\n")
    blocks: list[str] = []
    start = 0
    fence: str | None = None
    i = 0
    last = len(lines) - 1  # lines[last] may be partial: it can start a block, not end one
    while i < last:
        line = lines[i]
        match = _FENCE.match(line)
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
                _take(blocks, lines, start, i + 1)
                start = i + 1
        elif match:
            if _blank(lines[start:i]):
                start = i  # leading blank lines belong to nothing
            else:
                _take(blocks, lines, start, i)
                start = i
            fence = match.group(1)
        elif not line.strip():
            nxt = _next_text(lines, i + 1, last)
            if nxt is not None and not nxt[:1].isspace() and not _blank(lines[start:i]):
                _take(blocks, lines, start, i)
                start = i + 1
        i += 1
    rest = "\n".join(lines[start:])
    return blocks, rest


def _blank(lines: list[str]) -> bool:
    return all(not line.strip() for line in lines)


def _next_text(lines: list[str], i: int, last: int) -> str | None:
    """The next non-blank line (the partial last one too: it has begun), or None."""
    while i <= last:
        if lines[i].strip():
            return lines[i]
        i += 1
    return None


def _take(blocks: list[str], lines: list[str], start: int, end: int) -> None:
    block = "\n".join(lines[start:end]).strip("\n")
    if block.strip():
        blocks.append(block)


def _text(line: list[Segment]) -> str:
    return "".join(segment.text for segment in line)


class _Lines:
    """Lines already rendered, as a renderable (printed exactly as measured)."""

    def __init__(self, lines: Iterable[list[Segment]]) -> None:
        self.lines = list(lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.segment import Segment

        for line in self.lines:
            yield from line
            yield Segment.line()


class MarkdownView:
    """Feed it the growing reply; it prints finished parts once and keeps the rest live."""

    def __init__(self, console: Console, live: Live) -> None:
        self.console = console
        self.live = live
        self.text = ""
        self.blocks_done = 0  # finished blocks already printed
        self.tail_printed = 0  # lines of the unfinished block already printed (it overflowed)
        self._last_refresh = 0.0

    def feed(self, text: str) -> None:
        self.text += text
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_S:
            self._last_refresh = now
            self._show(final=False)

    def finish(self) -> None:
        self._show(final=True)

    def _render(self, markdown: str) -> list[list[Segment]]:
        from rich.markdown import Markdown

        options = self.console.options
        lines = self.console.render_lines(Markdown(markdown), options, pad=False)
        # rich puts an empty line before a list, quote or table and after a rule when it
        # starts or ends the document; blocks rendered one by one get exactly one between
        while lines and not _text(lines[0]):
            lines.pop(0)
        while lines and not _text(lines[-1]):
            lines.pop()
        return lines

    def _print(self, lines: list[list[Segment]]) -> None:
        if lines:
            self.live.console.print(_Lines(lines))

    def _with_gap(self, markdown: str) -> list[list[Segment]]:
        """A block's lines, after a blank line unless it is the first (as rich spaces them)."""
        lines = self._render(markdown)
        return [[], *lines] if self.blocks_done else lines

    def _show(self, *, final: bool) -> None:
        blocks, rest = split_finished(self.text)
        rest = rest.lstrip("\n")  # as a finished block is: blank lines before it are no lines
        if final and rest.strip():
            blocks, rest = [*blocks, rest], ""
        for block in blocks[self.blocks_done:]:
            lines = self._with_gap(block)
            self._print(lines[self.tail_printed:])
            # what overflowed past this block was the start of the next one
            self.tail_printed = max(0, self.tail_printed - len(lines))
            self.blocks_done += 1
        tail: list[list[Segment]] = []
        if rest.strip():
            tail = self._with_gap(rest)
            room = max(1, self.console.size.height - 2)
            overflow = len(tail) - self.tail_printed - room
            if overflow > 0:
                self._print(tail[self.tail_printed:self.tail_printed + overflow])
                self.tail_printed += overflow
            tail = tail[self.tail_printed:]
        self.live.update(_Lines(tail), refresh=True)
