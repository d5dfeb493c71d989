"""`extract`: structured facts from each record as JSON, constrained by a schema, validated."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from termlm.engine.types import Completion, Message, SamplingParams, Score
from termlm.prompts import Template
from termlm.records.types import Record
from termlm.tasks.base import CompletionTask, record_values
from termlm.tasks.generate import parse_json_reply


@dataclass(frozen=True)
class ExtractTask(CompletionTask):
    json_schema: dict[str, Any]
    template: Template
    sampling: SamplingParams
    name: str = "extract"

    def messages(self, text: str, record: Record) -> tuple[Message, ...]:
        system = self.template.render_system({"schema": json.dumps(self.json_schema,
                                                                   ensure_ascii=False)})
        user = self.template.render_user(record_values(text, record))
        return ((Message("system", system),) if system else ()) + (Message("user", user),)

    def finish(self, result: Completion | list[Score], record: Record,
               request: object = None) -> dict[str, Any]:
        assert isinstance(result, Completion)
        return {"data": parse_json_reply(result, self.json_schema)}
