"""Split a document into overlapping chunks that remember their line range.

A chunk is a run of whole lines (so a citation ``path:start-end`` names real
lines) of about ``max_words`` words. Chunks prefer to end at a paragraph
break (a blank line) once they are at least half full, and each chunk
repeats the last ``overlap`` share of the one before it, so a fact that
straddles a boundary is whole in at least one chunk. A single line longer
than ``max_words`` is cut into word windows that all cite that one line.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WORDS = 120
DEFAULT_OVERLAP = 0.2


@dataclass(frozen=True)
class Chunk:
    start: int  # first line, counted from 1
    end: int  # last line, inclusive
    text: str


@dataclass(frozen=True)
class ChunkSpec:
    max_words: int = DEFAULT_WORDS
    overlap: float = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.max_words < 1:
            raise ValueError("max_words must be at least 1")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError("overlap must be at least 0 and less than 1")

    @property
    def key(self) -> str:
        """Stored with each file: a file chunked with other settings is chunked again."""
        return f"{self.max_words}:{self.overlap:g}"


def split_lines(text: str) -> list[str]:
    """Lines without their endings (LF or CRLF), numbered as ``grep -n`` and editors do.

    (``str.splitlines`` would also split at form feeds and Unicode separators,
    and the line numbers in citations would no longer match the file.)
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def chunk_text(text: str, spec: ChunkSpec | None = None) -> list[Chunk]:
    spec = spec or ChunkSpec()
    lines = split_lines(text)
    counts = [len(line.split()) for line in lines]
    chunks: list[Chunk] = []
    i, n = 0, len(lines)
    prev_end = -1
    while i < n:
        while i < n and counts[i] == 0:  # a chunk never starts on a blank line
            i += 1
        if i >= n:
            break
        if counts[i] > spec.max_words:
            chunks.extend(_long_line(lines[i], i + 1, spec))
            i += 1
            continue
        last, at_break = _chunk_end(counts, i, spec.max_words, prev_end + 1)
        end = last
        while counts[end] == 0:  # nor ends on one
            end -= 1
        if end > prev_end:
            chunks.append(Chunk(i + 1, end + 1, "\n".join(lines[i : end + 1])))
        if last + 1 >= n:
            break
        prev_end = max(prev_end, end)
        # a chunk cut at a paragraph break needs no overlap: the next paragraph starts afresh
        i = last + 1 if at_break else _next_start(counts, i, last, spec)
    return chunks


def _chunk_end(counts: list[int], start: int, budget: int, min_end: int) -> tuple[int, bool]:
    """Last line (index) of a chunk starting at ``start``, and whether it ends at a
    paragraph break: fill to the budget, then back up to a paragraph break when one
    falls in the second half (never before ``min_end``, so each chunk reaches past
    the one before it)."""
    words = 0
    end = start
    j = start
    while j < len(counts) and words + counts[j] <= budget:
        words += counts[j]
        end = j
        j += 1
    if j >= len(counts):
        return end, True
    half = budget / 2
    seen = 0
    last_break = -1
    for k in range(start, end + 1):
        seen += counts[k]
        if counts[k] == 0 and seen >= half:
            last_break = k
    if last_break > start and last_break - 1 >= min_end:
        return last_break - 1, True
    return end, counts[end] == 0 or (j < len(counts) and counts[j] == 0)


def _next_start(counts: list[int], start: int, end: int, spec: ChunkSpec) -> int:
    """Where the next chunk starts: back far enough to repeat about ``overlap`` of
    this chunk's words (whole lines, at most half a chunk), always after ``start``."""
    if end + 1 < len(counts) and counts[end + 1] > spec.max_words:
        return end + 1  # a long line comes next: it is cut on its own
    want = spec.max_words * spec.overlap
    cap = spec.max_words // 2
    nxt = end + 1
    words = 0
    k = end
    while k > start and words < want and words + counts[k] <= cap:
        words += counts[k]
        nxt = k
        k -= 1
    return nxt


def _long_line(line: str, number: int, spec: ChunkSpec) -> list[Chunk]:
    words = line.split()
    step = max(1, spec.max_words - int(spec.max_words * spec.overlap))
    out = []
    for at in range(0, len(words), step):
        out.append(Chunk(number, number, " ".join(words[at : at + spec.max_words])))
        if at + spec.max_words >= len(words):
            break
    return out
