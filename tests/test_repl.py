"""The chat REPL driven with the FakeEngine: slash commands, multi-line input, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from termlm.conversation import Conversation, Exchange
from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest, Engine, SamplingParams, StreamEvent
from termlm.errors import EngineError
from termlm.repl import (
    ChatSession,
    IterReader,
    PromptReader,
    make_completer,
    read_message,
    run_interactive,
    run_piped,
)
from termlm.sessions import last as load_last


class Session:
    """A ChatSession with captured stdout/stderr."""

    def __init__(self, engine: Engine | None = None, *, system: str | None = "sys",
                 markdown: bool = False, **kwargs: object) -> None:
        self.engine = engine or FakeEngine()
        self.out, self.err = io.StringIO(), io.StringIO()
        self.chat = ChatSession(self.engine, Conversation(system), SamplingParams(),
                                markdown=markdown, out=self.out, err=self.err,
                                **kwargs)  # type: ignore[arg-type]

    def pipe(self, text: str) -> None:
        run_piped(self.chat, io.StringIO(text))

    @property
    def stdout(self) -> str:
        return self.out.getvalue()

    @property
    def stderr(self) -> str:
        return self.err.getvalue()

    @property
    def conv(self) -> Conversation:
        return self.chat.conversation


class InterruptingEngine(FakeEngine):
    """Its first reply is cut by Ctrl-C after ``after`` pieces."""

    def __init__(self, *args: object, after: int = 3, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.after = after
        self.interrupts = 1

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        for i, event in enumerate(super().stream(request)):
            if i == self.after and self.interrupts:
                self.interrupts -= 1
                raise KeyboardInterrupt
            yield event


class FailingEngine(FakeEngine):
    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        if any("fail" in m.content for m in request.messages if m.role == "user"):
            raise EngineError("the engine broke")
        yield from super().stream(request)


def drive(session: Session, keys: str) -> None:
    """Run the interactive loop on a prompt-toolkit prompt fed with ``keys``."""
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        run_interactive(session.chat, PromptReader(input=pipe, output=DummyOutput()))


# turns


def test_piped_turns_write_replies_to_stdout_only() -> None:
    s = Session(FakeEngine(["Hello there", "Bye now"]))
    s.pipe("hi\n\n   \nbye\n")
    assert s.stdout == "Hello there\nBye now\n"
    assert s.stderr == ""
    assert [e.user for e in s.conv.exchanges] == ["hi", "bye"]
    sent = s.engine.requests[1]
    assert isinstance(sent, ChatRequest)
    assert [m.role for m in sent.messages] == ["system", "user", "assistant", "user"]


def test_each_turn_is_autosaved() -> None:
    s = Session()
    s.pipe("one\n")
    last = load_last()
    assert last is not None and last.exchanges == [Exchange("one", "echo: one")]
    assert last.model == "fake"


def test_trimming_prints_one_notice() -> None:
    s = Session(FakeEngine(n_ctx=120))
    s.chat.sampling = SamplingParams(max_tokens=20)
    long = " ".join(["word"] * 30)
    s.pipe(f"{long}\n{long}\n{long}\n")
    assert s.stderr.count("dropped") >= 1
    assert "oldest exchange" in s.stderr and "to fit the context" in s.stderr
    assert len(s.stdout.splitlines()) == 3


def test_a_message_too_long_is_one_error_line_and_the_chat_goes_on() -> None:
    s = Session(FakeEngine(n_ctx=100))
    s.pipe(" ".join(["w"] * 200) + "\nhi\n")
    assert s.stderr.count("termlm: error:") == 1 and "context window" in s.stderr
    assert s.stdout == "echo: hi\n"
    assert s.chat.failed


def test_engine_errors_keep_the_repl_going() -> None:
    s = Session(FailingEngine())
    s.pipe("please fail\nhello\n")
    assert "termlm: error: the engine broke" in s.stderr
    assert s.stdout == "echo: hello\n"
    assert [e.user for e in s.conv.exchanges] == ["hello"]


def test_max_tokens_is_capped_by_the_room_left() -> None:
    engine = FakeEngine(n_ctx=100)
    s = Session(engine)
    s.chat.sampling = SamplingParams(max_tokens=500)
    s.pipe("hi\n")
    request = engine.requests[0]
    assert isinstance(request, ChatRequest)
    assert request.sampling.max_tokens <= 100 - engine.count_prompt_tokens(request.messages)


def test_cut_reply_gets_a_notice() -> None:
    s = Session(FakeEngine(["one two three four five"]))
    s.pipe("/set max_tokens 2\nhi\n")
    assert s.stdout == "one two\n"
    assert "[reply cut at 2 tokens]" in s.stderr


def test_markdown_replies_go_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    s = Session(FakeEngine(["**bold** reply"]), markdown=True)
    s.pipe("hi\n")
    assert "bold reply" in capsys.readouterr().out
    assert s.conv.exchanges[0].reply == "**bold** reply"


# Ctrl-C


@pytest.mark.parametrize("markdown", [False, True])
def test_ctrl_c_mid_reply_keeps_the_partial_text(markdown: bool,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    s = Session(InterruptingEngine(["once upon a time there was"], after=3), markdown=markdown)
    drive(s, "tell me a story\rand then?\r\x04")
    first, second = s.conv.exchanges
    assert first == Exchange("tell me a story", "once upon a", interrupted=True)
    assert second.user == "and then?" and not second.interrupted
    assert s.stderr.count("[interrupted]") == 1
    shown = s.stdout + capsys.readouterr().out
    assert "once upon a" in shown and "echo: and then?" in shown
    saved = load_last()
    assert saved is not None and saved.exchanges[0].interrupted


def test_piped_ctrl_c_records_the_reply_then_stops() -> None:
    s = Session(InterruptingEngine(["a b c d e"], after=2), interrupt_exits=True)
    with pytest.raises(KeyboardInterrupt):
        s.pipe("story\nnever sent\n")
    assert s.conv.exchanges == [Exchange("story", "a b", interrupted=True)]


def test_ctrl_c_on_an_empty_prompt_hints_then_exits() -> None:
    s = Session()
    drive(s, "\x03\x03never\r")
    assert "(press Ctrl-C again or Ctrl-D to exit)" in s.stderr
    assert len(s.conv) == 0


def test_ctrl_c_not_in_a_row_does_not_exit() -> None:
    s = Session()
    drive(s, "\x03hello\r\x03typed\x03/tokens\r\x04")
    assert s.stderr.count("press Ctrl-C again") == 2
    assert [e.user for e in s.conv.exchanges] == ["hello"]
    assert "context:" in s.stderr  # /tokens ran, so the session was still going


def test_ctrl_d_exits() -> None:
    s = Session()
    drive(s, "hi\r\x04after\r")
    assert [e.user for e in s.conv.exchanges] == ["hi"]


# multi-line input


def test_alt_enter_adds_a_line() -> None:
    s = Session()
    drive(s, "first\x1b\rsecond\r\x04")
    assert s.conv.exchanges[0].user == "first\nsecond"


def test_triple_quote_block_in_the_prompt() -> None:
    s = Session()
    drive(s, '"""\r/not a command\r\rline 3\r"""\r\x04')
    assert s.conv.exchanges[0].user == "/not a command\n\nline 3"


def test_triple_quote_block_piped() -> None:
    s = Session()
    s.pipe('"""\nline one\n  line two\n"""\nnext\n')
    assert [e.user for e in s.conv.exchanges] == ["line one\n  line two", "next"]


def test_ctrl_c_cancels_a_block() -> None:
    s = Session()
    drive(s, '"""\rhalf\r\x03ok\r\x04')
    assert "(cancelled)" in s.stderr
    assert [e.user for e in s.conv.exchanges] == ["ok"]


def test_unclosed_block_at_the_end_is_sent() -> None:
    assert read_message(IterReader(['"""', "a", "b"])) == ("a\nb", True)


# slash commands


def test_help_lists_commands_on_stderr() -> None:
    s = Session()
    s.pipe("/help\n")
    assert s.stdout == ""
    for name in ("/system", "/reset", "/undo", "/retry", "/set", "/model", "/save", "/load",
                 "/tokens", "/stats", "/exit"):
        assert name in s.stderr


def test_unknown_command_is_one_error_with_the_list() -> None:
    s = Session()
    s.pipe("/frobnicate now\n")
    assert "unknown command /frobnicate" in s.stderr and "/help" in s.stderr
    assert s.stdout == "" and len(s.conv) == 0


def test_double_slash_sends_a_message_starting_with_a_slash() -> None:
    s = Session()
    s.pipe("//etc/hosts is a file\n")
    assert s.conv.exchanges[0].user == "/etc/hosts is a file"


def test_exit_stops_reading() -> None:
    s = Session()
    s.pipe("one\n/exit\ntwo\n")
    assert [e.user for e in s.conv.exchanges] == ["one"]


def test_system_reset_undo() -> None:
    s = Session()
    s.pipe("/system\n/system You are a pirate.\na\nb\n/undo\n")
    assert "sys" in s.stderr.splitlines()[0]
    assert s.conv.system == "You are a pirate."
    assert [e.user for e in s.conv.exchanges] == ["a"]
    s.pipe("/reset\n/undo\n")
    assert len(s.conv) == 0 and s.conv.system == "You are a pirate."
    assert "nothing to undo" in s.stderr


def test_retry_replaces_the_last_reply() -> None:
    engine = FakeEngine(["first answer", "better answer"])
    s = Session(engine)
    s.pipe("question\n/retry\n")
    assert s.conv.exchanges == [Exchange("question", "better answer")]
    assert s.stdout == "first answer\nbetter answer\n"
    retried = engine.requests[1]
    assert isinstance(retried, ChatRequest)
    assert [m.content for m in retried.messages] == ["sys", "question"]


def test_retry_with_nothing_to_retry() -> None:
    s = Session()
    s.pipe("/retry\n")
    assert "nothing to retry" in s.stderr


def test_set_changes_sampling() -> None:
    engine = FakeEngine()
    s = Session(engine)
    s.pipe("/set temperature 0\n/set top-p 0.5\n/set max_tokens 64\n/set seed 7\nhi\n")
    request = engine.requests[0]
    assert isinstance(request, ChatRequest)
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.seed) == (
        0.0, 0.5, 7)
    assert request.sampling.max_tokens == 64
    s.pipe("/set seed none\n/set\n")
    assert s.chat.sampling.seed is None
    assert "temperature=0.0" in s.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/set temperature hot", "temperature must be a number"),
        ("/set temperature -1", "temperature must be a number from 0 (greedy) to 100"),
        ("/set temperature nan", "temperature must be a number from 0 (greedy) to 100"),
        ("/set top_p 1.5", "top_p must be a number from 0 to 1"),
        ("/set max_tokens 0", "max_tokens must be a whole number, 1 or more"),
        ("/set max_tokens 2.5", "max_tokens must be a whole number"),
        ("/set seed x", "seed must be a whole number"),
        ("/set colour red", "cannot set 'colour'"),
        ("/set temperature", "/set temperature needs a value"),
    ],
)
def test_set_validation(line: str, message: str) -> None:
    s = Session()
    before = s.chat.sampling
    s.pipe(line + "\n")
    assert message in s.stderr
    assert s.stderr.count("termlm: error:") == 1
    assert s.chat.sampling == before


def test_save_and_load(tmp_path: Path) -> None:
    s = Session()
    path = tmp_path / "talk.json"
    s.pipe(f"hello\n/save {path}\n/reset\n")
    assert len(s.conv) == 0
    assert json.loads(path.read_text(encoding="utf-8"))["messages"][0]["content"] == "hello"
    s.pipe(f"/load {path}\nagain\n")
    assert [e.user for e in s.conv.exchanges] == ["hello", "again"]
    assert "saved 1 exchange to" in s.stderr and "loaded 1 exchange from" in s.stderr


def test_load_bad_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{", encoding="utf-8")
    s = Session()
    s.pipe(f"hi\n/load {path}\n/load\n")
    assert "not valid JSON" in s.stderr and "/load needs a file name" in s.stderr
    assert [e.user for e in s.conv.exchanges] == ["hi"]


def test_tokens_and_stats() -> None:
    engine = FakeEngine(["two words"])
    s = Session(engine)
    s.pipe("/tokens\n/stats\nhi\n/stats\nhi\n")
    lines = s.stderr.splitlines()
    assert lines[0] == f"context: {engine.count_prompt_tokens(Conversation('sys').messages())}" \
        " of 2048 tokens used (0 exchanges)"
    assert "stats on" in lines[1]
    assert lines[2].startswith("2 tokens, ") and lines[2].endswith(" tok/s")
    assert "stats off" in lines[3] and len(lines) == 4


def test_model_switch_keeps_the_conversation() -> None:
    old = FakeEngine(name="small")
    new = FakeEngine(name="large", n_ctx=4096)
    asked: list[str] = []

    def open_model(name: str) -> Engine:
        asked.append(name)
        return new

    s = Session(old, open_model=open_model)
    s.pipe("hi\n/model large\nagain\n")
    assert asked == ["large"] and old.closed and not new.closed
    assert s.chat.engine is new
    request = new.requests[0]
    assert isinstance(request, ChatRequest)
    assert [m.content for m in request.messages] == ["sys", "hi", "echo: hi", "again"]
    assert "model: large, context 4096 tokens" in s.stderr


def test_model_switch_failure_keeps_the_old_engine() -> None:
    def open_model(name: str) -> Engine:
        raise EngineError(f"no model named {name!r}")

    s = Session(open_model=open_model)
    s.pipe("/model nope\nhi\n")
    assert "no model named 'nope'" in s.stderr
    assert s.stdout == "echo: hi\n"


# completion


def complete(text: str) -> list[str]:
    completer = make_completer()
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_tab_completes_commands() -> None:
    assert complete("/s") == ["/system", "/set", "/save", "/stats"]
    assert complete("/re") == ["/reset", "/retry"]
    assert "/help" in complete("/")
    assert complete("hello") == []


def test_tab_completes_set_keys_and_files(tmp_path: Path) -> None:
    assert complete("/set t") == ["temperature", "top_p"]
    assert complete("/set temperature 0") == []
    (tmp_path / "chat-one.json").write_text("{}", encoding="utf-8")
    assert complete(f"/load {tmp_path}/chat-") == ["one.json"]


# a real terminal: Ctrl-C sends SIGINT while a reply streams

_PTY_SCRIPT = """
import sys, time
from termlm.conversation import Conversation
from termlm.engine.fake import FakeEngine
from termlm.engine.types import SamplingParams
from termlm.repl import ChatSession, PromptReader, run_interactive

class Slow(FakeEngine):
    def stream(self, request):
        for event in super().stream(request):
            time.sleep(0.02)
            yield event

session = ChatSession(Slow(["word " * 400]), Conversation("sys"), SamplingParams(),
                      markdown=True, color=True)
run_interactive(session, PromptReader())
for e in session.conversation.exchanges:
    print("EXCHANGE", e.user, len(e.reply.split()), e.interrupted, file=sys.stderr)
"""


def test_ctrl_c_in_a_terminal() -> None:
    pexpect = pytest.importorskip("pexpect")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    child = pexpect.spawn(sys.executable, ["-c", _PTY_SCRIPT], env=env, encoding="utf-8",
                          timeout=30, dimensions=(40, 120))
    try:
        child.expect_exact(">>>")
        child.sendline("tell me a long story")
        child.expect("word word word word")
        child.sendintr()
        child.expect_exact("[interrupted]")
        child.expect_exact(">>>")
        child.sendline("and then?")
        child.expect_exact("echo: and then?")
        child.expect_exact(">>>")
        child.sendeof()
        child.expect(r"EXCHANGE tell me a long story (\d+) True")
        assert 4 <= int(child.match.group(1)) < 400
        child.expect_exact("EXCHANGE and then? 3 False")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_load_shows_what_it_loaded(tmp_path: Path) -> None:
    path = tmp_path / "talk.json"
    convo = Conversation("be brief", [Exchange(f"question {i}", f"answer {i}") for i in range(5)],
                         model="smollm2")
    convo.save(path)
    s = Session()
    s.pipe(f"/load {path}\n")
    err = s.stderr
    assert f"loaded 5 exchanges from {path}, made with smollm2" in err
    assert "system: be brief" in err
    assert "(2 earlier exchanges not shown)" in err
    assert "3. you: question 2" in err and "reply: answer 4" in err
    assert "question 1" not in err


def test_load_a_saved_session_by_name() -> None:
    first = Session()
    first.chat.conversation.name = "trip"
    first.pipe("pack a towel\n")
    s = Session()
    s.pipe("/load trip\n")
    assert "loaded 1 exchange from session 'trip'" in s.stderr
    assert [e.user for e in s.conv.exchanges] == ["pack a towel"]
    s.pipe("/load nosuch\n")
    assert "no file or saved session named 'nosuch'" in s.stderr


def test_history_shows_the_conversation() -> None:
    s = Session()
    s.pipe("/history\nfirst line\nsecond\n/history\n/history 1\n/history x\n")
    err = s.stderr
    assert "(nothing said yet)" in err
    assert "1. you: first line" in err and "reply: echo: second" in err
    assert "(1 earlier exchange not shown)" in err
    assert "/history takes a number, not 'x'" in err


def test_ctrl_c_before_the_first_token_saves_no_empty_turn() -> None:
    s = Session(InterruptingEngine(["never seen"], after=0), interrupt_exits=False)
    s.chat.conversation.name = "quiet"
    s.pipe("hello?\n")
    assert s.conv.exchanges == []
    assert "nothing saved" in s.stderr
    assert load_last() is None  # no file holds an empty reply either
    s.pipe("again\n")
    assert [e.user for e in s.conv.exchanges] == ["again"]


def test_settings_changed_in_the_chat_are_saved_with_it() -> None:
    s = Session()
    s.chat.conversation.name = "tuned"
    s.pipe("hi\n/set temperature 1.1\n")
    saved = load_last()
    assert saved is not None and saved.settings["temperature"] == 1.1
