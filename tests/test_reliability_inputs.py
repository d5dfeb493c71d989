"""Issue 11, inputs: one place opens them (regular files only, never blocking), a file
that cannot be read never loses the rest of the run, and odd data stays data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from termlm.errors import InputError
from termlm.inputs import NotRegular, decode_text, open_input
from termlm.records.readers import expand_inputs, read_records
from tests.conftest import Cli


class Hung(Exception):  # not an OSError (TimeoutError is one): never caught as one
    """A blocking open or read that the deadline cut off."""


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: a blocking open or read in the main thread is cut off."""
    def expired(_signum: int, _frame: Any) -> None:
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def fifo_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("hi there\n")
    os.mkfifo(folder / "f.txt")
    return folder


# -- item 2: a FIFO never hangs a command --------------------------------------------------

@pytest.mark.parametrize("args", [
    ["classify", "--labels", "a,b"],
    ["batch", "-p", "{text}", "--per-file"],
    ["batch", "-p", "{text}"],
    ["summarize"],
])
def test_a_fifo_in_a_walked_directory_is_skipped(cli: Cli, fifo_dir: Path,
                                                 args: list[str]) -> None:
    with deadline(20):
        result = cli(*args, str(fifo_dir))
    assert result.exit_code == 0, result.stderr
    assert "f.txt" in result.stderr and "FIFO" in result.stderr
    assert "f.txt" not in result.stdout


def test_a_fifo_in_a_walked_directory_is_skipped_by_translate_and_qa(
        cli: Cli, fifo_dir: Path, tmp_path: Path) -> None:
    with deadline(20):
        translated = cli("translate", "--to", "French", str(fifo_dir), "-o",
                         str(tmp_path / "fr"))
        asked = cli("qa", "--docs", str(fifo_dir), "What is there?")
    assert translated.exit_code == 0, translated.stderr
    written = [p.name for p in (tmp_path / "fr").rglob("*") if p.is_file()]
    assert written == ["a.fr.txt"]
    assert asked.exit_code in (0, 3), asked.stderr


def test_a_fifo_as_the_model_is_one_line_at_once(fifo_dir: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "termlm", "ask", "-m", str(fifo_dir / "f.txt"),
                          "hi"], capture_output=True, text=True, timeout=20)
    assert run.returncode == 1
    assert run.stderr.strip() == f"termlm: error: {fifo_dir / 'f.txt'} is a FIFO, not a GGUF file"


def test_open_input_refuses_what_is_not_a_regular_file(fifo_dir: Path) -> None:
    with deadline(5):
        with pytest.raises(NotRegular, match="is a FIFO, not a regular file"):
            open_input(fifo_dir / "f.txt")
        with pytest.raises(NotRegular, match="is a character device"):
            open_input("/dev/null")
        with pytest.raises(NotRegular, match="is a directory"):
            open_input(fifo_dir)
        with pytest.raises(InputError, match="no such file"):
            open_input(fifo_dir / "missing")


def test_a_named_device_is_refused_before_anything_runs(cli: Cli) -> None:
    result = cli("batch", "-p", "{text}", "/dev/zero")
    assert result.exit_code == 1
    assert "/dev/zero is a character device, not a regular file" in result.stderr
    assert not cli.engine.requests


def test_a_named_pipe_is_read_as_a_stream(tmp_path: Path) -> None:
    """`<(cmd)` (and /dev/stdin) are pipes the user asked for: read like stdin."""
    pipe = tmp_path / "p.txt"
    os.mkfifo(pipe)
    sources = expand_inputs([str(pipe)])
    writer = subprocess.Popen(["sh", "-c", f"printf 'one\\ntwo\\n' > {pipe}"])
    with deadline(10):
        texts = [r.text for r in read_records(sources)]
    writer.wait(timeout=5)
    assert texts == ["one", "two"]


# -- item 12: an unreadable file never drops the results already computed -----------------

def _unreadable(folder: Path) -> None:
    """A file whose read fails (EIO): a link to /proc/self/mem, or mode 000 as non-root."""
    if os.path.exists("/proc/self/mem"):
        (folder / "m.txt").symlink_to("/proc/self/mem")
    else:  # pragma: no cover
        path = folder / "m.txt"
        path.write_text("x\n")
        path.chmod(0)


@pytest.mark.parametrize("args", [["classify", "--labels", "a,b"], ["batch", "-p", "{text}"]])
def test_an_unreadable_file_in_a_walk_is_skipped_and_the_rest_written(
        cli: Cli, tmp_path: Path, args: list[str]) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("first\nsecond\n")
    _unreadable(folder)
    (folder / "z.txt").write_text("third\n")
    result = cli(*args, str(folder))
    assert result.exit_code == 0, result.stderr
    assert "skipping" in result.stderr and "m.txt" in result.stderr
    ids = [os.path.basename(json.loads(line)["id"]) for line in result.stdout.splitlines()]
    assert ids == ["a.txt:1", "a.txt:2", "z.txt:1"]


def test_a_named_file_that_fails_mid_run_is_an_error_record(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "a.txt"
    good.write_text("first\n")
    bad = tmp_path / "m.txt"
    bad.symlink_to("/proc/self/mem")
    result = cli("batch", "-p", "{text}", str(good), str(bad))
    assert result.exit_code == 3, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["id"].endswith("a.txt:1") and "output" in records[0]
    assert "cannot read" in records[1]["error"]


# -- item 13: the smaller ones -------------------------------------------------------------

def test_an_unterminated_csv_quote_does_not_swallow_later_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text('id,text\n1,fine\n2,"broken\n3,also fine\n4,"quoted, ok"\n')
    records = list(read_records(expand_inputs([str(path)])))
    assert [(r.id, r.text) for r in records if r.error is None] == [
        ("1", "fine"), ("3", "also fine"), ("4", "quoted, ok")]
    errors = [(r.id, r.error) for r in records if r.error is not None]
    # the broken row keeps its own id (its first line has it whole), never another row's
    assert errors == [("2", "unterminated quote starting on line 3 of " + str(path))]


def test_an_unterminated_quote_in_the_id_cell_falls_back_to_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text('text,id\nfine,a\nbad,"b\nok,c\n')
    records = list(read_records(expand_inputs([str(path)])))
    assert [(r.id, r.error is None) for r in records] == [("a", True), ("3", False),
                                                           ("c", True)]


def test_a_multi_line_quoted_cell_is_still_one_row(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text('id,text\n1,"two\nlines"\n2,next\n')
    records = list(read_records(expand_inputs([str(path)])))
    assert [(r.id, r.text, r.error) for r in records] == [
        ("1", "two\nlines", None), ("2", "next", None)]


def test_nan_in_a_jsonl_field_is_an_error_not_bare_nan(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1, "text": "a", "score": NaN}\n{"id": 2, "text": "b"}\n')
    result = cli("batch", "-p", "{text}", "--keep-fields", str(path))
    lines = result.stdout.splitlines()

    def bare(name: str) -> None:
        raise AssertionError(f"bare {name} in the output")

    first, second = (json.loads(line, parse_constant=bare) for line in lines)
    assert "NaN is not JSON" in first["error"]
    assert second["id"] == "2"


def test_ids_that_are_not_strings_keep_their_json_form(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"id": v, "text": "t"}) + "\n"
                            for v in (True, {"k": 1}, 7, 1.5, None, "s")))
    ids = [r.id for r in read_records(expand_inputs([str(path)]))]
    assert ids == ["true", '{"k":1}', "7", "1.5", "5", "s"]


def test_a_nul_byte_after_the_first_8_kib_is_binary(tmp_path: Path) -> None:
    walked = tmp_path / "d"
    walked.mkdir()
    (walked / "late.txt").write_bytes(b"line\n" * 4000 + b"bad\x00byte\n" + b"more\n")
    (walked / "ok.txt").write_text("fine\n")
    warnings: list[str] = []
    records = list(read_records(expand_inputs([str(walked)]), warn=warnings.append))
    errors = [r for r in records if r.error is not None]
    assert len(errors) == 1
    assert "binary data (a NUL byte) on line 4001" in str(errors[0].error)
    assert records[-1].text == "fine"
    assert not any(r.text == "more" for r in records)
    with pytest.raises(InputError, match="binary"):
        decode_text(b"x" * 9000 + b"\x00", "stdin")


# -- follow-ups: the same rules wherever a file is read -----------------------------------

def test_a_pipe_named_as_a_path_is_read_once_like_stdin(tmp_path: Path) -> None:
    """`<(cmd)` is /dev/fd/N, an anonymous pipe: read as a stream, even once its writer
    is gone, and never counted (counting would read it, leaving nothing to read)."""
    from termlm.records.readers import count_records

    read_end, write_end = os.pipe()
    os.write(write_end, b"one\ntwo\n")
    os.close(write_end)
    try:
        sources = expand_inputs([f"/proc/self/fd/{read_end}"])
        with deadline(10):
            assert count_records(sources) is None
            assert [r.text for r in read_records(sources)] == ["one", "two"]
    finally:
        os.close(read_end)


def test_counting_for_progress_skips_a_walked_fifo(fifo_dir: Path) -> None:
    from termlm.records.readers import count_records

    with deadline(10):
        assert count_records(expand_inputs([str(fifo_dir)])) == 1


def test_progress_with_a_walked_fifo_does_not_hang(cli: Cli, fifo_dir: Path) -> None:
    with deadline(20):
        result = cli("batch", "-p", "{text}", "--progress", str(fifo_dir))
    assert result.exit_code == 0, result.stderr
    assert "skipping" in result.stderr and "FIFO" in result.stderr


def test_the_skip_line_says_what_the_file_is(cli: Cli, fifo_dir: Path, tmp_path: Path) -> None:
    with deadline(20):
        batch = cli("batch", "-p", "{text}", str(fifo_dir))
        translated = cli("translate", "--to", "French", str(fifo_dir), "-o",
                         str(tmp_path / "fr"))
    line = f"skipping {fifo_dir / 'f.txt'}: a FIFO, not a regular file"
    assert line in batch.stderr
    assert line in translated.stderr


def test_translate_skips_an_unreadable_walked_file(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("hello\n")
    _unreadable(folder)
    result = cli("translate", "--to", "French", str(folder), "-o", str(tmp_path / "fr"))
    assert result.exit_code == 0, result.stderr
    assert f"skipping {folder / 'm.txt'}: cannot read it" in result.stderr
    assert [p.name for p in (tmp_path / "fr").rglob("*") if p.is_file()] == ["a.fr.txt"]


def test_a_glossary_that_is_a_device_is_one_line(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    with deadline(10):
        result = cli("translate", "--to", "French", "--glossary", "/dev/zero",
                     str(tmp_path / "a.txt"))
    assert result.exit_code == 1
    assert "/dev/zero is a character device, not a regular file" in result.stderr
    assert not cli.engine.requests


def test_a_number_too_large_for_a_float_is_not_infinity(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1, "text": "a", "x": 1e999}\n{"id": 2, "text": "b", "x": -1e400}\n'
                    '{"id": 3, "text": "c", "x": 1.5e300}\n')
    records = list(read_records(expand_inputs([str(path)])))
    assert ["too large a number" in str(r.error) for r in records] == [True, True, False]
    assert records[2].fields["x"] == 1.5e300


def test_an_object_id_keeps_its_key_order(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": {"b": 1, "a": [true, null]}, "text": "t"}\n'
                    '{"id": "\u00e9t\u00e9", "text": "t"}\n')
    ids = [r.id for r in read_records(expand_inputs([str(path)]))]
    assert ids == ['{"b":1,"a":[true,null]}', "\u00e9t\u00e9"]


def test_per_file_mode_sees_a_late_nul_byte(tmp_path: Path) -> None:
    walked = tmp_path / "d"
    walked.mkdir()
    late = b"line\n" * 4000 + b"bad\x00byte\n"
    (walked / "late.txt").write_bytes(late)
    (walked / "ok.txt").write_text("fine\n")
    warnings: list[str] = []
    records = list(read_records(expand_inputs([str(walked)]), per_file=True,
                                warn=warnings.append))
    assert [r.text for r in records] == ["fine\n"]
    assert warnings == [f"skipping {walked / 'late.txt'}: binary data, not text"]
    named = list(read_records(expand_inputs([str(walked / "late.txt")]), per_file=True))
    assert named[0].text is None and "binary data" in str(named[0].error)


@pytest.mark.parametrize("args", [
    ["classify", "--labels-file", "{dev}", "{doc}"],
    ["extract", "--schema", "{dev}", "{doc}"],
])
def test_a_side_file_that_is_a_device_is_one_line(cli: Cli, fifo_dir: Path,
                                                  args: list[str]) -> None:
    """A labels or schema file goes through open_input too: a device (which would be
    read forever) is one line, before any model loads."""
    doc = str(fifo_dir / "a.txt")
    device = [a.replace("{dev}", "/dev/zero").replace("{doc}", doc) for a in args]
    with deadline(10):
        result = cli(*device)
    assert result.exit_code in (1, 2)
    assert "/dev/zero is a character device" in result.stderr


def test_a_csv_header_with_a_column_twice_is_one_error_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("id,text,text\n1,a,b\n2,c,d\n")
    other = tmp_path / "y.csv"
    other.write_text("id,text\n3,e\n")
    records = list(read_records(expand_inputs([str(path), str(other)])))
    assert [(r.id, r.error) for r in records] == [
        (str(path), f"the header of {path} names the column 'text' twice: no row can be read"),
        ("3", None)]
