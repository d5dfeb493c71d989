"""A chat conversation: a system prompt and a list of exchanges.

Pure data plus the few operations the chat REPL needs: trimming the oldest
exchanges to fit the model's context, undo/retry/reset, and JSON transcripts::

    {"version": 1, "model": "smollm2", "system": "...",
     "messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "interrupted": true}]}

``interrupted`` is optional (false when absent). A saved chat session (see
termlm.sessions) adds ``name``, ``created``, ``updated`` (ISO times) and
``settings`` (the model, template and sampling it ran with), so that
``termlm chat --continue`` resumes it as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from termlm import paths
from termlm.engine.types import Engine, Message
from termlm.errors import ContextOverflow, TermlmError

TRANSCRIPT_VERSION = 1
LAST_CHAT = "last_chat.json"


@dataclass
class Exchange:
    """One user message and the assistant's reply to it."""

    user: str
    reply: str
    interrupted: bool = False  # the reply was cut short by Ctrl-C

    def messages(self) -> list[Message]:
        return [Message("user", self.user), Message("assistant", self.reply)]


class Conversation:
    def __init__(self, system: str | None = None, exchanges: Iterable[Exchange] = (),
                 *, model: str | None = None) -> None:
        self.system = system or None
        self.exchanges: list[Exchange] = list(exchanges)
        self.model = model  # the model the transcript came from, if known
        self.name: str | None = None  # the chat session it belongs to
        self.created: str | None = None
        self.updated: str | None = None
        self.settings: dict[str, Any] = {}  # model, template, n_ctx and sampling, when saved
        # the session file as this conversation last read or wrote it (inode, mtime, size):
        # another chat that writes the file meanwhile changes it (termlm.sessions.save)
        self.stamp: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.exchanges)

    def messages(self, pending: str | None = None) -> list[Message]:
        """The messages to send: system, every exchange, then ``pending`` as the new turn."""
        out = [Message("system", self.system)] if self.system else []
        for exchange in self.exchanges:
            out.extend(exchange.messages())
        if pending is not None:
            out.append(Message("user", pending))
        return out

    def add(self, user: str, reply: str, *, interrupted: bool = False) -> Exchange:
        exchange = Exchange(user, reply, interrupted)
        self.exchanges.append(exchange)
        return exchange

    def fit(self, engine: Engine, reserve: int, pending: str | None = None) -> int:
        """Drop the oldest exchanges until the prompt plus ``reserve`` fits the context.

        The system prompt and ``pending`` (the message about to be sent) are never
        dropped. Returns how many exchanges were dropped. If even the system prompt
        and ``pending`` alone do not fit, raises ContextOverflow and changes nothing.
        """
        n_ctx = engine.info.n_ctx
        bare = Conversation(self.system).messages(pending)
        minimum = engine.count_prompt_tokens(bare)
        if minimum + reserve > n_ctx:
            what = "the message" if pending is not None else "the system prompt"
            exc = ContextOverflow(minimum, n_ctx, what)
            exc.message = (
                f"{what} needs {minimum} tokens (with the system prompt), which with "
                f"{reserve} kept for the reply does not fit the context window of {n_ctx}"
            )
            exc.args = (exc.message,)
            raise exc
        dropped = 0
        while self.exchanges:
            if engine.count_prompt_tokens(self.messages(pending)) + reserve <= n_ctx:
                break
            del self.exchanges[0]
            dropped += 1
        return dropped

    def undo(self) -> Exchange | None:
        """Forget the last exchange; returns it, or None when there is none."""
        return self.exchanges.pop() if self.exchanges else None

    def take_for_retry(self) -> str | None:
        """Remove the last exchange and return its user message, to be sent again."""
        exchange = self.undo()
        return exchange.user if exchange else None

    def reset(self) -> None:
        """Forget every exchange; keep the system prompt."""
        self.exchanges.clear()

    # transcripts

    def to_dict(self, model: str | None = None) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        for exchange in self.exchanges:
            messages.append({"role": "user", "content": exchange.user})
            reply: dict[str, Any] = {"role": "assistant", "content": exchange.reply}
            if exchange.interrupted:
                reply["interrupted"] = True
            messages.append(reply)
        data: dict[str, Any] = {
            "version": TRANSCRIPT_VERSION,
            "model": model if model is not None else self.model,
            "system": self.system,
            "messages": messages,
        }
        for key in ("name", "created", "updated"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.settings:
            data["settings"] = dict(self.settings)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "transcript") -> Conversation:
        if not isinstance(data, dict):
            raise TermlmError(f"{where} is not a chat transcript (expected a JSON object)")
        if data.get("version") != TRANSCRIPT_VERSION:
            raise TermlmError(f"{where}: unsupported transcript version {data.get('version')!r}"
                              f" (expected {TRANSCRIPT_VERSION})")
        system, model = data.get("system"), data.get("model")
        if system is not None and not isinstance(system, str):
            raise TermlmError(f"{where}: 'system' must be text or null")
        if model is not None and not isinstance(model, str):
            raise TermlmError(f"{where}: 'model' must be text or null")
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise TermlmError(f"{where}: 'messages' must be a list")
        exchanges: list[Exchange] = []
        for i, item in enumerate(messages):
            role = "user" if i % 2 == 0 else "assistant"
            if not isinstance(item, dict) or not isinstance(item.get("content"), str):
                raise TermlmError(f"{where}: message {i + 1} must be an object with text "
                                  "'role' and 'content'")
            if item.get("role") != role:
                raise TermlmError(f"{where}: message {i + 1} should have role {role!r}, "
                                  f"not {item.get('role')!r} (user and assistant alternate)")
            if role == "user":
                exchanges.append(Exchange(item["content"], ""))
            else:
                exchanges[-1].reply = item["content"]
                exchanges[-1].interrupted = item.get("interrupted") is True
        if len(messages) % 2:
            raise TermlmError(f"{where}: the last user message has no reply")
        convo = cls(system, exchanges, model=model)
        for key in ("name", "created", "updated"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise TermlmError(f"{where}: {key!r} must be text")
            setattr(convo, key, value)
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise TermlmError(f"{where}: 'settings' must be an object")
        convo.settings = {k: v for k, v in settings.items()
                          if isinstance(k, str) and (v is None or (isinstance(
                              v, (str, int, float)) and not isinstance(v, bool)))}
        return convo

    def first_line(self) -> str:
        """The first line of the first message: what a list of chats shows."""
        for exchange in self.exchanges:
            for line in exchange.user.splitlines():
                if line.strip():
                    return line.strip()
        return ""

    def save(self, path: Path, model: str | None = None) -> None:
        """Write the transcript (atomically: a half-written file never replaces a good one)."""
        text = json.dumps(self.to_dict(model), ensure_ascii=False, indent=2) + "\n"
        from termlm.fileio import write_atomic

        try:
            write_atomic(path, text)
        except OSError as exc:
            raise TermlmError(f"cannot save the chat to {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: Path) -> Conversation:
        from termlm.inputs import read_text_input

        try:
            text = read_text_input(path)
        except FileNotFoundError:
            raise TermlmError(f"no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TermlmError(f"cannot read {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TermlmError(f"{path} is not valid JSON (line {exc.lineno})") from None
        return cls.from_dict(data, str(path))


def legacy_last_chat_path() -> Path:
    """Where termlm before sessions saved the last chat (still read by --continue)."""
    return paths.state_dir() / LAST_CHAT
