"""The record pipeline's I/O: readers (txt, jsonl, csv, tsv, stdin, whole files),
writers (jsonl, csv, tsv, text) and resume checkpoints. Pure: no model here."""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562), so importing termlm.records.types (as every
# command module does) does not load the readers and writers at start-up.
_WHERE = {
    **dict.fromkeys(["FORMATS", "count_records", "detect_format", "expand_inputs",
                     "read_records"], "readers"),
    **dict.fromkeys(["DoneSet", "load_done", "resume_command"], "resume"),
    **dict.fromkeys(["Record", "Source", "Warn", "error_record", "one_line", "result_record"],
                    "types"),
    **dict.fromkeys(["WRITER_FORMATS", "RecordWriter", "WriterFormat", "format_text_line",
                     "open_writer", "unescape_text_line"], "writers"),
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"termlm.records.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'termlm.records' has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "WRITER_FORMATS",
    "DoneSet",
    "Record",
    "RecordWriter",
    "Source",
    "Warn",
    "WriterFormat",
    "count_records",
    "detect_format",
    "error_record",
    "expand_inputs",
    "format_text_line",
    "load_done",
    "one_line",
    "open_writer",
    "read_records",
    "result_record",
    "resume_command",
    "unescape_text_line",
]
