"""Split text into pieces that each fit a token budget, dropping nothing.

``split_text(text, budget, count)`` cuts at the coarsest boundary that
works: between paragraphs, then after sentences, then after whitespace, and
only as a last resort inside a run of characters. Every separator stays with
the piece before it, so ``"".join(split_text(...)) == text`` always holds,
and every piece measures at most ``budget`` with ``count`` (pass an engine's
``count_tokens``). Adjacent pieces are packed greedily, so the chunks are as
few and as full as the boundaries allow.

``count`` is only ever called on substrings of the text, and never assumed
to be additive (a real tokenizer may count ``a + b`` differently from
``a`` plus ``b``): each chunk is measured as the exact string it will be.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Count = Callable[[str], int]

# Each pattern matches a separator; a cut goes right after it.
_PARAGRAPH = re.compile(r"\n(?:[^\S\n]*\n)+")  # a blank line (or several)
_SENTENCE = re.compile(r"(?:[.!?\u2026]+[\"'\u201d\u2019)\]]*|[\u3002\uff01\uff1f])\s+"
                       r"|[\u3002\uff01\uff1f]")
_WHITESPACE = re.compile(r"\s+")
_LEVELS: tuple[re.Pattern[str], ...] = (_PARAGRAPH, _SENTENCE, _WHITESPACE)


class BudgetTooSmall(ValueError):
    """Not even one character fits the budget."""


def split_text(text: str, budget: int, count: Count) -> list[str]:
    """Pieces of ``text``, in order, each at most ``budget`` by ``count``; they join to ``text``.

    An empty text gives no pieces. Raises BudgetTooSmall when a single
    character is over the budget (a budget below 1, say).
    """
    if not text:
        return []
    if budget < 1:
        raise BudgetTooSmall(f"a budget of {budget} tokens holds no text")
    return _split(text, budget, count, 0)


def cut_after(text: str, pattern: re.Pattern[str]) -> list[str]:
    """``text`` cut right after each match of ``pattern`` (no empty pieces)."""
    pieces: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        end = match.end()
        if end > start:
            pieces.append(text[start:end])
            start = end
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _split(text: str, budget: int, count: Count, level: int) -> list[str]:
    if count(text) <= budget:
        return [text]
    if level == len(_LEVELS):
        return _hard_split(text, budget, count)
    pieces = cut_after(text, _LEVELS[level])
    if len(pieces) == 1:
        return _split(text, budget, count, level + 1)
    units: list[str] = []
    for piece in pieces:
        if count(piece) <= budget:
            units.append(piece)
        else:
            units.extend(_split(piece, budget, count, level + 1))
    return pack(units, budget, count)


def pack(units: Sequence[str], budget: int, count: Count, sep: str = "") -> list[str]:
    """Join runs of adjacent ``units`` (with ``sep``) into as few pieces as fit ``budget``.

    Each unit must fit on its own. The longest run that fits is found by
    galloping then bisecting, so a chunk of k units costs O(log k) counts.
    """
    chunks: list[str] = []
    i, n = 0, len(units)

    def fits(j: int) -> bool:
        return count(sep.join(units[i:j])) <= budget

    while i < n:
        good, step = i + 1, 1  # units[i] alone fits
        bad = None
        while good < n:
            probe = min(good + step, n)
            if fits(probe):
                good, step = probe, step * 2
            else:
                bad = probe
                break
        if bad is not None:
            while bad - good > 1:
                mid = (good + bad) // 2
                if fits(mid):
                    good = mid
                else:
                    bad = mid
        chunks.append(sep.join(units[i:good]))
        i = good
    return chunks


def _hard_split(text: str, budget: int, count: Count) -> list[str]:
    """Cut between characters: the longest prefix that fits, again and again."""
    chunks: list[str] = []
    rest = text
    while rest:
        if count(rest) <= budget:
            chunks.append(rest)
            break
        lo, hi = 0, len(rest)  # rest[:lo] fits (or lo == 0); rest[:hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if count(rest[:mid]) <= budget:
                lo = mid
            else:
                hi = mid
        if lo == 0:
            raise BudgetTooSmall(f"the character {rest[0]!r} alone is over a budget of "
                                 f"{budget} tokens")
        chunks.append(rest[:lo])
        rest = rest[lo:]
    return chunks
