"""Writers: one flushed line per record; what they write reads back the same."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from termlm.records import (
    Record,
    error_record,
    expand_inputs,
    format_text_line,
    open_writer,
    read_records,
    result_record,
    unescape_text_line,
)

# Any text a user may feed in, except NUL (which marks a file as binary) and
# lone surrogates (which UTF-8 cannot hold).
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
IDS = st.lists(TEXT.filter(lambda s: s != ""), unique=True, max_size=8)
TRICKY = ['a "quoted", comma', "line\nbreak", "cr\ronly", "crlf\r\nend", "{text.__class__}",
          "tab\there", "  spaces  ", "", "\ufeffbom-like", "\u2028sep\x85nel", "emoji 🦙 ü"]


class RecordingStream(io.StringIO):
    """A text stream that logs every write and flush, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def write(self, s: str) -> int:
        self.events.append(("write", s))
        return super().write(s)

    def flush(self) -> None:
        self.events.append(("flush", ""))
        super().flush()


def _round_trip(fmt: str, rows: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"out.{fmt}")
        with open_writer(path, fmt, columns=["id", "text"]) as writer:  # type: ignore[arg-type]
            for rec_id, text in rows:
                writer.write({"id": rec_id, "text": text})
        records = list(read_records(expand_inputs([path]), warn=pytest.fail))
    assert all(r.error is None for r in records), [r.error for r in records]
    return [(r.id, r.text) for r in records]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=IDS, data=st.data())
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_written_records_read_back_the_same(fmt: str, ids: list[str], data: st.DataObject) -> None:
    texts = data.draw(st.lists(TEXT | st.sampled_from(TRICKY), min_size=len(ids),
                               max_size=len(ids)))
    rows = list(zip(ids, texts, strict=True))
    assert _round_trip(fmt, rows) == rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_tricky_texts_round_trip(fmt: str) -> None:
    rows = [(f"id-{i}", text) for i, text in enumerate(TRICKY)]
    assert _round_trip(fmt, rows) == rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text"])
def test_each_record_is_one_complete_write_then_a_flush(fmt: str) -> None:
    stream = RecordingStream()
    writer = open_writer(None, fmt, stream=stream)  # type: ignore[arg-type]
    writer.write({"id": "1", "output": "one\ntwo"})
    writer.write({"id": "2", "error": "boom"})
    events = stream.events
    assert [kind for kind, _ in events] == ["write", "flush", "write", "flush"]
    assert all(text.endswith("\n") for kind, text in events if kind == "write")
    if fmt == "csv":
        assert events[0][1] == 'id,output,error\n1,"one\ntwo",\n'
    else:
        assert all(text.count("\n") == 1 for kind, text in events if kind == "write")


def test_a_pipe_reader_sees_each_record_before_the_writer_closes() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w", encoding="utf-8") as pipe:
        writer = open_writer("-", "jsonl", stream=pipe)
        writer.write({"id": "1", "label": "spam"})
        assert os.read(read_fd, 1000) == b'{"id": "1", "label": "spam"}\n'
        writer.write({"id": "2", "label": "ham"})
        assert os.read(read_fd, 1000) == b'{"id": "2", "label": "ham"}\n'
    os.close(read_fd)


def test_broken_pipe_propagates() -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError), open_writer(None, "jsonl", stream=Closed()) as writer:
        writer.write({"id": "1"})


def test_stdout_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with open_writer(None, "jsonl") as writer:
        writer.write({"id": "ü", "output": "ok"})
    assert capsys.readouterr().out == '{"id": "ü", "output": "ok"}\n'


def test_csv_header_is_not_repeated_on_append_and_the_file_header_wins(tmp_path: Path) -> None:
    path = str(tmp_path / "out.csv")
    with open_writer(path, "csv", columns=["id", "label", "error"]) as writer:
        writer.write({"id": "1", "label": "a"})
    with open_writer(path, "csv", append=True, columns=["id", "other"]) as writer:
        writer.write({"id": "2", "label": "b"})
        writer.write({"id": "3", "error": "failed"})
    assert Path(path).read_text(encoding="utf-8") == (
        "id,label,error\n1,a,\n2,b,\n3,,failed\n")


def test_csv_append_to_a_new_or_empty_file_writes_the_header(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    path.write_bytes(b"")
    with open_writer(str(path), "tsv", append=True, columns=["id", "label"]) as writer:
        writer.write({"id": "1", "label": "a b"})
    assert path.read_text(encoding="utf-8") == "id\tlabel\n1\ta b\n"


def test_csv_cells_nested_values_as_json_and_unknown_keys_dropped_with_a_warning() -> None:
    stream = io.StringIO()
    warnings: list[str] = []
    with open_writer(None, "csv", stream=stream, warn=warnings.append) as writer:
        writer.write({"id": "1", "data": {"name": "Ada", "tags": ["x"]}, "ok": True, "n": None})
        writer.write({"id": "2", "surprise": 1, "data": [1, 2.5]})
        writer.write({"id": "3", "surprise": 2})
    assert stream.getvalue().splitlines() == [
        "id,data,ok,n,error",
        '1,"{""name"": ""Ada"", ""tags"": [""x""]}",true,,',
        '2,"[1, 2.5]",,,',
        "3,,,,",
    ]
    assert warnings == ["field 'surprise' is not a column of the CSV output; dropped"]


def test_text_format_lines() -> None:
    assert format_text_line({"id": "1", "output": "a\nb\\c\r"}) == "a\\nb\\\\c\\r"
    assert format_text_line({"id": "1", "label": "spam"}) == "spam"
    assert format_text_line({"id": "1", "data": {"name": "Ada"}}) == '{"name": "Ada"}'
    assert format_text_line({"id": "1", "error": "bad\ninput"}) == "ERROR: bad input"
    assert format_text_line({"id": "1", "score": 3}) == '{"score": 3}'


@given(TEXT)
def test_text_escaping_keeps_one_line_and_reverses(text: str) -> None:
    line = format_text_line({"id": "x", "output": text})
    assert "\n" not in line and "\r" not in line
    assert unescape_text_line(line) == text


def test_append_after_a_line_without_newline_starts_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "1"}\n{"id": "2", "out', encoding="utf-8")
    with open_writer(str(path), "jsonl", append=True, durable=True) as writer:
        writer.write({"id": "3"})
    assert path.read_text(encoding="utf-8").splitlines()[-1] == '{"id": "3"}'


def test_result_and_error_records() -> None:
    record = Record("7", "hello", {"id": "7", "text": "hello", "label": "input's", "lang": "en"},
                    "in.jsonl", 0)
    fields: dict[str, Any] = {"label": "greeting", "id": "never"}
    assert list(result_record(record, fields, keep_fields=False).items()) == [
        ("id", "7"), ("label", "greeting")]
    assert list(result_record(record, fields, keep_fields=True).items()) == [
        ("id", "7"), ("label", "greeting"), ("text", "hello"), ("input_label", "input's"),
        ("lang", "en")]
    assert error_record(record, "model said\nno") == {"id": "7", "error": "model said no"}
    assert json.loads(json.dumps(error_record(record, ""))) == {"id": "7",
                                                                 "error": "unknown error"}
