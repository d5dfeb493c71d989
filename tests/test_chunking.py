"""termlm.chunking: pieces that fit a token budget, nothing dropped, cut at the best boundary."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from termlm.chunking import BudgetTooSmall, Count, pack, split_text


def words(text: str) -> int:
    return len(text.split())


def chars(text: str) -> int:
    return len(text)


def quarter_chars(text: str) -> int:
    """Roughly a BPE tokenizer: a token per four characters."""
    return math.ceil(len(text) / 4)


def with_overhead(text: str) -> int:
    """Not additive: every string costs one extra token (as a BOS or a prefix space might)."""
    return len(text.split()) + 1 if text else 0


COUNTERS: dict[str, Count] = {"words": words, "chars": chars, "quarter": quarter_chars,
                              "overhead": with_overhead}

_ALPHABET = st.sampled_from([*"abcxyz ABC", " ", "\n", "\n\n", ".", "!", "?", "\t", "\r\n",
                             "\u00e9", "\u3002", "\U0001f600", "...", "\"", ") "])
texts = st.lists(_ALPHABET, max_size=300).map("".join) | st.text(max_size=300)


@settings(max_examples=300, deadline=None)
@given(text=texts, budget=st.integers(min_value=2, max_value=40),
       counter=st.sampled_from(sorted(COUNTERS)))
def test_chunks_join_back_to_the_text_and_each_fits(text: str, budget: int,
                                                    counter: str) -> None:
    count = COUNTERS[counter]
    chunks = split_text(text, budget, count)
    assert "".join(chunks) == text
    assert all(chunk for chunk in chunks)
    assert all(count(chunk) <= budget for chunk in chunks)


@settings(max_examples=100, deadline=None)
@given(text=texts, budget=st.integers(min_value=1, max_value=20))
def test_a_budget_of_one_character_still_works(text: str, budget: int) -> None:
    chunks = split_text(text, budget, chars)
    assert "".join(chunks) == text
    assert all(1 <= len(chunk) <= budget for chunk in chunks)


def test_text_that_fits_is_one_chunk_and_empty_text_none() -> None:
    assert split_text("one two three", 3, words) == ["one two three"]
    assert split_text("", 3, words) == []


def test_cuts_between_paragraphs_first() -> None:
    paras = ["alpha beta gamma. delta epsilon.", "zeta eta theta.", "iota kappa. lambda mu nu."]
    text = "\n\n".join(paras) + "\n"
    chunks = split_text(text, 6, words)
    assert chunks == ["alpha beta gamma. delta epsilon.\n\n", "zeta eta theta.\n\n",
                      "iota kappa. lambda mu nu.\n"]


def test_paragraphs_are_packed_while_they_fit() -> None:
    text = "a b.\n\nc d.\n\ne f.\n\ng h.\n"
    assert split_text(text, 4, words) == ["a b.\n\nc d.\n\n", "e f.\n\ng h.\n"]


def test_a_long_paragraph_is_cut_after_sentences() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    assert split_text(text, 6, words) == ["One two three. Four five six! ",
                                          "Seven eight nine? Ten eleven twelve."]


def test_one_long_line_without_sentences_is_cut_at_whitespace() -> None:
    text = " ".join(f"w{i}" for i in range(25))
    chunks = split_text(text, 10, words)
    assert [words(c) for c in chunks] == [10, 10, 5]
    assert all(c.endswith(" ") for c in chunks[:-1])
    assert "".join(chunks) == text


def test_a_run_without_whitespace_is_hard_split() -> None:
    text = "x" * 100
    chunks = split_text(text, 7, quarter_chars)  # 28 characters fit
    assert [len(c) for c in chunks] == [28, 28, 28, 16]


def test_mixed_levels_keep_every_character_in_order() -> None:
    text = ("Short one.\n\n" + "y" * 60 + " tail words here. Last.\n\n" + "end")
    chunks = split_text(text, 5, quarter_chars)
    assert "".join(chunks) == text
    assert all(quarter_chars(c) <= 5 for c in chunks)


def test_budget_too_small_is_an_error() -> None:
    with pytest.raises(BudgetTooSmall):
        split_text("abc", 0, chars)
    with pytest.raises(BudgetTooSmall):
        split_text("ab", 1, lambda s: 2 * len(s))


def test_pack_joins_runs_with_a_separator() -> None:
    units = ["a b", "c d", "e", "f g h", "i"]
    assert pack(units, 5, words, sep="\n\n") == ["a b\n\nc d\n\ne", "f g h\n\ni"]
    assert pack([], 5, words) == []


def test_pack_calls_count_a_logarithmic_number_of_times() -> None:
    units = ["w "] * 1000
    calls = 0

    def counting(text: str) -> int:
        nonlocal calls
        calls += 1
        return words(text)

    chunks = pack(units, 500, counting)
    assert [words(c) for c in chunks] == [500, 500]
    assert calls < 60
