"""The chat REPL: read a message, stream the reply, keep the conversation.

``ChatSession`` does the work (turns and slash commands) and does not care
where lines come from. ``run_interactive`` feeds it from a prompt-toolkit
prompt (``PromptReader``), ``run_piped`` from plain lines (stdin that is not a
terminal). prompt_toolkit is imported only when a prompt is made.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from termlm import sessions
from termlm.activity import Activity, until_first
from termlm.conversation import Conversation, Exchange
from termlm.engine.types import ChatRequest, Delta, Engine, SamplingParams, StreamEvent
from termlm.errors import TermlmError, UsageError
from termlm.render import StreamResult, stream_markdown, stream_plain

if TYPE_CHECKING:
    from prompt_toolkit.completion import Completer
    from prompt_toolkit.input import Input
    from prompt_toolkit.output import Output

COMMANDS: dict[str, str] = {
    "/help": "show this list",
    "/system": "TEXT: set the system prompt (without TEXT: show it)",
    "/reset": "forget the conversation, keep the system prompt",
    "/undo": "forget the last exchange",
    "/retry": "ask for a new reply to the last message",
    "/set": "KEY VALUE: change temperature, top_p, max_tokens or seed (without KEY: show)",
    "/model": "NAME: switch to another model, keeping the conversation",
    "/save": "FILE: save the conversation as a JSON transcript",
    "/load": "FILE or SESSION: load a JSON transcript or a saved session, and show it",
    "/history": "[N]: show this conversation (the last N exchanges)",
    "/tokens": "show how much of the context window the conversation uses",
    "/stats": "toggle a tokens and speed line after each reply",
    "/exit": "leave (also Ctrl-D)",
}
SETTABLE = ("temperature", "top_p", "max_tokens", "seed")
BLOCK = '"""'
PROMPT = ">>> "
CONTINUATION = "... "
EXIT_HINT = "(press Ctrl-C again or Ctrl-D to exit)"
INPUT_HELP = ('Enter sends; Alt+Enter adds a line; a line of """ starts and ends a '
              'multi-line message; //text sends "/text".')


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_setting(key: str, value: str) -> float | int | None:
    """Check a /set value; raises UsageError with a one-line reason."""
    number: float | int
    if key in ("seed", "max_tokens"):
        if key == "seed" and value.lower() in ("none", "random"):
            return None
        try:
            number = int(value)
        except ValueError:
            extra = " or 'none'" if key == "seed" else ""
            raise UsageError(f"{key} must be a whole number{extra}, not {value!r}") from None
    else:
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"{key} must be a number, not {value!r}") from None
    SamplingParams().with_(**{key: number})  # the ranges: the one rule every source shares
    return number


class _Recorder(Iterator[StreamEvent]):
    """Passes events through and remembers the text, in case Ctrl-C lands outside the renderer."""

    def __init__(self, events: Iterator[StreamEvent]) -> None:
        self._events = events
        self.pieces: list[str] = []

    def __next__(self) -> StreamEvent:
        event = next(self._events)
        if isinstance(event, Delta):
            self.pieces.append(event.text)
        return event

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


class ChatSession:
    """A conversation with one engine: turns and slash commands."""

    def __init__(
        self,
        engine: Engine,
        conversation: Conversation,
        sampling: SamplingParams,
        *,
        open_model: Callable[[str], Engine] | None = None,
        format_user: Callable[[str], str] | None = None,
        markdown: bool = False,
        color: bool = False,
        interrupt_exits: bool = False,
        autosave: bool = True,
        spinner: bool = False,
        keep: dict[str, object] | None = None,
        log_settings: dict[str, object] | None = None,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
    ) -> None:
        self.engine = engine
        self.conversation = conversation
        self.sampling = sampling
        self.open_model = open_model  # /model NAME
        self.format_user = format_user  # typed text -> user message (the template's pattern)
        self.markdown = markdown  # live Markdown on stdout (a terminal) instead of plain text
        self.color = color
        self.interrupt_exits = interrupt_exits  # piped mode: Ctrl-C ends the whole run
        self.autosave = autosave  # save the session after every change
        self.spinner = spinner  # "reading the prompt..." on stderr until the first token
        self.keep = dict(keep or {})  # other settings the session is saved with (template, n_ctx)
        self.log_settings = log_settings  # None: exchanges are not logged (termlm.logs)
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.stats = False
        self.failed = False  # some turn or command failed (piped mode exits 1)

    # talk (stderr)

    def notice(self, message: str) -> None:
        self.err.write(f"\x1b[2m{message}\x1b[0m\n" if self.color else message + "\n")
        self.err.flush()

    def error(self, message: str, hint: str | None = None) -> None:
        prefix = "\x1b[31mtermlm: error:\x1b[0m" if self.color else "termlm: error:"
        self.err.write(f"{prefix} {message}\n" + (f"  hint: {hint}\n" if hint else ""))
        self.err.flush()

    # input

    def submit(self, text: str, *, literal: bool = False) -> bool:
        """Handle one input: a message, or (unless ``literal``) a slash command.

        Returns False when the user asked to leave. Errors are reported, not raised.
        """
        try:
            stripped = text.strip()
            if not literal and stripped.startswith("/") and not stripped.startswith("//"):
                return self.command(stripped)
            message = text if literal else stripped.removeprefix("/")
            if message.strip():
                self.turn(self.format_user(message) if self.format_user else message)
        except TermlmError as exc:
            self.failed = True
            self.error(exc.message, exc.hint)
        return True

    def turn(self, text: str) -> StreamResult:
        """Send ``text``, stream the reply, and record the exchange (even if interrupted)."""
        conv, engine = self.conversation, self.engine
        n_ctx = engine.info.n_ctx
        reserve = max(1, min(self.sampling.max_tokens, n_ctx // 4))
        dropped = conv.fit(engine, reserve, text)
        if dropped:
            self.notice(f"dropped {_plural(dropped, 'oldest exchange')} to fit the context")
        messages = conv.messages(text)
        prompt_tokens = engine.count_prompt_tokens(messages)
        room = n_ctx - prompt_tokens
        sampling = self.sampling.with_(max_tokens=max(1, min(self.sampling.max_tokens, room)))
        activity = Activity(self.err, enabled=self.spinner)
        events = _Recorder(until_first(
            engine.stream(ChatRequest(tuple(messages), sampling)), activity,
            f"reading the prompt ({_plural(prompt_tokens, 'token')})..."))
        try:
            if self.markdown:
                result = stream_markdown(events, no_color=not self.color)
            else:
                result = stream_plain(events, self.out)
                self.out.write("\n")
                self.out.flush()
        except KeyboardInterrupt:
            events.close()
            result = StreamResult("".join(events.pieces), None, True)
        finally:
            activity.stop()
        if result.interrupted and not result.text.strip():
            # nothing came back: no empty reply goes into the conversation or its file
            self.notice("[interrupted before the reply began: nothing saved]")
            if self.interrupt_exits:
                raise KeyboardInterrupt
            return result
        conv.add(text, result.text, interrupted=result.interrupted)
        self._autosave()
        self._log(text, result, sampling)
        if result.interrupted:
            self.notice("[interrupted]")
            if self.interrupt_exits:
                raise KeyboardInterrupt
        elif result.completion is not None:
            done = result.completion
            if done.finish_reason == "length":
                self.notice(f"[reply cut at {sampling.max_tokens} tokens]")
            if self.stats:
                self.notice(f"{done.usage.completion_tokens} tokens, "
                            f"{done.timings.completion_tokens_per_s:.1f} tok/s")
        return result

    def _log(self, text: str, result: StreamResult, sampling: SamplingParams) -> None:
        if self.log_settings is None:
            return
        from dataclasses import asdict

        from termlm.logs import log_exchange

        done = result.completion
        timings = None if done is None else {
            "ttft_s": done.timings.ttft_s, "total_s": done.timings.total_s,
            "completion_tokens_per_s": done.timings.completion_tokens_per_s}
        log_exchange(
            "chat", prompt=text, reply=result.text, model=self.engine.info.name,
            system=self.conversation.system,
            settings={**self.log_settings, "sampling": asdict(sampling)},
            prompt_tokens=done.usage.prompt_tokens if done else None,
            completion_tokens=done.usage.completion_tokens if done else None,
            timings=timings, finish_reason=done.finish_reason if done else None,
            interrupted=result.interrupted, session=self.conversation.name)

    def current_settings(self) -> dict[str, object]:
        """What the session runs with: saved with it, restored by --continue."""
        values: dict[str, object] = {"model": self.engine.info.name, **self.keep}  # keep: the
        # model as the user named it (a path or an alias), which the engine's name may not be
        values.update({key: getattr(self.sampling, key) for key in SETTABLE})
        return {k: v for k, v in values.items() if v is not None}

    def _autosave(self) -> None:
        convo = self.conversation
        if not self.autosave:
            return
        if not convo.exchanges and (convo.name is None
                                    or not sessions.session_path(convo.name).exists()):
            return  # nothing to keep yet: no empty session files
        convo.settings = self.current_settings()
        convo.model = self.engine.info.name
        try:
            moved = sessions.save(convo)
        except TermlmError as exc:
            self.autosave = False
            self.notice(f"not saving this chat: {exc.message}")
            return
        if moved is not None:
            self.notice(moved)

    # slash commands

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/exit", "/quit"):
            return False
        handler = getattr(self, "_cmd_" + name[1:], None) if name[1:].isalpha() else None
        if handler is None:
            raise UsageError(f"unknown command {name}", hint="commands: " + " ".join(COMMANDS))
        handler(arg)
        return True

    def _cmd_help(self, arg: str) -> None:
        width = max(map(len, COMMANDS))
        for name, text in COMMANDS.items():
            self.notice(f"{name.ljust(width)}  {text}")
        self.notice(INPUT_HELP)

    def _cmd_system(self, arg: str) -> None:
        if not arg:
            self.notice(self.conversation.system or "(no system prompt)")
            return
        self.conversation.system = arg
        self._autosave()
        self.notice("system prompt set")

    def _cmd_reset(self, arg: str) -> None:
        self.conversation.reset()
        self._autosave()
        self.notice("conversation cleared (the system prompt is kept)")

    def _cmd_undo(self, arg: str) -> None:
        if self.conversation.undo() is None:
            raise UsageError("nothing to undo")
        self._autosave()
        self.notice("forgot the last exchange")

    def _cmd_retry(self, arg: str) -> None:
        exchange = self.conversation.undo()
        if exchange is None:
            raise UsageError("nothing to retry")
        try:
            self.turn(exchange.user)
        except TermlmError:
            self.conversation.exchanges.append(exchange)
            raise

    def _cmd_set(self, arg: str) -> None:
        if not arg:
            self.notice(" ".join(f"{k}={getattr(self.sampling, k)}" for k in SETTABLE))
            return
        key, _, value = arg.partition(" ")
        key, value = key.replace("-", "_").lower(), value.strip()
        if key not in SETTABLE:
            raise UsageError(f"cannot set {key!r}", hint="settable: " + ", ".join(SETTABLE))
        if not value:
            raise UsageError(f"/set {key} needs a value")
        self.sampling = self.sampling.with_(**{key: parse_setting(key, value)})
        self._autosave()
        self.notice(f"{key} = {getattr(self.sampling, key)}")

    def _cmd_model(self, arg: str) -> None:
        if not arg:
            info = self.engine.info
            self.notice(f"model: {info.name} ({info.path}), context {info.n_ctx} tokens")
            return
        if self.open_model is None:
            raise UsageError("switching models is not available here")
        new = self.open_model(arg)
        if new is not self.engine:
            self.engine.close()
        self.engine = new
        self.keep["model"] = arg
        self._autosave()
        self.notice(f"model: {new.info.name}, context {new.info.n_ctx} tokens")

    def _cmd_save(self, arg: str) -> None:
        if not arg:
            raise UsageError("/save needs a file name")
        path = Path(arg).expanduser()
        self.conversation.save(path, self.engine.info.name)
        self.notice(f"saved {_plural(len(self.conversation), 'exchange')} to {path}")

    def _cmd_load(self, arg: str) -> None:
        if not arg:
            raise UsageError("/load needs a file name or a session name")
        path = Path(arg).expanduser()
        if not path.exists() and sessions.NAME.fullmatch(arg):
            loaded = sessions.load(arg)
            if loaded is None:
                raise UsageError(f"no file or saved session named {arg!r}",
                                 hint="termlm chat --list shows the saved sessions")
            where = f"session {arg!r}"
        else:
            loaded = Conversation.load(path)
            where = str(path)
        loaded.name = self.conversation.name  # loaded into this session, saved under its name
        loaded.created = self.conversation.created
        loaded.stamp = self.conversation.stamp  # this session's file, as this chat knows it
        model = f", made with {loaded.model}" if loaded.model else ""
        self.conversation = loaded
        self._autosave()
        self.notice(f"loaded {_plural(len(loaded), 'exchange')} from {where}{model}")
        if loaded.system:
            self.notice(f"system: {_clip(loaded.system)}")
        self._show_history(loaded.exchanges[-3:], len(loaded) - min(3, len(loaded)))

    def _cmd_history(self, arg: str) -> None:
        exchanges = self.conversation.exchanges
        if not exchanges:
            self.notice("(nothing said yet)")
            return
        count = len(exchanges)
        if arg:
            try:
                count = int(arg)
            except ValueError:
                raise UsageError(f"/history takes a number, not {arg!r}") from None
            if count < 1:
                raise UsageError("/history takes a number of exchanges, 1 or more")
        shown = exchanges[-count:]
        self._show_history(shown, len(exchanges) - len(shown))

    def _show_history(self, shown: list[Exchange], first: int) -> None:
        if first:
            self.notice(f"({_plural(first, 'earlier exchange')} not shown)")
        for number, exchange in enumerate(shown, start=first + 1):
            self.notice(f"{number}. you: {_clip(exchange.user)}")
            mark = " [interrupted]" if exchange.interrupted else ""
            self.notice(f"{' ' * len(str(number))}  reply: {_clip(exchange.reply)}{mark}")

    def _cmd_tokens(self, arg: str) -> None:
        used = self.engine.count_prompt_tokens(self.conversation.messages())
        self.notice(f"context: {used} of {self.engine.info.n_ctx} tokens used "
                    f"({_plural(len(self.conversation), 'exchange')})")

    def _cmd_stats(self, arg: str) -> None:
        self.stats = not self.stats
        self.notice(f"stats {'on' if self.stats else 'off'}")


def _clip(text: str, width: int = 100) -> str:
    """One line: the text's lines joined, cut to ``width`` characters."""
    flat = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# reading input


class LineReader(Protocol):
    def read(self, continuation: bool) -> str:
        """One line of input; raises EOFError at the end, KeyboardInterrupt on Ctrl-C."""
        ...


class IterReader:
    """Lines from an iterable (piped stdin)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)

    def read(self, continuation: bool) -> str:
        try:
            return next(self._lines).rstrip("\r\n")
        except StopIteration:
            raise EOFError from None


class _Cancelled(Exception):
    """Ctrl-C inside a triple-quote block."""


class LineDropped(KeyboardInterrupt):
    """Ctrl-C on a prompt with text: the line is dropped (not a step towards exiting)."""


def read_message(reader: LineReader) -> tuple[str, bool]:
    """The next input: one line, or a \"\"\" block (``literal``: never a slash command)."""
    text = reader.read(False)
    if text.strip() != BLOCK:
        return text, False
    lines: list[str] = []
    while True:
        try:
            line = reader.read(True)
        except EOFError:
            break
        except KeyboardInterrupt:
            raise _Cancelled from None
        if line.strip() == BLOCK:
            break
        lines.append(line)
    return "\n".join(lines).strip("\n"), True


def run_piped(session: ChatSession, lines: Iterable[str]) -> None:
    """Each line is a turn (or a slash command); blank lines are skipped."""
    reader = IterReader(lines)
    while True:
        try:
            text, literal = read_message(reader)
        except EOFError:
            return
        if text.strip() and not session.submit(text, literal=literal):
            return


def run_interactive(session: ChatSession, reader: LineReader) -> None:
    """Prompt until /exit, Ctrl-D, or Ctrl-C twice on an empty prompt."""
    armed = False
    while True:
        try:
            text, literal = read_message(reader)
        except LineDropped:
            armed = False
            continue
        except KeyboardInterrupt:
            if armed:
                return
            armed = True
            session.notice(EXIT_HINT)
            continue
        except _Cancelled:
            session.notice("(cancelled)")
            continue
        except EOFError:
            return
        armed = False
        if not text.strip():
            continue
        try:
            if not session.submit(text, literal=literal):
                return
        except KeyboardInterrupt:  # outside the reply (e.g. while counting tokens)
            session.notice("[interrupted]")


def make_completer() -> Completer:
    """Tab completion for slash commands, /set keys and /save, /load file names."""
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    paths = PathCompleter(expanduser=True)

    class SlashCompleter(Completer):
        def get_completions(self, document: Document,
                            complete_event: CompleteEvent) -> Iterator[Completion]:
            text = document.text_before_cursor
            if not text.startswith("/") or "\n" in text:
                return
            if " " not in text:
                for name, meta in COMMANDS.items():
                    if name.startswith(text.lower()):
                        yield Completion(name, -len(text), display_meta=meta)
                return
            name, _, rest = text.partition(" ")
            if name == "/set" and " " not in rest:
                for key in SETTABLE:
                    if key.startswith(rest):
                        yield Completion(key, -len(rest))
            elif name in ("/save", "/load"):
                if name == "/load" and "/" not in rest:
                    for info in sessions.listing():
                        if info.name.startswith(rest):
                            yield Completion(info.name, -len(rest), display_meta="session")
                yield from paths.get_completions(Document(rest), complete_event)

    return SlashCompleter()


class PromptReader:
    """A prompt-toolkit prompt with history, completion and multi-line keys."""

    def __init__(self, *, history: Path | None = None, input: Input | None = None,
                 output: Output | None = None) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, History, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        @bindings.add("c-c")
        def _interrupt(event: KeyPressEvent) -> None:
            # like a shell: Ctrl-C drops the line being typed; on an empty line it
            # is a step towards leaving
            dropped = bool(event.current_buffer.text)
            error = LineDropped() if dropped else KeyboardInterrupt()
            event.app.exit(exception=error, style="class:aborting")

        store: History = InMemoryHistory()
        if history is not None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                store = FileHistory(str(history))
            except OSError:
                pass
        self._session: PromptSession[str] = PromptSession(
            history=store, completer=make_completer(), key_bindings=bindings,
            complete_while_typing=False, input=input, output=output,
            prompt_continuation=lambda width, line, wrap: "." * (width - 1) + " ",
        )

    def read(self, continuation: bool) -> str:
        return self._session.prompt(CONTINUATION if continuation else PROMPT)


def describe(session: ChatSession) -> str:
    info = session.engine.info
    return (f"termlm chat: {info.name}, context {info.n_ctx} tokens. "
            "/help for commands, Ctrl-D to exit.")

