"""`extract`: structured facts from each record as JSON, constrained by a schema, validated."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from termlm.engine.types import ChatRequest, Completion, Engine, Message, SamplingParams, Score
from termlm.prompts import Template
from termlm.records.types import Record
from termlm.tasks.base import record_values
from termlm.tasks.generate import parse_json_reply


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

    @property
    def kind(self) -> str:
        return "complete"

    def request(self, engine: Engine, messages: tuple[Message, ...], record: Record
                ) -> ChatRequest:
        return ChatRequest(messages, self.sampling, json_schema=self.schema)

    def finish(self, result: Completion | list[Score], record: Record,
               request: object = None) -> dict[str, Any]:
        assert isinstance(result, Completion)
        return {"data": parse_json_reply(result, self.schema)}

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        return self.finish(engine.complete(self.request(engine, messages, record)), record)
