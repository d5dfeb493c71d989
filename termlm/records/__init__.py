"""The record pipeline's I/O: readers (txt, jsonl, csv, tsv, stdin, whole files),
writers (jsonl, csv, tsv, text) and resume checkpoints. Pure: no model here."""

from __future__ import annotations

from termlm.records.readers import (
    FORMATS,
    count_records,
    detect_format,
    expand_inputs,
    read_records,
)
from termlm.records.resume import DoneSet, load_done, resume_command
from termlm.records.types import Record, Source, Warn, error_record, one_line, result_record
from termlm.records.writers import (
    WRITER_FORMATS,
    RecordWriter,
    WriterFormat,
    format_text_line,
    open_writer,
    unescape_text_line,
)

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
