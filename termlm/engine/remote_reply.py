"""The replies of an OpenAI-compatible server, checked against the shapes the API promises.

A reply that is JSON but not the promised shape (a ``content`` that is a number,
``choices`` missing or empty, a logprob that is not a number) is never taken as an
answer: it is one :func:`~termlm.engine.remote_http.malformed` error naming the
field, such as ``choices[0].message.content is a number, not a string``. Such a
reply is not tried again (a server that answers nonsense answers it again); in a
batch the record becomes an error record, which ``--resume`` retries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from termlm.engine.remote_http import malformed
from termlm.errors import EngineError


def kind(value: Any) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json.loads makes nothing else


@dataclass(frozen=True)
class Reply:
    """The answer in a checked reply."""

    text: str
    finish_reason: str | None
    usage: tuple[int, int] | None  # (prompt, completion) tokens, when the server counted


class Shapes:
    """Checks for one server's replies (``shown``: its URL, as messages show it)."""

    def __init__(self, shown: str) -> None:
        self.shown = shown

    def error(self, what: str) -> EngineError:
        return malformed(self.shown, what)

    def _want(self, value: Any, want: type | tuple[type, ...], name: str, words: str) -> None:
        """``value`` is of type ``want`` (True and False are not numbers here)."""
        if not isinstance(value, want) or isinstance(value, bool):
            raise self.error(f"{name} is {kind(value)}, not {words}")

    def choices(self, data: dict[str, Any], *, allow_empty: bool = False) -> list[Any]:
        if "choices" not in data:
            raise self.error("choices is missing")
        choices = data["choices"]
        self._want(choices, list, "choices", "a list")
        if not choices and not allow_empty:
            raise self.error("choices is an empty list")
        for i, choice in enumerate(choices):
            self._want(choice, dict, f"choices[{i}]", "an object")
        return list(choices)

    def finish_reason(self, choice: dict[str, Any], name: str) -> str | None:
        reason = choice.get("finish_reason")
        if reason is not None:
            self._want(reason, str, f"{name}.finish_reason", "a string")
        return reason if isinstance(reason, str) else None

    def usage(self, raw: Any) -> tuple[int, int] | None:
        """(prompt, completion) tokens; None when the server did not count them."""
        if raw is None:
            return None
        self._want(raw, dict, "usage", "an object")
        counts: list[int] = []
        for key in ("prompt_tokens", "completion_tokens"):
            value = raw.get(key)
            if value is None:
                return None
            self._want(value, int, f"usage.{key}", "a whole number")
            if value < 0:
                raise self.error(f"usage.{key} is {value}, less than 0")
            counts.append(value)
        return counts[0], counts[1]

    def chat(self, data: dict[str, Any]) -> Reply:
        """A whole (not streamed) chat completion."""
        choice = self.choices(data)[0]
        if "message" not in choice:
            raise self.error("choices[0].message is missing")
        message = choice["message"]
        self._want(message, dict, "choices[0].message", "an object")
        content = message.get("content")
        if content is None:
            if message.get("refusal"):
                raise EngineError(f"server {self.shown} refused to answer: "
                                  f"{' '.join(str(message['refusal']).split())[:300]}")
            if message.get("tool_calls"):
                raise self.error("choices[0].message has tool calls and no content")
            raise self.error("choices[0].message.content is null, not a string")
        self._want(content, str, "choices[0].message.content", "a string")
        return Reply(content, self.finish_reason(choice, "choices[0]"),
                     self.usage(data.get("usage")))

    def chunk(self, chunk: Any) -> tuple[list[str], str | None, tuple[int, int] | None]:
        """One streamed event: its text pieces, its finish reason, its usage."""
        self._want(chunk, dict, "a streamed event", "an object")
        pieces: list[str] = []
        finish: str | None = None
        present = chunk.get("choices") is not None  # a usage-only event may have none
        for i, choice in enumerate(self.choices(chunk, allow_empty=True) if present else []):
            delta = choice.get("delta")
            if delta is not None:
                self._want(delta, dict, f"choices[{i}].delta", "an object")
                text = delta.get("content")
                if text is not None:
                    self._want(text, str, f"choices[{i}].delta.content", "a string")
                    pieces.append(text)
            finish = self.finish_reason(choice, f"choices[{i}]") or finish
        return pieces, finish, self.usage(chunk.get("usage"))

    def top_logprobs(self, data: dict[str, Any]) -> dict[str, float] | None:
        """The first token's distribution as {token text: logprob}; None when the reply
        has no logprobs at all (the server does not give them)."""
        choice = self.choices(data)[0]
        logprobs = choice.get("logprobs")
        if logprobs is None:
            return None
        self._want(logprobs, dict, "choices[0].logprobs", "an object")
        content = logprobs.get("content")
        if content is None:
            return None
        self._want(content, list, "choices[0].logprobs.content", "a list")
        if not content:
            return None
        first = content[0]
        self._want(first, dict, "choices[0].logprobs.content[0]", "an object")
        alternatives = first.get("top_logprobs")
        if alternatives is None:
            alternatives = []
        self._want(alternatives, list, "choices[0].logprobs.content[0].top_logprobs", "a list")
        top: dict[str, float] = {}
        for i, entry in enumerate([first, *alternatives]):
            name = "choices[0].logprobs.content[0]" + (f".top_logprobs[{i - 1}]" if i else "")
            self._want(entry, dict, name, "an object")
            token, logprob = entry.get("token"), entry.get("logprob")
            self._want(token, str, f"{name}.token", "a string")
            self._want(logprob, (int, float), f"{name}.logprob", "a number")
            value = float(logprob)
            if math.isnan(value) or value > 1e-3:  # a log-probability is at most 0
                raise self.error(f"{name}.logprob is {logprob}, not a log-probability")
            top[token] = max(min(value, 0.0), top.get(token, -math.inf))
        return top


def tokens_of(data: dict[str, Any]) -> list[int] | None:
    """The token ids of a tokenize reply; None when it is not a list of ids (a server
    whose tokenize endpoint answers something else is taken to have none)."""
    ids = data.get("tokens")
    if not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        return None
    return ids


def embedding_vectors(data: dict[str, Any], expected: int, shown_url: str) -> list[list[float]]:
    """The vectors of an OpenAI ``/embeddings`` reply, in input order, or a clear
    EngineError for a reply of the wrong shape (it is not retried: it would not change)."""
    def bad(what: str) -> EngineError:
        return EngineError(f"server {shown_url} sent a malformed embeddings reply: {what}")

    items = data.get("data")
    if not isinstance(items, list):
        raise bad(f"'data' is {kind(items)}, not a list")
    if len(items) != expected:
        raise bad(f"{len(items)} embeddings for {expected} texts")
    out: list[list[float] | None] = [None] * expected
    dims: int | None = None
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad(f"item {position} is {kind(item)}, not an object")
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected \
                or out[index] is not None:
            raise bad(f"item {position} has a bad or repeated index {index!r}")
        vector = item.get("embedding")
        if not isinstance(vector, list) or not vector:
            raise bad(f"item {position}'s embedding is {kind(vector)}, not a list of numbers")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                   and math.isfinite(x) for x in vector):
            raise bad(f"item {position}'s embedding holds something other than finite numbers")
        if dims is not None and len(vector) != dims:
            raise bad(f"embeddings of {dims} and {len(vector)} numbers in one reply")
        dims = len(vector)
        out[index] = [float(x) for x in vector]
    return [v for v in out if v is not None]
