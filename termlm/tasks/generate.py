"""`batch`: a prompt over each record; output field ``output`` (text, or JSON with a schema)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from termlm.engine.types import ChatRequest, Engine, Message, SamplingParams
from termlm.prompts import substitute
from termlm.records.types import Record
from termlm.tasks.base import RecordError, record_values
from termlm.tasks.schema import validate_instance


@dataclass(frozen=True)
class GenerateTask:
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

    def reserve(self, engine: Engine) -> int:
        return self.sampling.max_tokens

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        done = engine.complete(ChatRequest(messages, self.sampling, json_schema=self.json_schema))
        if self.json_schema is None:
            return {"output": done.text.strip(), "finish_reason": done.finish_reason}
        try:
            value = json.loads(done.text)
        except json.JSONDecodeError:
            raise RecordError(
                "the model's output is not complete JSON"
                + (" (it hit --max-tokens)" if done.finish_reason == "length" else "")
            ) from None
        validate_instance(value, self.json_schema)
        return {"output": value}
