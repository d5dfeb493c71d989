"""The Task protocol the record runner drives."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from termlm.engine.types import (
    ChatRequest,
    Completion,
    Engine,
    Message,
    SamplingParams,
    Score,
    ScoreRequest,
)
from termlm.errors import TermlmError
from termlm.records.types import Record


class RecordError(TermlmError):
    """This record failed (the run goes on; the record becomes an error record)."""


class Task(Protocol):
    @property
    def name(self) -> str:  # read-only, so frozen dataclasses satisfy the protocol
        ...

    def messages(self, text: str, record: Record) -> tuple[Message, ...]:
        """The prompt for a record whose (possibly truncated) text is ``text``."""
        ...

    def reserve(self, engine: Engine) -> int:
        """Context tokens to keep free beyond the prompt (the reply, or a label)."""
        ...

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        """The task's output fields for one record. Raise RecordError to fail it."""
        ...


@runtime_checkable
class BatchableTask(Task, Protocol):
    """A task that is one engine request per record, so the runner can batch records.

    ``kind`` says which engine call ``request`` is for: "complete" (a ChatRequest) or
    "score" (a ScoreRequest). ``request`` may instead return the record's output
    fields when it needs no model call (qa with nothing relevant to show). ``run``
    must equal ``finish(engine call(request(...)), record, request(...))``.
    """

    @property
    def kind(self) -> str: ...

    def request(self, engine: Engine, messages: tuple[Message, ...], record: Record
                ) -> ChatRequest | ScoreRequest | dict[str, Any]: ...

    def finish(self, result: Completion | list[Score], record: Record,
               request: ChatRequest | ScoreRequest) -> dict[str, Any]: ...


class CompletionTask:
    """The engine-facing half of a task that is one chat completion per record (batch,
    extract): the reply budget, the request (constrained by ``json_schema`` when set),
    and ``run`` as ``finish`` of the completed request. Subclasses add ``messages``
    and ``finish``."""

    sampling: SamplingParams
    json_schema: dict[str, Any] | None

    @property
    def kind(self) -> str:
        return "complete"

    def reserve(self, engine: Engine) -> int:
        return self.sampling.max_tokens

    def request(self, engine: Engine, messages: tuple[Message, ...], record: Record
                ) -> ChatRequest:
        return ChatRequest(messages, self.sampling, json_schema=self.json_schema)

    def finish(self, result: Completion | list[Score], record: Record,
               request: object = None) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        request = self.request(engine, messages, record)
        return self.finish(engine.complete(request), record, request)


def record_values(text: str, record: Record) -> dict[str, str]:
    """Template variables for a record: its fields as text, then ``text`` and ``id``."""
    import json

    values: dict[str, str] = {}
    for key, value in record.fields.items():
        if isinstance(value, str):
            values[str(key)] = value
        elif value is None:
            values[str(key)] = ""
        else:
            values[str(key)] = json.dumps(value, ensure_ascii=False)
    values["text"] = text
    values["id"] = record.id
    return values
