"""Readers: every input shape becomes records; bad input becomes error records, never a crash."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from pathlib import Path

import pytest

from termlm.errors import InputError, UsageError
from termlm.records import (
    Record,
    Source,
    count_records,
    expand_inputs,
    read_records,
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(name: str, data: str | bytes) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return name


def read(*paths: str, warnings: list[str] | None = None, **options: object) -> list[Record]:
    warn = warnings.append if warnings is not None else None
    return list(read_records(expand_inputs(list(paths)), warn=warn, **options))  # type: ignore[arg-type]


def ok(records: list[Record]) -> list[tuple[str, str | None]]:
    return [(r.id, r.text) for r in records]


# -- txt ---------------------------------------------------------------------

def test_txt_one_record_per_nonblank_line_with_line_number_ids() -> None:
    write("a.txt", "first\n\n  \nsecond line, kept exact  \nthird")
    records = read("a.txt")
    assert ok(records) == [("1", "first"), ("4", "second line, kept exact  "), ("5", "third")]
    assert [r.position for r in records] == [0, 1, 2]
    assert [r.line for r in records] == [1, 4, 5]
    assert all(r.error is None and r.source == "a.txt" for r in records)


def test_several_sources_prefix_ids_with_the_path() -> None:
    write("a.txt", "x\ny\n")
    write("b.txt", "z\n")
    assert [r.id for r in read("a.txt", "b.txt")] == ["a.txt:1", "a.txt:2", "b.txt:1"]
    assert [r.position for r in read("a.txt", "b.txt")] == [0, 1, 2]


def test_bom_and_crlf_are_stripped_inner_text_kept() -> None:
    write("a.txt", b"\xef\xbb\xbfone\r\ntwo\rstill two\r\nthree\n")
    assert ok(read("a.txt")) == [("1", "one"), ("2", "two\rstill two"), ("3", "three")]
    write("b.jsonl", b'\xef\xbb\xbf{"id": 1, "text": "hi"}\r\n{"id": 2, "text": "yo"}\r\n')
    assert ok(read("b.jsonl")) == [("1", "hi"), ("2", "yo")]
    write("c.csv", b'\xef\xbb\xbfid,text\r\n1,"a\r\nb"\r\n2,c\r\n')
    assert ok(read("c.csv")) == [("1", "a\r\nb"), ("2", "c")]


def test_empty_inputs_give_no_records_and_no_errors() -> None:
    for name in ("e.txt", "e.jsonl", "e.csv"):
        write(name, "")
        assert read(name) == []
    write("h.csv", "id,text\n")
    assert read("h.csv") == []
    assert list(read_records(expand_inputs([]), stdin=io.BytesIO(b""))) == []


# -- jsonl -------------------------------------------------------------------

def test_malformed_jsonl_lines_become_error_records_and_the_rest_reads() -> None:
    write("d.jsonl", "\n".join([
        '{"id": "a", "text": "fine"}',
        '{"id": "b", "text": ',
        "",
        "[1, 2]",
        '{"id": "c", "body": "no text"}',
        '{"id": "d", "text": 42}',
        '{"id": 7, "text": "int id", "extra": [1]}',
        '{"text": "no id"}',
    ]) + "\n")
    records = read("d.jsonl")
    assert [r.id for r in records] == ["a", "2", "4", "c", "d", "7", "8"]
    assert records[0].text == "fine" and records[0].error is None
    assert records[1].error is not None and records[1].error.startswith(
        "invalid JSON on line 2 of d.jsonl")
    assert records[2].error == "not a JSON object on line 4 of d.jsonl (got array)"
    assert records[3].error == 'no field "text" on line 5 of d.jsonl (fields: id, body)'
    assert records[3].fields == {"id": "c", "body": "no text"}
    assert records[4].error == 'field "text" is not a string on line 6 of d.jsonl (got number)'
    assert records[5].text == "int id" and records[5].fields["extra"] == [1]
    assert records[6].text == "no id"
    assert all("\n" not in (r.error or "") for r in records)
    write("deep.jsonl", "[" * 100_000 + "\n")
    assert read("deep.jsonl")[0].error == "invalid JSON on line 1 of deep.jsonl: nested too deeply"
    assert all((r.text is None) == (r.error is not None) for r in records)


def test_text_and_id_field_options() -> None:
    write("d.jsonl", '{"key": "k1", "body": "hello", "id": "ignored"}\n')
    [record] = read("d.jsonl", text_field="body", id_field="key")
    assert (record.id, record.text) == ("k1", "hello")


def test_input_format_overrides_the_extension() -> None:
    write("data.log", '{"text": "json in a .log"}\n')
    assert ok(read("data.log")) == [("1", '{"text": "json in a .log"}')]
    assert ok(read("data.log", input_format="jsonl")) == [("1", "json in a .log")]
    with pytest.raises(UsageError):
        read("data.log", input_format="xml")


# -- csv / tsv ---------------------------------------------------------------

def test_csv_rows_with_quotes_commas_and_newlines() -> None:
    write("d.csv", 'id,text,lang\n1,"a, ""quoted""\nsecond line",en\n\n2,plain,fr\n')
    records = read("d.csv")
    assert ok(records) == [("1", 'a, "quoted"\nsecond line'), ("2", "plain")]
    assert records[0].fields == {"id": "1", "text": 'a, "quoted"\nsecond line', "lang": "en"}
    assert [r.line for r in records] == [2, 5]


def test_csv_ragged_row_is_an_error_record_naming_its_line() -> None:
    write("d.csv", "id,text\n1,one\n2,two,extra\n3\n4,four\n")
    records = read("d.csv")
    assert [r.id for r in records] == ["1", "2", "3", "4"]
    assert records[1].error == "ragged row on line 3 of d.csv: 3 cells, the header has 2"
    assert records[2].error == "ragged row on line 4 of d.csv: 1 cells, the header has 2"
    assert ok([records[0], records[3]]) == [("1", "one"), ("4", "four")]


def test_csv_without_the_text_column_names_the_columns() -> None:
    write("d.csv", "id,body\n1,hello\n")
    [record] = read("d.csv")
    assert record.error == 'no column "text" on line 2 of d.csv (columns: id, body)'
    assert [r.text for r in read("d.csv", text_field="body")] == ["hello"]


def test_tsv() -> None:
    write("d.tsv", "id\ttext\nx\thello, world\n")
    assert ok(read("d.tsv")) == [("x", "hello, world")]
    big = "word " * 60_000  # past the csv module's default 128 KiB cell limit
    write("big.tsv", f"id\ttext\n1\t{big}\n")
    assert ok(read("big.tsv")) == [("1", big)]


# -- encodings and binary ----------------------------------------------------

def test_invalid_utf8_line_is_an_error_record_in_strict_mode() -> None:
    write("d.txt", b"good\nbad \xff byte\nalso good\n")
    records = read("d.txt")
    assert [r.error for r in records] == [None, "invalid UTF-8 on line 2 of d.txt", None]
    assert [r.text for r in records] == ["good", None, "also good"]
    write("d.jsonl", b'{"text": "ok"}\n{"text": "\xc3("}\n{"text": "fine"}\n')
    assert [r.error for r in read("d.jsonl")] == [None, "invalid UTF-8 on line 2 of d.jsonl",
                                                  None]
    write("d.csv", b"id,text\n1,ok\n2,\xfe\n3,fine\n")
    assert [r.error for r in read("d.csv")] == [None, "invalid UTF-8 on line 3 of d.csv", None]


def test_invalid_utf8_is_replaced_in_replace_mode() -> None:
    write("d.txt", b"good\nbad \xff byte\n")
    assert [r.text for r in read("d.txt", encoding_errors="replace")] == [
        "good", "bad \ufffd byte"]
    write("d.csv", b"id,text\n2,\xfe\n")
    assert [r.text for r in read("d.csv", encoding_errors="replace")] == ["\ufffd"]


def test_binary_file_named_explicitly_is_one_error_record() -> None:
    write("blob.txt", b"text\x00\x01\x02 more\n" * 10)
    [record] = read("blob.txt")
    assert record.id == "blob.txt"
    assert record.error == "blob.txt looks like binary data, not text"


def test_binary_file_in_a_directory_walk_is_skipped_with_a_warning() -> None:
    write("dir/a.txt", "hello\n")
    write("dir/b.bin", b"\x00\x00")
    warnings: list[str] = []
    assert [(r.source, r.text) for r in read("dir", warnings=warnings)] == [
        (os.path.join("dir", "a.txt"), "hello")]
    assert warnings == [f"skipping {os.path.join('dir', 'b.bin')}: binary data, not text"]


# -- sources -----------------------------------------------------------------

def test_directory_walk_is_recursive_sorted_and_filtered_by_glob() -> None:
    for name in ("d/b.txt", "d/a.txt", "d/sub/c.txt", "d/sub/skip.md", "d/.hidden/h.txt",
                 "d/.dot.txt", "d/z.md"):
        write(name, "x\n")
    names = [s.name for s in expand_inputs(["d"], glob="*.txt")]
    assert names == [os.path.join("d", n) for n in ("a.txt", "b.txt", os.path.join("sub", "c.txt"))]
    everything = [s.name for s in expand_inputs(["d"])]
    assert len(everything) == 5 and os.path.join("d", "z.md") in everything
    assert [s.name for s in expand_inputs(["d"], glob="sub/*")] == [
        os.path.join("d", "sub", "c.txt"), os.path.join("d", "sub", "skip.md")]
    with pytest.raises(InputError, match=re.escape("no files matching *.csv in d")):
        expand_inputs(["d"], glob="*.csv")


def test_quoted_globs_are_expanded_and_duplicates_read_once() -> None:
    write("in/1.txt", "a\n")
    write("in/2.txt", "b\n")
    write("in/3.md", "c\n")
    sources = expand_inputs(["in/*.txt", "in/1.txt"])
    assert [s.name for s in sources] == ["in/1.txt", "in/2.txt"]
    with pytest.raises(InputError, match=re.escape("no files match in/*.csv")):
        expand_inputs(["in/*.csv"])


def test_missing_path_is_an_input_error() -> None:
    with pytest.raises(InputError, match=re.escape("no such file: nope.txt")):
        expand_inputs(["nope.txt"])


def test_stdin_defaults_to_txt_unless_a_format_is_given() -> None:
    sources = expand_inputs(["-"])
    assert sources == [Source("-", "stdin")]
    lines = list(read_records(sources, stdin=io.BytesIO(b'{"text": "t"}\nplain\n')))
    assert ok(lines) == [("1", '{"text": "t"}'), ("2", "plain")]
    stdin = io.BytesIO(b'{"id": "q", "text": "t"}\n')
    records = list(read_records(sources, input_format="jsonl", stdin=stdin))
    assert ok(records) == [("q", "t")]
    assert not stdin.closed


def test_per_file_mode_reads_each_file_as_one_record() -> None:
    write("docs/a.md", "# Title\r\n\r\nBody\n")
    write("docs/b.md", b"bad \xff\nline 2\n")
    records = read("docs", per_file=True)
    assert [r.id for r in records] == [os.path.join("docs", "a.md"), os.path.join("docs", "b.md")]
    assert records[0].text == "# Title\r\n\r\nBody\n"
    assert records[1].error == f"invalid UTF-8 on line 1 of {os.path.join('docs', 'b.md')}"
    assert read("docs/b.md", per_file=True, encoding_errors="replace")[0].text == (
        "bad \ufffd\nline 2\n")


def test_duplicate_ids_warn_once_per_id() -> None:
    write("d.jsonl", "".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in (7, 8, 7, 7, 8)))
    warnings: list[str] = []
    assert [r.id for r in read("d.jsonl", warnings=warnings)] == ["7", "8", "7", "7", "8"]
    assert warnings == ["duplicate id 7 (line 3); resume counts records by position",
                        "duplicate id 8 (line 5); resume counts records by position"]


def test_reading_is_streaming_a_record_arrives_before_the_input_ends() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader_end, os.fdopen(write_fd, "wb") as writer_end:
        records = read_records(expand_inputs(["-"]), stdin=reader_end)
        writer_end.write(b"first\n")
        writer_end.flush()
        got: list[Record] = []
        thread = threading.Thread(target=lambda: got.append(next(records)), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert [r.text for r in got] == ["first"]
        writer_end.write(b"second\n")
        writer_end.close()
        assert [r.text for r in records] == ["second"]


def test_count_records_for_progress() -> None:
    write("a.txt", "x\n\ny\n")
    write("b.csv", 'id,text\n1,"multi\nline"\n2,z\n')
    assert count_records(expand_inputs(["a.txt", "b.csv"])) == 4
    assert count_records(expand_inputs(["a.txt", "b.csv"]), per_file=True) == 2
    assert count_records(expand_inputs(["-"])) is None
