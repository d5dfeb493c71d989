"""Segmentation: every document splits into segments that join back byte for byte,
and the parts that must survive translation (code, front matter, URLs, table
layout) are never marked translatable."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from termlm.segment import Segment, inline_spans, segment, split_long

SNIPPETS = [
    "# ", "## Title", "---", "+++", "...", "```", "```py", "~~~", "    ", "\t", "> ", ">>",
    "- ", "* ", "1. ", "2) ", "[ ] ", "[x] ", "| a | b |", "|---|:-:|", "| 1 | 2 |",
    "`", "``", "code", "[link](http://x.org/a)", "](", ")", "<div>", "</div>", "<!--",
    "-->", "<script>", "</script>", "$$", "https://example.com/p?q=1.", "{name}", "%s",
    "$VAR", "\\", "\\|", "==", "Hello world.", " Bonjour ! ", "é", "中文。", "\r\n", "\n",
    "\n\n", " ", "[^1]", "[ref]: http://r.org", "![alt](i.png)", "<http://a.b>", "***",
]
ALPHABET = "ab #`~-*|>[]()<>!:/.=+$%{}\\_\t\r\n1é"
markdownish = st.lists(st.one_of(st.sampled_from(SNIPPETS), st.text(ALPHABET, max_size=6)),
                       max_size=40).map("".join)
any_text = st.one_of(markdownish, st.text(max_size=200))


def joined(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments)


def check_shape(segments: list[Segment]) -> None:
    for i, seg in enumerate(segments):
        assert seg.text, "empty segment"
        assert seg.kind in ("text", "inline", "break", "keep")
        assert (seg.unit == -1) == (seg.kind == "keep")
        if seg.kind == "break":  # only between two parts of the same unit
            assert segments[i - 1].unit == seg.unit == segments[i + 1].unit
        if seg.kind != "keep":
            assert "\n" not in seg.text or seg.kind == "break"


@settings(max_examples=400, deadline=None)
@given(any_text)
def test_markdown_segments_join_back_byte_for_byte(text: str) -> None:
    segments = segment(text, "markdown")
    assert joined(segments) == text
    check_shape(segments)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_text_segments_join_back_byte_for_byte(text: str) -> None:
    segments = segment(text, "text")
    assert joined(segments) == text
    check_shape(segments)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_line_segments_join_back_and_stay_on_their_line(text: str) -> None:
    segments = segment(text, "lines")
    assert joined(segments) == text
    check_shape(segments)
    assert not any(s.kind == "break" for s in segments)


@settings(max_examples=200, deadline=None)
@given(markdownish, st.text("ab\n`~#|", max_size=60), markdownish)
def test_fenced_code_is_never_translatable(before: str, code: str, after: str) -> None:
    code = code.replace("```", "").replace("~~~", "")
    block = f"```sh\n{code}\n```\n"
    text = before.rstrip("\n") + "\n\n" + block + "\n" + after
    segments = segment(text, "markdown")
    assert joined(segments) == text
    start = len(before.rstrip("\n")) + 2
    pos = 0
    for seg in segments:  # every segment overlapping the block is kept
        end = pos + len(seg.text)
        overlaps = end > start and pos < start + len(block)
        assert not (overlaps and seg.translatable), (seg, text)
        pos = end


@settings(max_examples=200, deadline=None)
@given(st.text("ab (),.-_/?=", max_size=20).filter(lambda s: " " not in s))
def test_urls_are_kept_spans(path: str) -> None:
    url = "https://example.org/" + path.strip(".,)?_")
    text = f"See {url} now."
    kept = [text[a:b] for a, b in inline_spans(text)]
    assert kept and kept[0].startswith("https://example.org/")
    assert url.startswith(kept[0])


def kinds(text: str, mode: str = "markdown") -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in segment(text, mode)]  # type: ignore[arg-type]


def translatable(text: str, mode: str = "markdown") -> list[str]:
    return [s.text for s in segment(text, mode) if s.translatable]  # type: ignore[arg-type]


def test_front_matter_headings_paragraphs_and_lists() -> None:
    doc = ("---\ntitle: Hello world\n---\n# A title #\n\nFirst line\nsecond line.\n\n"
           "- one item\n- [x] done item\n  continued\n")
    assert translatable(doc) == ["A title", "First line", "second line.", "one item",
                                 "done item", "continued"]
    segs = segment(doc)
    assert segs[0] == Segment("---\ntitle: Hello world\n---\n# ")
    breaks = [s.text for s in segs if s.kind == "break"]
    assert breaks == ["\n", "\n  "]


def test_unclosed_front_matter_is_not_front_matter() -> None:
    assert translatable("---\nHello there\n") == ["Hello there"]


@pytest.mark.parametrize("fence", ["```", "~~~", "````"])
def test_fences_and_unclosed_fence_run_to_the_end(fence: str) -> None:
    doc = f"Intro text.\n\n{fence}js\nlet x = 'not prose';\n{fence}\n\nAfter text.\n"
    assert translatable(doc) == ["Intro text.", "After text."]
    unclosed = f"Intro text.\n\n{fence}\nstill code\n\nand more code\n"
    assert translatable(unclosed) == ["Intro text."]


def test_inline_code_urls_link_targets_and_tags_are_inline_spans() -> None:
    doc = ('Run `make test` or see [the docs](https://x.org/d "Docs") and '
           "<b>bold</b> at https://a.org/b. Also ![logo](img.png) and <https://c.org>.\n")
    inline = [t for k, t in kinds(doc) if k == "inline"]
    assert inline == ["`make test`", '](https://x.org/d "Docs")', "<b>", "</b>",
                      "https://a.org/b", "](img.png)", "<https://c.org>"]


def test_backslash_escapes_and_unmatched_backticks_are_text() -> None:
    assert [k for k, _ in kinds("A \\`literal\\` and ` alone.")] == ["text"]


def test_table_layout_is_kept_and_cells_are_units() -> None:
    doc = "| Name | Note |\n|:-----|-----:|\n| alpha | first one |\n| 3 | \\| escaped |\n"
    segs = segment(doc)
    assert [s.text for s in segs if s.translatable] == [
        "Name", "Note", "alpha", "first one", "3", "\\| escaped"]
    assert "|:-----|-----:|\n" in "".join(s.text for s in segs if s.kind == "keep")
    assert len({s.unit for s in segs if s.translatable}) == 6


def test_blockquote_marks_are_kept() -> None:
    segs = segment("> quoted line\n> next line\n")
    assert [(s.kind, s.text) for s in segs] == [
        ("keep", "> "), ("text", "quoted line"), ("break", "\n> "), ("text", "next line"),
        ("keep", "\n")]


def test_indented_code_html_blocks_math_and_link_definitions_are_kept() -> None:
    doc = ("Para.\n\n    indented code\n\n<!-- a\ncomment -->\n\n<pre>\nraw text\n</pre>\n\n"
           "$$\nx^2\n$$\n\n[ref]: https://r.org \"Ref\"\n\n***\n")
    assert translatable(doc) == ["Para."]


def test_footnote_definitions_are_prose_with_a_kept_label() -> None:
    assert kinds("Text[^1].\n\n[^1]: The note.\n") == [
        ("text", "Text"), ("inline", "[^1]"), ("text", "."), ("keep", "\n\n[^1]: "),
        ("text", "The note."), ("keep", "\n")]


def test_indented_lines_inside_a_list_are_prose() -> None:
    doc = "- item\n\n    more about the item\n"
    assert translatable(doc) == ["item", "more about the item"]


def test_plain_text_paragraphs_and_crlf() -> None:
    doc = "First para\r\nstill first.\r\n\r\n  Second para.\r\n"
    assert kinds(doc, "text") == [
        ("text", "First para"), ("break", "\r\n"), ("text", "still first."),
        ("keep", "\r\n\r\n  "), ("text", "Second para."), ("keep", "\r\n")]
    # plain text has no Markdown: a # line is prose, backticks are prose
    assert translatable("# not a heading `x`\n", "text") == ["# not a heading `x`"]


def test_line_mode_one_unit_per_line() -> None:
    segs = segment("one\n\n  two  \nthree", "lines")
    assert [(s.kind, s.text, s.unit) for s in segs] == [
        ("text", "one", 0), ("keep", "\n\n  ", -1), ("text", "two", 1),
        ("keep", "  \n", -1), ("text", "three", 2)]


# -- split_long ------------------------------------------------------------------

def by_chars(limit: int):  # type: ignore[no-untyped-def]
    return lambda piece: len(piece) <= limit


def test_split_long_prefers_sentences_then_words_then_characters() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten."
    assert split_long(text, by_chars(30)) == ["One two three. Four five six! ",
                                              "Seven eight nine? Ten."]
    assert split_long("alpha beta gamma delta", by_chars(12)) == ["alpha beta ",
                                                                   "gamma delta"]
    assert split_long("abcdefghij", by_chars(4)) == ["abcd", "efgh", "ij"]
    assert split_long("short", by_chars(99)) == ["short"]
    assert split_long("", by_chars(1)) == []


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=1, max_value=40))
def test_split_long_drops_nothing_and_every_piece_fits(text: str, limit: int) -> None:
    pieces = split_long(text, by_chars(limit))
    assert "".join(pieces) == text
    assert all(0 < len(p) <= limit for p in pieces)
