"""`extract`: structured facts from each record as JSON, constrained by a schema, validated."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from termlm.engine.types import ChatRequest, Engine, Message, SamplingParams
from termlm.prompts import Template
from termlm.records.types import Record
from termlm.tasks.base import RecordError, record_values
from termlm.tasks.schema import validate_instance


@dataclass(frozen=True)
class ExtractTask:
    schema: dict[str, Any]
    template: Template
    sampling: SamplingParams
    name: str = "extract"

    def messages(self, text: str, record: Record) -> tuple[Message, ...]:
        system = self.template.render_system({"schema": json.dumps(self.schema,
                                                                   ensure_ascii=False)})
        user = self.template.render_user(record_values(text, record))
        return ((Message("system", system),) if system else ()) + (Message("user", user),)

    def reserve(self, engine: Engine) -> int:
        return self.sampling.max_tokens

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        done = engine.complete(ChatRequest(messages, self.sampling, json_schema=self.schema))
        try:
            value = json.loads(done.text)
        except json.JSONDecodeError:
            hint = " (it hit --max-tokens)" if done.finish_reason == "length" else ""
            raise RecordError(f"the model's output is not complete JSON{hint}") from None
        validate_instance(value, self.schema)
        return {"data": value}
