"""Resume: a rerun skips finished records, retries failed ones, and repairs a torn output."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path

import pytest

from termlm.errors import UsageError
from termlm.records import (
    DoneSet,
    Record,
    error_record,
    expand_inputs,
    load_done,
    open_writer,
    read_records,
    result_record,
    resume_command,
)


def rec(rec_id: str) -> Record:
    return Record(rec_id, "t", {}, "in.txt", 0)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_batch(inp: Path, out: Path, fail: set[str], *, resume: bool, crash_after: int | None = None,
              fmt: str = "jsonl", warnings: list[str] | None = None) -> int:
    """A tiny driver: label each record, fail those in ``fail``; returns how many it ran."""
    done = DoneSet()
    if resume:
        done = load_done(str(out), fmt, warn=(warnings if warnings is not None else []).append)
    ran = 0
    columns = ["id", "label", "error"]
    with open_writer(str(out), fmt, append=resume, columns=columns) as writer:  # type: ignore[arg-type]
        for record in read_records(expand_inputs([str(inp)])):
            if done.is_done(record):
                continue
            if crash_after is not None and ran == crash_after:
                writer.stream.write('{"id": "torn", "lab')  # killed mid-write
                return ran
            ran += 1
            if record.id in fail:
                writer.write(error_record(record, "engine failed"))
            else:
                writer.write(result_record(record, {"label": (record.text or "").upper()}, False))
    return ran


def test_missing_or_empty_output_means_nothing_done(tmp_path: Path) -> None:
    assert len(load_done(str(tmp_path / "none.jsonl"))) == 0
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert not load_done(str(tmp_path / "empty.jsonl")).is_done(rec("1"))


def test_half_written_last_line_is_cut_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "1", "label": "a"}\n{"id": "2", "label": "b"}\n{"id": "3", "la',
                   encoding="utf-8")
    warnings: list[str] = []
    done = load_done(str(out), warn=warnings.append)
    assert done.ids == ["1", "2"] and done.repaired
    assert warnings == [f"{out}: removed a half-written last line (line 3)"]
    assert out.read_text(encoding="utf-8") == (
        '{"id": "1", "label": "a"}\n{"id": "2", "label": "b"}\n')


def test_a_complete_last_line_without_newline_is_cut_too(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "1"}\n{"id": "2"}', encoding="utf-8")
    assert load_done(str(out)).ids == ["1"]
    assert out.read_text(encoding="utf-8") == '{"id": "1"}\n'


def test_duplicate_ids_are_done_by_occurrence(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps({"id": i, "label": "x"}) + "\n" for i in ("7", "8", "7")),
                   encoding="utf-8")
    done = load_done(str(out))
    inputs = ["7", "8", "7", "7", "9", "8"]
    assert [done.is_done(rec(i)) for i in inputs] == [True, True, True, False, False, False]


def test_errors_are_retried_and_the_file_ends_with_every_id_once(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("".join(f"line {i}\n" for i in range(1, 9)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    mode = 0o640
    assert run_batch(inp, out, fail={"2", "5"}, resume=False, crash_after=6) == 6
    out.chmod(mode)
    warnings: list[str] = []
    assert run_batch(inp, out, fail=set(), resume=True, warnings=warnings) == 4
    assert warnings == [f"{out}: removed a half-written last line (line 7)",
                        f"{out}: retrying 2 records that failed before"]
    final = lines(out)
    assert Counter(str(r["id"]) for r in final) == Counter(str(i) for i in range(1, 9))
    assert all("error" not in r for r in final)
    assert [r["id"] for r in final] == ["1", "3", "4", "6", "2", "5", "7", "8"]
    assert stat.S_IMODE(out.stat().st_mode) == mode  # the atomic rewrite kept the mode
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert run_batch(inp, out, fail=set(), resume=True) == 0  # nothing left to do


def test_errors_count_as_done_without_retry(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    content = '{"id": "1", "label": "a"}\n{"id": "2", "error": "boom"}\n'
    out.write_text(content, encoding="utf-8")
    done = load_done(str(out), retry_errors=False)
    assert done.ids == ["1", "2"] and not done.repaired
    assert out.read_text(encoding="utf-8") == content
    done = load_done(str(out))
    assert done.ids == ["1"] and done.errors_removed == 1
    assert out.read_text(encoding="utf-8") == '{"id": "1", "label": "a"}\n'


def test_unreadable_middle_lines_are_removed_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "1"}\nnot json\n\xff\xfe\n[1]\n{"id": "2"}\n')
    warnings: list[str] = []
    assert load_done(str(out), warn=warnings.append).ids == ["1", "2"]
    assert warnings == [f"{out}: removed unreadable line {n}" for n in (2, 3, 4)]
    assert out.read_bytes() == b'{"id": "1"}\n{"id": "2"}\n'


def test_csv_resume_repairs_and_retries(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\nb\nc\nd\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    out.write_text('id,label,error\n1,A,\n2,,engine failed\n3,"multi\nline",\n4,"D',
                   encoding="utf-8")
    warnings: list[str] = []
    assert run_batch(inp, out, fail=set(), resume=True, fmt="csv", warnings=warnings) == 2
    assert out.read_text(encoding="utf-8") == (
        'id,label,error\n1,A,\n3,"multi\nline",\n2,B,\n4,D,\n')
    assert len(warnings) == 2 and "half-written last line (line 6)" in warnings[0]


def test_csv_with_only_a_torn_header_starts_over(tmp_path: Path) -> None:
    out = tmp_path / "out.tsv"
    out.write_text("id\tla", encoding="utf-8")
    assert len(load_done(str(out), "tsv")) == 0
    assert out.read_bytes() == b""


def test_text_output_cannot_be_resumed(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot resume into text output"):
        load_done(str(tmp_path / "out.txt"), "text")
    with pytest.raises(UsageError, match="needs an output file"):
        load_done("-", "jsonl")


def test_resume_command() -> None:
    assert resume_command(["termlm", "batch", "in.txt", "-o", "out file.jsonl"]) == (
        "termlm batch in.txt -o 'out file.jsonl' --resume")
    assert resume_command(["termlm", "batch", "--resume", "x"]) == "termlm batch --resume x"
    assert resume_command(["termlm", "batch", "--", "-odd-name.txt"]) == (
        "termlm batch --resume -- -odd-name.txt")
