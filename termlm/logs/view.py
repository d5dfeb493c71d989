"""How log entries look: one line each in a list, every field in ``logs show``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

PREVIEW = 60  # characters of the prompt in a list

_EXCHANGE_FIELDS = ("prompt_tokens", "completion_tokens", "finish_reason", "interrupted",
                    "session")
_BATCH_FIELDS = ("command", "cwd", "inputs", "output", "counts", "seconds", "status")


def local_time(iso: str, *, seconds: bool = False) -> str:
    """``2024-05-01 14:03`` in the local time zone (the text as stored if unparsable)."""
    try:
        when = datetime.fromisoformat(iso).astimezone()
    except (TypeError, ValueError):
        return str(iso)
    return when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def tokens(entry: dict[str, Any]) -> str:
    """``12+30`` (prompt + completion) for an exchange; a batch run's counts."""
    if entry.get("type") == "batch":
        counts = entry.get("counts") or {}
        if not isinstance(counts, dict):
            return ""
        return " ".join(f"{counts[k]} {k}" for k in ("ok", "failed") if k in counts)
    p, c = entry.get("prompt_tokens"), entry.get("completion_tokens")
    if p is None and c is None:
        return ""
    return f"{'?' if p is None else p}+{'?' if c is None else c}"


def preview(entry: dict[str, Any], width: int = PREVIEW) -> str:
    """The first line of the prompt (a batch run: its command and status), cut to ``width``."""
    if entry.get("type") == "batch":
        text = f"[{entry.get('status') or '?'}] {entry.get('command') or ''}"
    else:
        text = str(entry.get("prompt") or "").strip()
    first = text.splitlines()[0] if text else ""
    first = first.replace("\t", " ")
    if len(first) > width or first != text.strip():
        first = first[: max(width - 1, 0)].rstrip() + "…"
    if entry.get("interrupted"):
        first += " (interrupted)"
    return first


def row(entry: dict[str, Any]) -> list[str]:
    """The columns of a list: id, time, type, model, tokens, prompt."""
    return [str(entry["id"]), local_time(str(entry.get("time", ""))), str(entry.get("type")),
            str(entry.get("model") or "-"), tokens(entry) or "-", preview(entry)]


COLUMNS = ("id", "time", "type", "model", "tokens", "prompt")


def detail(entry: dict[str, Any]) -> str:
    """Every field of one entry, as text: a header, then the long texts in full."""
    lines = [f"id: {entry['id']}", f"type: {entry.get('type')}",
             f"time: {local_time(str(entry.get('time', '')), seconds=True)}",
             f"model: {entry.get('model') or '-'}"]
    fields = _BATCH_FIELDS if entry.get("type") == "batch" else _EXCHANGE_FIELDS
    for key in fields:
        value = entry.get(key)
        if value is None or value == "" or value is False:
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key.replace('_', ' ')}: {value}")
    for key in ("timings", "settings"):
        value = entry.get(key)
        if value:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False, sort_keys=True)}")
    text = "\n".join(lines) + "\n"
    if entry.get("type") != "batch":
        for key in ("system", "prompt", "reply"):
            value = entry.get(key)
            if value is None:
                continue
            body = str(value)
            text += f"\n--- {key}\n{body}" + ("" if body.endswith("\n") else "\n")
    return text
