"""`batch`: a prompt over each record; output field ``output`` (text, or JSON with a schema)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from termlm.engine.types import Completion, Message, SamplingParams, Score
from termlm.prompts import substitute
from termlm.records.types import Record
from termlm.tasks.base import CompletionTask, RecordError, record_values
from termlm.tasks.schema import validate_instance


@dataclass(frozen=True)
class GenerateTask(CompletionTask):
    user: str  # the user pattern, with {text} and {field} placeholders
    system: str | None
    sampling: SamplingParams
    json_schema: dict[str, Any] | None = None
    name: str = "batch"

    def messages(self, text: str, record: Record) -> tuple[Message, ...]:
        values = record_values(text, record)
        try:
            user = substitute(self.user, values, "prompt")
        except Exception as exc:  # TemplateError: this record lacks a field
            raise RecordError(str(exc)) from None
        system = [Message("system", self.system)] if self.system else []
        return (*system, Message("user", user))

    def finish(self, result: Completion | list[Score], record: Record,
               request: object = None) -> dict[str, Any]:
        assert isinstance(result, Completion)
        if self.json_schema is None:
            return {"output": result.text.strip(), "finish_reason": result.finish_reason}
        return {"output": parse_json_reply(result, self.json_schema)}


def parse_json_reply(result: Completion, schema: dict[str, Any]) -> Any:
    """The reply as JSON, checked against the schema; RecordError when it is not."""
    try:
        value = json.loads(result.text)
    except json.JSONDecodeError:
        hint = " (it hit --max-tokens)" if result.finish_reason == "length" else ""
        raise RecordError(f"the model's output is not complete JSON{hint}") from None
    validate_instance(value, schema)
    return value
