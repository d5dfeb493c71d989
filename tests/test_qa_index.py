"""The QA index and answers, below the CLI: chunking, sync by hash, search, citations."""

from __future__ import annotations

import itertools
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from termlm.engine.fake import FakeEngine
from termlm.prompts import load_template
from termlm.qa import index as index_mod
from termlm.qa.answer import (
    NOT_FOUND,
    Passage,
    check_citations,
    finish,
    fit,
    retrieve,
    says_not_found,
)
from termlm.qa.chunking import ChunkSpec, chunk_text, split_lines
from termlm.qa.index import Index, QaIndexError, fts_query, query_terms
from termlm.records.types import Source

FACT = "The Zorblax reactor was commissioned in 1987 in Tromsø."


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))


def filler(topic: str, n: int) -> str:
    """n lines of distinct prose about ``topic`` (no word of FACT but 'the')."""
    return "\n".join(f"Line {i} about {topic} covers gardening tools number {i} and their care."
                     for i in range(n))


def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "garden.md").write_text(filler("hedges", 40) + "\n")
    (root / "reactor.md").write_text(filler("turbines", 30) + f"\n\n{FACT}\n\n"
                                     + filler("pumps", 10) + "\n")
    (root / "kitchen.txt").write_text("Knives should be sharpened weekly.\nPans last years.\n")
    return root


def sources(*paths: Path) -> list[Source]:
    out = []
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        out += [Source(str(f), str(f)) for f in files if f.is_file()]
    return out


def open_synced(tmp_path: Path) -> tuple[Index, Path]:
    root = docs(tmp_path)
    index = Index.open()
    index.sync(sources(root))
    return index, root


# -- chunking -----------------------------------------------------------------------------

def test_chunks_keep_line_ranges_and_overlap() -> None:
    text = "\n".join(f"line {i} " + "word " * 9 for i in range(1, 41))  # 11 words a line
    chunks = chunk_text(text, ChunkSpec(max_words=44, overlap=0.25))
    lines = text.split("\n")
    assert chunks[0].start == 1
    assert chunks[-1].end == 40
    for chunk in chunks:
        assert chunk.text == "\n".join(lines[chunk.start - 1 : chunk.end])
        assert len(chunk.text.split()) <= 44
    for before, after in itertools.pairwise(chunks):
        assert after.start <= before.end  # overlap: the boundary line is in both
        assert after.end > before.end


def test_chunks_prefer_paragraph_breaks_and_skip_blank_edges() -> None:
    para = "\n".join(["alpha beta gamma delta epsilon"] * 3)
    text = f"\n\n{para}\n\n{para}\n\n{para}\n\n"
    chunks = chunk_text(text, ChunkSpec(max_words=25, overlap=0.2))
    lines = text.split("\n")
    for chunk in chunks:
        assert lines[chunk.start - 1].strip() and lines[chunk.end - 1].strip()
    assert [(c.start, c.end) for c in chunks] == [(3, 5), (7, 9), (11, 13)]


def test_a_long_line_is_cut_into_windows_that_cite_it() -> None:
    text = "short\n" + " ".join(f"w{i}" for i in range(300)) + "\nend"
    chunks = chunk_text(text, ChunkSpec(max_words=100, overlap=0.2))
    middle = [c for c in chunks if c.start == c.end == 2]
    assert len(middle) >= 3
    assert {w for c in middle for w in c.text.split()} == {f"w{i}" for i in range(300)}


def test_line_numbers_match_grep_even_with_form_feeds_and_crlf() -> None:
    assert split_lines("a\r\nb\x0cc\u2028d\nlast") == ["a", "b\x0cc\u2028d", "last"]
    assert split_lines("one\n") == ["one"]


@given(st.lists(st.sampled_from(["", "a b c", "x " * 30, "word", "y " * 150]), max_size=40),
       st.integers(5, 60), st.sampled_from([0.0, 0.2, 0.5]))
@settings(max_examples=150, deadline=None)
def test_chunking_covers_every_line_with_real_ranges(lines: list[str], words: int,
                                                     overlap: float) -> None:
    text = "\n".join(lines)
    chunks = chunk_text(text, ChunkSpec(words, overlap))
    covered = {n for c in chunks for n in range(c.start, c.end + 1)}
    for number, line in enumerate(lines, 1):
        if line.strip():
            assert number in covered
    for c in chunks:
        span = " ".join(" ".join(lines[c.start - 1 : c.end]).split())
        assert " ".join(c.text.split()) in span


# -- queries ----------------------------------------------------------------------------

def test_query_terms_drop_stopwords_and_syntax() -> None:
    assert query_terms('What is "the" reactor* NEAR (Tromsø)?') == ["reactor", "near", "tromsø"]
    assert query_terms("What is it?") == []
    assert fts_query(["a", 'b"c']) == '"a" OR "b""c"'


def test_any_question_is_safe_to_search(tmp_path: Path) -> None:
    index, _ = open_synced(tmp_path)
    syntax = st.sampled_from(['"', "*", "(", ")", "NEAR", "AND", "OR", "NOT", "^", ":", "-",
                              "+", "{", "}", "reactor", "text:", "NEAR/2", "'", "\\", "\x00"])

    @given(st.one_of(st.text(max_size=80), st.lists(syntax, max_size=12).map(" ".join)))
    @example('"unbalanced')
    @example("reactor NEAR(zorblax, 2) AND NOT (x*")
    @example("\ud800 lone surrogate")
    @settings(max_examples=300, deadline=None)
    def check(question: str) -> None:
        for hit in index.search(question):
            assert 0.0 < hit.coverage <= 1.0
        retrieve(index, question)

    check()


# -- keeping the index in step with the files -------------------------------------------

def test_second_sync_reads_nothing_unchanged(tmp_path: Path) -> None:
    root = docs(tmp_path)
    with Index.open() as index:
        first = index.sync(sources(root))
        assert (first.files, first.read, first.indexed) == (3, 3, 3)
        again = index.sync(sources(root))
        assert (again.read, again.indexed, again.unchanged) == (0, 0, 3)
        assert again.chunks == first.chunks


def test_unchanged_mtime_and_size_mean_the_file_is_not_read(tmp_path: Path) -> None:
    root = docs(tmp_path)
    kitchen = root / "kitchen.txt"
    with Index.open() as index:
        index.sync(sources(root))
        before = kitchen.stat()
        kitchen.write_text("Spoons should be sharpened weekly.\nPans last years.\n")
        assert kitchen.stat().st_size == before.st_size
        os.utime(kitchen, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert index.sync(sources(root)).read == 0
        # the index still holds the old text: the file was not read
        assert index.search("spoons") == []
        assert "Knives" in index.search("knives")[0].text


def test_a_touched_file_is_hashed_not_chunked_again(tmp_path: Path) -> None:
    root = docs(tmp_path)
    with Index.open() as index:
        index.sync(sources(root))
        os.utime(root / "garden.md", ns=(1, 10**18))
        stats = index.sync(sources(root))
        assert (stats.read, stats.indexed, stats.unchanged) == (1, 0, 3)
        assert index.sync(sources(root)).read == 0  # the new mtime was recorded


def test_changed_file_is_indexed_again(tmp_path: Path) -> None:
    root = docs(tmp_path)
    with Index.open() as index:
        index.sync(sources(root))
        (root / "kitchen.txt").write_text("Whisks are stored in the drawer.\n")
        stats = index.sync(sources(root))
        assert (stats.read, stats.indexed) == (1, 1)
        assert [h.start for h in index.search("whisks drawer")] == [1]
        assert index.search("knives sharpened") == []


def test_removed_file_is_dropped(tmp_path: Path) -> None:
    root = docs(tmp_path)
    with Index.open() as index:
        index.sync(sources(root))
        (root / "reactor.md").unlink()
        stats = index.sync(sources(root))
        assert stats.removed == 1
        assert index.search("Zorblax reactor") == []
        count = index.conn.execute("SELECT count(*) FROM files").fetchone()[0]
        assert count == 2


def test_reindex_rebuilds_from_scratch(tmp_path: Path) -> None:
    root = docs(tmp_path)
    with Index.open() as index:
        index.sync(sources(root))
    with Index.open(rebuild=True) as index:
        assert index.conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
        assert index.sync(sources(root)).indexed == 3


def test_other_chunk_settings_chunk_again(tmp_path: Path) -> None:
    root = docs(tmp_path)
    with Index.open() as index:
        coarse = index.sync(sources(root), ChunkSpec(200, 0.0))
        fine = index.sync(sources(root), ChunkSpec(30, 0.2))
        assert fine.indexed == 3 and fine.chunks > coarse.chunks


def test_bad_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "empty.md").write_text("  \n\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (root / "good.md").write_text("Good text about reactors.\n")
    warnings: list[str] = []
    with Index.open() as index:
        stats = index.sync(sources(root), warn=warnings.append)
        assert (stats.indexed, stats.skipped, stats.chunks) == (1, 3, 1)
        text = "\n".join(warnings)
        assert "empty.md: empty" in text
        assert "image.png: binary data" in text
        assert "latin1.txt: not valid UTF-8 (byte 0xe9 on line 1)" in text
        # remembered: not read again, and still reported for files named on purpose
        warnings.clear()
        assert index.sync(sources(root), warn=warnings.append).read == 0
        assert len(warnings) == 3


def test_huge_files_are_skipped_without_reading(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "MAX_FILE_BYTES", 100)
    big = tmp_path / "big.log"
    big.write_text("reactor log line\n" * 20)
    warnings: list[str] = []
    with Index.open() as index:
        stats = index.sync(sources(big), warn=warnings.append)
        assert (stats.read, stats.skipped, stats.reasons) == (0, 1, {"too large": 1})
        assert "too large" in warnings[0]


def test_search_is_limited_to_this_runs_files(tmp_path: Path) -> None:
    root = docs(tmp_path)
    with Index.open() as index:
        index.sync(sources(root))
        index.sync(sources(root / "kitchen.txt"))
        assert index.search("Zorblax reactor") == []
        assert index.search("knives")[0].name.endswith("kitchen.txt")


def test_damaged_index_names_the_fix(tmp_path: Path) -> None:
    path = index_mod.default_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QaIndexError) as info:
        Index.open()
    assert info.value.hint is not None and "--reindex" in info.value.hint
    with Index.open(rebuild=True) as index:
        assert index.sync(sources(docs(tmp_path))).indexed == 3


def test_missing_fts5_is_a_clear_error() -> None:
    class NoFts:
        def execute(self, sql: str) -> None:
            raise sqlite3.OperationalError("no such module: fts5")

    with pytest.raises(QaIndexError, match="no FTS5"):
        index_mod._check_fts5(NoFts())  # type: ignore[arg-type]


# -- retrieval ---------------------------------------------------------------------------

def test_retrieval_picks_the_chunk_with_the_answer(tmp_path: Path) -> None:
    index, root = open_synced(tmp_path)
    passages = retrieve(index, "When was the Zorblax reactor commissioned?")
    assert passages[0].name.endswith("reactor.md")
    assert FACT in passages[0].text
    lines = (root / "reactor.md").read_text().split("\n")
    assert FACT in lines[passages[0].start - 1 : passages[0].end]


def test_unrelated_question_finds_nothing(tmp_path: Path) -> None:
    index, _ = open_synced(tmp_path)
    assert retrieve(index, "What is the airspeed of an unladen swallow?") == []
    assert retrieve(index, "What is it?") == []  # stopwords only
    # one common word of a question about something else is not enough
    assert retrieve(index, "What is the airspeed of the gardening swallow?") == []
    assert retrieve(index, "airspeed gardening swallow", min_score=0.0) != []


def test_deleted_file_is_not_given_to_the_model(tmp_path: Path) -> None:
    index, root = open_synced(tmp_path)
    (root / "reactor.md").unlink()  # after indexing, before answering
    assert retrieve(index, "When was the Zorblax reactor commissioned?") == []
    assert index.conn.execute("SELECT count(*) FROM files WHERE path LIKE '%reactor.md'"
                              ).fetchone()[0] == 0


def test_edited_file_is_read_again_and_cited_where_the_text_is_now(tmp_path: Path) -> None:
    index, root = open_synced(tmp_path)
    (root / "reactor.md").write_text("New first line.\n" + FACT + "\n")
    passages = retrieve(index, "When was the Zorblax reactor commissioned?")
    assert [(p.start, p.end) for p in passages] == [(1, 2)]
    assert FACT in passages[0].text


# -- answers ----------------------------------------------------------------------------

def _given() -> list[Passage]:
    return [Passage("/k/a.md", "docs/a.md", 10, 14, "l10\nl11\nl12\nl13\nl14", 1.0),
            Passage("/k/b.md", "b.md", 1, 3, "b1\nb2\nb3", 0.5)]


def test_only_citations_of_given_passages_survive() -> None:
    reply = ("It was 1987 [docs/a.md:10-14], in Tromsø [docs/a.md:11-12]. Also [b.md:2]. "
             "Made up: [docs/a.md:9-12] [c.md:1-2] [b.md:1-99] [docs/a.md:20-21].")
    text, cites = check_citations(reply, _given())
    assert [(c.path, c.start, c.end) for c in cites] == [
        ("docs/a.md", 10, 14), ("docs/a.md", 11, 12), ("b.md", 2, 2)]
    assert cites[1].snippet == "l11 l12"
    assert text == ("It was 1987 [docs/a.md:10-14], in Tromsø [docs/a.md:11-12]. "
                    "Also [b.md:2]. Made up:.")


def test_a_reply_without_citations_gets_the_given_passages() -> None:
    answer = finish("q", "It was 1987.", _given())
    assert answer.found
    assert [(c.path, c.start, c.end) for c in answer.citations] == [
        ("docs/a.md", 10, 14), ("b.md", 1, 3)]


def test_model_saying_not_found_means_found_false() -> None:
    assert says_not_found("The documents don't contain the answer.")
    assert says_not_found("The document does not contain the answer to that.")
    assert not says_not_found("It was 1987 [docs/a.md:10-14].")
    answer = finish("q", "The documents don\u2019t contain the answer.", _given())
    assert (answer.found, answer.answer, answer.citations) == (False, NOT_FOUND, ())


def test_passages_are_fitted_to_the_context() -> None:
    template = load_template("qa")
    passages = [Passage(f"/k/{i}", f"{i}.md", 1, 1, "word " * 100, 1.0) for i in range(5)]
    engine = FakeEngine(n_ctx=600)
    chosen = fit(engine, template, "question?", passages, reserve=256)
    assert 1 <= len(chosen) < 5
    assert chosen == passages[: len(chosen)]
