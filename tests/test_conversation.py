"""Conversation: messages, trimming to the context, undo/retry/reset, transcripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from termlm.conversation import Conversation, Exchange
from termlm.engine.fake import MESSAGE_OVERHEAD, FakeEngine
from termlm.engine.types import Message
from termlm.errors import ContextOverflow, TermlmError


def words(n: int, word: str = "w") -> str:
    return " ".join([word] * n)


def test_messages_put_system_first_and_pending_last() -> None:
    conv = Conversation("be brief", [Exchange("hi", "hello")])
    assert conv.messages("how are you?") == [
        Message("system", "be brief"),
        Message("user", "hi"),
        Message("assistant", "hello"),
        Message("user", "how are you?"),
    ]


def test_no_system_message_when_there_is_no_system_prompt() -> None:
    assert Conversation(None).messages("hi") == [Message("user", "hi")]
    assert Conversation("").messages() == []


def test_fit_keeps_everything_when_it_fits() -> None:
    conv = Conversation("sys", [Exchange("a", "b"), Exchange("c", "d")])
    assert conv.fit(FakeEngine(n_ctx=2048), 100, "next") == 0
    assert len(conv) == 2


def test_fit_drops_oldest_exchanges_but_never_the_system_prompt() -> None:
    engine = FakeEngine(n_ctx=200)
    system = words(20, "rule")
    conv = Conversation(system, [Exchange(words(30, f"q{i}"), words(30, f"a{i}"))
                                 for i in range(4)])
    dropped = conv.fit(engine, 50, "next question")
    assert dropped > 0
    assert conv.system == system
    assert [e.user.split()[0] for e in conv.exchanges] == [f"q{i}" for i in range(dropped, 4)]
    messages = conv.messages("next question")
    assert messages[0] == Message("system", system)
    assert engine.count_prompt_tokens(messages) + 50 <= 200


def test_fit_can_drop_every_exchange() -> None:
    engine = FakeEngine(n_ctx=100)
    conv = Conversation("s", [Exchange(words(30), words(30))])
    assert conv.fit(engine, 20, words(40)) == 1
    assert len(conv) == 0


def test_a_message_too_big_for_the_context_raises_and_changes_nothing() -> None:
    engine = FakeEngine(n_ctx=100)
    conv = Conversation("sys", [Exchange("a", "b")])
    with pytest.raises(ContextOverflow) as info:
        conv.fit(engine, 25, words(80))
    assert "100" in info.value.message and "the message" in info.value.message
    assert info.value.hint
    assert len(conv) == 1


def test_reserve_counts_against_the_context() -> None:
    engine = FakeEngine(n_ctx=100)
    size = engine.count_prompt_tokens([Message("user", words(50))])
    assert size == 50 + MESSAGE_OVERHEAD + 2
    Conversation().fit(engine, 100 - size, words(50))  # exactly full: fine
    with pytest.raises(ContextOverflow):
        Conversation().fit(engine, 100 - size + 1, words(50))


def test_undo_retry_and_reset() -> None:
    conv = Conversation("sys", [Exchange("one", "1"), Exchange("two", "2")])
    undone = conv.undo()
    assert undone is not None and undone.user == "two"
    assert conv.take_for_retry() == "one"
    assert len(conv) == 0
    assert conv.undo() is None and conv.take_for_retry() is None
    conv.add("three", "3")
    conv.reset()
    assert len(conv) == 0 and conv.system == "sys"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    conv = Conversation("sys", [Exchange("hi", "hello"), Exchange("tell more", "once upon",
                                                                   interrupted=True)])
    path = tmp_path / "sub" / "chat.json"
    conv.save(path, model="smollm2")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1 and data["model"] == "smollm2" and data["system"] == "sys"
    assert data["messages"][:2] == [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}]
    assert data["messages"][3]["interrupted"] is True
    loaded = Conversation.load(path)
    assert loaded.system == "sys" and loaded.model == "smollm2"
    assert loaded.exchanges == conv.exchanges


def test_unicode_survives_a_round_trip(tmp_path: Path) -> None:
    conv = Conversation("système", [Exchange("¿qué?", "日本語 🙂")])
    conv.save(tmp_path / "c.json")
    assert Conversation.load(tmp_path / "c.json").exchanges == conv.exchanges


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a chat transcript"),
        ('{"version": 2, "messages": []}', "unsupported transcript version"),
        ('{"version": 1, "messages": {}}', "'messages' must be a list"),
        ('{"version": 1, "system": 3, "messages": []}', "'system' must be text"),
        ('{"version": 1, "messages": [{"role": "assistant", "content": "x"}]}',
         "should have role 'user'"),
        ('{"version": 1, "messages": [{"role": "user"}]}', "must be an object"),
        ('{"version": 1, "messages": [{"role": "user", "content": "x"}]}', "has no reply"),
    ],
)
def test_bad_transcripts_give_one_line_errors(tmp_path: Path, content: str,
                                              message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TermlmError) as info:
        Conversation.load(path)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_missing_transcript(tmp_path: Path) -> None:
    with pytest.raises(TermlmError, match="no such file"):
        Conversation.load(tmp_path / "nope.json")


