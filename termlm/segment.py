"""Cut a document into segments to translate and segments to keep, byte for byte.

``segment(text, mode)`` returns a list of :class:`Segment` whose texts join
back to ``text`` exactly. Each segment is one of four kinds:

- ``text``: prose to translate;
- ``inline``: kept inside a sentence (inline code, a URL, a link target, an
  HTML tag). The translator shows it to the model and checks it comes back;
- ``break``: a line break inside a paragraph, with the next line's indent or
  ``>`` marks (shown to the model as a newline);
- ``keep``: everything else (code blocks, front matter, table pipes, list
  markers, blank lines), never shown to the model.

Consecutive ``text``/``inline``/``break`` segments with the same ``unit``
number form one translation unit: a heading, a paragraph, a list item, a
table cell, or a line in line mode.

Markdown support is a pragmatic subset of CommonMark/GFM: where the two
disagree, this module errs on the side of keeping text untranslated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "inline", "break", "keep"]
Mode = Literal["markdown", "text", "lines"]


@dataclass(frozen=True)
class Segment:
    text: str
    kind: Kind = "keep"
    unit: int = -1  # -1 for kept segments outside any unit

    @property
    def translatable(self) -> bool:
        return self.kind == "text"


# -- inline spans -------------------------------------------------------------

_URL = r"(?:https?|ftp)://[^\s<>`\"']+"
_MD_INLINE = re.compile(
    r"(?P<esc>\\[!-/:-@\[-`{-~])"
    r"|(?P<code>`+)"
    r"|(?P<target>\]\((?:<[^<>\n]*>|(?:[^()\s]|\([^()\s]*\))*)"
    r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^()\n]*\)))?\s*\))"
    r"|(?P<ref>\]\[[^\[\]\n]*\])"
    r"|(?P<foot>\[\^[^\]\s]+\])"
    r"|(?P<tag><(?:/?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?|!--.*?--"
    r"|[A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*|[^<>\s@]+@[^<>\s]+\.[^<>\s]+)>)"
    rf"|(?P<url>{_URL})"
)
_TEXT_INLINE = re.compile(rf"(?P<url>{_URL})")
_URL_TAIL = ".,;:!?'\"*_"


def url_end(url: str) -> str:
    """Drop sentence punctuation after a bare URL (and an unbalanced closing paren)."""
    while url:
        if url[-1] in _URL_TAIL or (url[-1] == ")" and url.count("(") < url.count(")")):
            url = url[:-1]
        else:
            break
    return url


def inline_spans(text: str, markdown: bool = True) -> list[tuple[int, int]]:
    """(start, end) of every kept span in ``text``, in order, not overlapping."""
    pattern = _MD_INLINE if markdown else _TEXT_INLINE
    spans: list[tuple[int, int]] = []
    pos = 0
    while True:
        match = pattern.search(text, pos)
        if match is None:
            return spans
        kind = match.lastgroup
        start, end = match.span()
        if kind == "esc":
            pos = end
            continue
        if kind == "code":
            ticks = len(match.group())
            close = re.compile(rf"(?<!`)`{{{ticks}}}(?!`)").search(text, end)
            if close is None:  # an unmatched backtick run is literal text
                pos = end
                continue
            end = close.end()
        elif kind == "url":
            end = start + len(url_end(match.group()))
            if end - start < 10:
                pos = match.end()
                continue
        spans.append((start, end))
        pos = end


# -- building segments --------------------------------------------------------

class _Builder:
    def __init__(self, markdown: bool) -> None:
        self.segments: list[Segment] = []
        self.unit = -1
        self.markdown = markdown

    def keep(self, text: str) -> None:
        if not text:
            return
        last = self.segments[-1] if self.segments else None
        if last is not None and last.kind == "keep":
            self.segments[-1] = Segment(last.text + text)
        else:
            self.segments.append(Segment(text))

    def begin(self) -> None:
        self.unit += 1

    def add(self, text: str, kind: Kind) -> None:
        if text:
            self.segments.append(Segment(text, kind, self.unit))

    def inline(self, core: str) -> None:
        """Prose (stripped, no newline) as text and inline segments of the current unit."""
        pos = 0
        for start, end in inline_spans(core, self.markdown):
            self.add(core[pos:start], "text")
            self.add(core[start:end], "inline")
            pos = end
        self.add(core[pos:], "text")


def _split_ws(text: str) -> tuple[str, str, str]:
    core = text.strip()
    if not core:
        return text, "", ""
    lead = text[: len(text) - len(text.lstrip())]
    return lead, core, text[len(lead) + len(core):]


def _lines(text: str) -> list[tuple[str, str]]:
    """(content, line ending) pairs; the last line may have no ending."""
    out: list[tuple[str, str]] = []
    pos = 0
    for match in re.finditer(r"\r?\n", text):
        out.append((text[pos : match.start()], match.group()))
        pos = match.end()
    if pos < len(text):
        out.append((text[pos:], ""))
    return out


def _paragraph(out: _Builder, lines: list[tuple[str, str, str]], first_prefix: str) -> None:
    """One unit over (prefix, body, eol) lines whose bodies are not blank; the first
    line's prefix is ``first_prefix``, later lines' prefixes become part of a break."""
    out.begin()
    pending = first_prefix
    for index, (prefix, body, eol) in enumerate(lines):
        lead, core, trail = _split_ws(body)
        head = pending + (prefix if index else "") + lead
        if index:
            out.add(head, "break")
        else:
            out.keep(head)
        out.inline(core)
        pending = trail + eol
    out.keep(pending)


def segment(text: str, mode: Mode = "markdown") -> list[Segment]:
    """Segments of ``text``; ``"".join(s.text for s in result) == text``."""
    if mode == "markdown":
        return segment_markdown(text)
    return segment_lines(text) if mode == "lines" else segment_text(text)


def segment_lines(text: str) -> list[Segment]:
    """Each line is one unit; line endings and surrounding whitespace are kept."""
    out = _Builder(markdown=False)
    for content, eol in _lines(text):
        lead, core, trail = _split_ws(content)
        out.keep(lead)
        if core:
            out.begin()
            out.inline(core)
        out.keep(trail + eol)
    return out.segments


def segment_text(text: str) -> list[Segment]:
    """Plain text: each paragraph (lines up to a blank line) is one unit."""
    out = _Builder(markdown=False)
    block: list[tuple[str, str, str]] = []
    for content, eol in [*_lines(text), ("", "")]:
        if content.strip():
            block.append(("", content, eol))
            continue
        if block:
            _paragraph(out, block, "")
            block = []
        out.keep(content + eol)
    return out.segments


# -- Markdown -----------------------------------------------------------------

_QUOTE = re.compile(r"(?: {0,3}>[ \t]?)+")
_FENCE = re.compile(r"\s*(`{3,}|~{3,})(.*)")
_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t]+|$)")
_CLOSING = re.compile(r"(?:[ \t]+#+)?[ \t]*$")
_ITEM = re.compile(  # a list item, task item, or footnote definition: the marker is kept
    r"\s*(?:[-*+]|\d{1,9}[.)]|\[\^[^\]\s]+\]:)(?:[ \t]+\[[ xX]\])?(?:[ \t]+|$)")
_THEMATIC = re.compile(r" {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_SETEXT = re.compile(r" {0,3}(?:=+|-+)[ \t]*$")
_TABLE_SEP = re.compile(r"\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")
_LINK_DEF = re.compile(r" {0,3}\[(?!\^)[^\]]+\]:\s*\S")
_RAW_HTML = re.compile(r"\s*<(script|pre|style|textarea)\b", re.IGNORECASE)
_PIPE = re.compile(r"(?<!\\)\|")

Line = tuple[str, str, str]  # (blockquote marks, body, line ending)


def _fence(body: str) -> str | None:
    match = _FENCE.match(body)
    if match is None or (match.group(1)[0] == "`" and "`" in match.group(2)):
        return None
    return match.group(1)


def _width(body: str) -> int:
    return len(body[: len(body) - len(body.lstrip(" \t"))].expandtabs(4))


def _find(lines: list[Line], start: int, found: Callable[[str], bool]) -> int:
    """One past the first line from ``start`` whose body is ``found``; else the end."""
    for k in range(start, len(lines)):
        if found(lines[k][1]):
            return k + 1
    return len(lines)


def _kept_block(lines: list[Line], i: int, indented_code: bool) -> int:
    """The end of a block that is kept whole (code, HTML, math...) starting at line i,
    or i when line i starts none. Unclosed blocks run to the end of the document."""
    body = lines[i][1]
    fence = _fence(body)
    if fence is not None:
        close = re.compile(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        return _find(lines, i + 1, lambda b: close.match(b) is not None)
    stripped = body.strip()
    if stripped.startswith("<!--"):
        return i + 1 if "-->" in stripped[4:] else _find(lines, i + 1, lambda b: "-->" in b)
    raw = _RAW_HTML.match(body)
    if raw is not None:
        end = f"</{raw.group(1).lower()}"
        return _find(lines, i, lambda b: end in b.lower())
    if stripped.startswith("$$"):
        if len(stripped) >= 4 and stripped.endswith("$$"):
            return i + 1
        return _find(lines, i + 1, lambda b: "$$" in b)
    if _LINK_DEF.match(body) or _THEMATIC.match(body):
        return i + 1
    if indented_code and _width(body) >= 4:
        k = i
        while k < len(lines) and (not lines[k][1].strip() or _width(lines[k][1]) >= 4):
            k += 1
        return k
    return i


def _is_table(lines: list[Line], i: int) -> bool:
    return ("|" in lines[i][1] and i + 1 < len(lines) and "|" in lines[i + 1][1]
            and _TABLE_SEP.match(lines[i + 1][1]) is not None)


def _interrupts(lines: list[Line], k: int) -> bool:
    body = lines[k][1]
    return (not body.strip() or _fence(body) is not None or _HEADING.match(body) is not None
            or _ITEM.match(body) is not None or _THEMATIC.match(body) is not None
            or _SETEXT.match(body) is not None or _RAW_HTML.match(body) is not None
            or body.lstrip().startswith(("<!--", "$$")) or _is_table(lines, k))


def _row(out: _Builder, line: Line) -> None:
    quote, body, eol = line
    out.keep(quote)
    pos = 0
    for end, pipe in [*((m.start(), "|") for m in _PIPE.finditer(body)), (len(body), "")]:
        lead, core, trail = _split_ws(body[pos:end])
        out.keep(lead)
        if core:
            out.begin()
            out.inline(core)
        out.keep(trail + pipe)
        pos = end + 1
    out.keep(eol)


def segment_markdown(text: str) -> list[Segment]:
    out = _Builder(markdown=True)
    lines: list[Line] = []
    for content, eol in _lines(text):
        found = _QUOTE.match(content)
        marks = found.group() if found else ""
        lines.append((marks, content[len(marks):], eol))
    n, i = len(lines), 0

    def keep_to(end: int) -> int:
        for quote, body, eol in lines[i:end]:
            out.keep(quote + body + eol)
        return end

    if lines and not lines[0][0] and lines[0][1].rstrip() in ("---", "+++"):
        closers = ("---", "...") if lines[0][1].rstrip() == "---" else ("+++",)
        for k in range(1, n):
            if not lines[k][0] and lines[k][1].rstrip() in closers:
                i = keep_to(k + 1)
                break
    prev_blank, in_list = True, False
    while i < n:
        quote, body, eol = lines[i]
        if not body.strip():
            i, prev_blank = keep_to(i + 1), True
            continue
        item = _ITEM.match(body) if not _THEMATIC.match(body) else None
        if prev_blank and _width(body) < 2 and item is None:
            in_list = False
        end = _kept_block(lines, i, prev_blank and not in_list)
        prev_blank = False
        if end > i:
            i = keep_to(end)
            continue
        if _is_table(lines, i):
            _row(out, lines[i])
            out.keep("".join(lines[i + 1]))
            i += 2
            while i < n and lines[i][1].strip() and "|" in lines[i][1]:
                _row(out, lines[i])
                i += 1
            continue
        heading = _HEADING.match(body)
        if heading is not None:
            rest = body[heading.end():]
            closing = _CLOSING.search(rest)
            cut = closing.start() if closing else len(rest)
            _paragraph(out, [("", rest[:cut], "")], quote + heading.group())
            out.keep(rest[cut:] + eol)
            i += 1
            continue
        prefix, first = quote, body
        if item is not None:
            in_list = True
            prefix, first = quote + item.group(), body[item.end():]
            if not first.strip():
                i = keep_to(i + 1)
                continue
        k = i + 1
        while k < n and bool(lines[k][0]) == bool(quote) and not _interrupts(lines, k):
            k += 1
        _paragraph(out, [("", first, eol), *lines[i + 1 : k]], prefix)
        i = k
    return out.segments


# -- long text ----------------------------------------------------------------

_SENTENCE_END = re.compile("[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\\]]*\\s+"
                           "|[\u3002\uff01\uff1f]+")
_SPACE = re.compile(r"\s+")


def _cut(text: str, pattern: re.Pattern[str]) -> list[str]:
    pieces: list[str] = []
    pos = 0
    for match in pattern.finditer(text):
        if match.end() < len(text) and match.end() > pos:
            pieces.append(text[pos : match.end()])
            pos = match.end()
    pieces.append(text[pos:])
    return [p for p in pieces if p]


def _hard(text: str, fits: Callable[[str], bool]) -> list[str]:
    pieces: list[str] = []
    while text:
        low, high = 1, len(text)
        while low < high:  # the longest prefix that fits (at least one character)
            mid = (low + high + 1) // 2
            if fits(text[:mid]):
                low = mid
            else:
                high = mid - 1
        pieces.append(text[:low])
        text = text[low:]
    return pieces


def split_long(text: str, fits: Callable[[str], bool], level: int = 0) -> list[str]:
    """Cut ``text`` into consecutive pieces that each ``fit``: at sentence ends, then at
    whitespace, then anywhere. ``"".join(pieces) == text``; nothing is dropped."""
    if not text or fits(text):
        return [text] if text else []
    if level >= 2:
        return _hard(text, fits)
    parts = _cut(text, _SENTENCE_END if level == 0 else _SPACE)
    if len(parts) == 1:
        return split_long(text, fits, level + 1)
    pieces: list[str] = []
    current = ""
    for part in parts:
        if current and fits(current + part):
            current += part
            continue
        if current:
            pieces.append(current)
        if fits(part):
            current = part
        else:
            pieces.extend(split_long(part, fits, level + 1))
            current = ""
    if current:
        pieces.append(current)
    return pieces
