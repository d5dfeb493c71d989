"""JSON schemas for constrained output: load, check, build from field names, validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from termlm.errors import UsageError
from termlm.inputs import read_text_input
from termlm.tasks.base import RecordError


def load_schema(path: Path) -> dict[str, Any]:
    try:
        text = read_text_input(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such schema file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read schema {path}: {exc}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    check_schema(schema, str(path))
    return schema  # type: ignore[no-any-return]


def check_schema(schema: Any, where: str) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise UsageError(f"{where}: a JSON schema must be an object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(top)"
        raise UsageError(f"{where} is not a valid JSON schema at {path}: {exc.message}") from None
    validator = jsonschema.Draft202012Validator(schema)
    probes: tuple[Any, ...] = ({}, [], "", 0, None)
    try:  # a $ref loop with nothing in between ({"$ref": "#"}) never ends on any value
        for probe in probes:
            validator.is_valid(probe)
    except RecursionError:
        raise UsageError(f"{where}: the schema refers to itself without end (a $ref loop)",
                         hint="a recursive schema must go through properties or items") \
            from None
    except Exception as exc:  # a $ref to nowhere (referencing's Unresolvable), and the like
        raise UsageError(f"{where}: the schema cannot be used: {exc}") from None


def schema_from_fields(names: list[str]) -> dict[str, Any]:
    """An object schema with one nullable string per field, all required."""
    fields = [n.strip() for n in names if n.strip()]
    if not fields:
        raise UsageError("--fields needs at least one field name")
    if len(set(fields)) != len(fields):
        raise UsageError("--fields lists a field twice")
    return {
        "type": "object",
        "properties": {name: {"type": ["string", "null"]} for name in fields},
        "required": fields,
        "additionalProperties": False,
    }


def validate_instance(value: Any, schema: dict[str, Any]) -> None:
    import jsonschema

    try:
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value),
                        key=lambda e: list(e.path))
    except RecursionError:
        raise RecordError("output is nested too deeply to check against the schema") from None
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(top)"
        raise RecordError(f"output does not match the schema at {where}: {first.message}")
