"""termlm chat: an interactive conversation, or one turn per line when piped."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from termlm.cli.common import (
    CtxOpt,
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    TemplateOpt,
    TopPOpt,
    handles_errors,
    state,
)
from termlm.conversation import Conversation
from termlm.engine.types import Engine
from termlm.errors import ExitCode, UsageError
from termlm.repl import ChatSession, PromptReader, describe, run_interactive, run_piped

ContinueOpt = Annotated[
    bool,
    typer.Option("--continue", "-c", help="Resume the last chat session, with its model and "
                 "settings (flags given now win)."),
]
SessionOpt = Annotated[
    str | None,
    typer.Option("--session", "-S", help="A named session: resumed if it exists, created if "
                 "not. Saved after every turn.", show_default=False),
]
ListOpt = Annotated[bool, typer.Option("--list", help="List the saved chat sessions "
                                       "(name, last used, turns, first line) and exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="With --list: one JSON object per "
                                       "line.")]


@handles_errors
def chat(
    ctx: typer.Context,
    model: ModelOpt = None,
    system: SystemOpt = None,
    template: TemplateOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    ctx_size: CtxOpt = None,
    continue_: ContinueOpt = False,
    session_name: SessionOpt = None,
    list_: ListOpt = False,
    as_json: JsonOpt = False,
    no_log: Annotated[bool, typer.Option("--no-log", help="Keep this chat out of the log "
                                         "(termlm logs).")] = False,
) -> None:
    """Chat with a model. Type /help for commands; Ctrl-D leaves.

    Every interactive chat is a session, saved after each turn: --continue resumes
    the last one, --session NAME a named one, --list shows them. When stdin is not
    a terminal, each line is one message, the replies go to stdout one after
    another, and nothing is saved unless --session or --continue asks for it.

    Example: printf 'Hi!\\nName three rivers.\\n' | termlm chat
    """
    from termlm import output, sessions
    from termlm.logs import describe_settings
    from termlm.prompts import load_template

    if list_:
        _list(as_json)
        raise typer.Exit(int(ExitCode.OK))
    if as_json:
        raise UsageError("--json goes with --list", hint="termlm chat --list --json")

    interactive = output.is_tty(sys.stdin)
    talk: list[str] = []
    convo: Conversation | None = None
    if session_name is not None:
        convo = sessions.load(sessions.check_name(session_name))
        if convo is None:
            talk.append(f"new session {session_name!r}")
        else:
            talk.append(f"continuing session {session_name!r} "
                        f"({output.plural(len(convo), 'exchange')})")
    elif continue_:
        convo = sessions.last()
        if convo is None:
            talk.append("no previous chat to continue; starting a new one")
        else:
            label = f"session {convo.name!r}" if convo.name else "the last chat"
            talk.append(f"continuing {label} ({output.plural(len(convo), 'exchange')})")
    saved: dict[str, Any] = dict(convo.settings) if convo is not None else {}

    # flags given now > the session's own settings > the template's defaults
    template = template or _text(saved.get("template")) or "chat"
    model = model or _text(saved.get("model"))
    ctx_size = ctx_size or _int(saved.get("n_ctx"))
    tmpl = load_template(template)
    tmpl.render_user({"prompt": ""})  # a template that needs more than {prompt} fails now
    sampling = tmpl.sampling()
    given = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
             "seed": seed}
    kept = {k: saved[k] for k in given if k in saved and given[k] is None}  # flags win
    if kept:
        sampling = sampling.with_(**kept)
    sampling = sampling.override(**given)

    if convo is None:
        convo = Conversation(tmpl.system)
        convo.name = session_name
    if system is not None:
        convo.system = system or None

    app = state(ctx)
    settings = app.settings(model=model, seed=sampling.seed, n_ctx=ctx_size)
    if sampling.seed is None and settings.seed is not None:
        sampling = sampling.with_(seed=settings.seed)

    def open_model(name: str) -> Engine:
        return app.open_engine(app.settings(model=name, seed=sampling.seed, n_ctx=ctx_size))

    color = output.is_tty(sys.stderr) and not output.no_color()
    keep: dict[str, object] = {"model": settings.model, "template": template}
    if ctx_size:
        keep["n_ctx"] = ctx_size
    session = ChatSession(
        app.open_engine(settings), convo, sampling, open_model=open_model,
        format_user=lambda text: tmpl.render_user({"prompt": text}),
        markdown=interactive and output.is_tty(sys.stdout), color=interactive and color,
        interrupt_exits=not interactive,
        # a piped chat is a script: it saves only when asked to (--session, --continue)
        autosave=interactive or session_name is not None or continue_,
        spinner=output.is_tty(sys.stderr), keep=keep,
        log_settings=None if no_log else describe_settings(settings, template=template),
    )
    try:
        if interactive:
            for line in [describe(session), *talk]:
                session.notice(line)
            run_interactive(session, _prompt_reader())
        else:
            run_piped(session, sys.stdin)
    finally:
        session.engine.close()
    if session.failed and not interactive:
        raise typer.Exit(int(ExitCode.ERROR))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _list(as_json: bool) -> None:
    import json

    from termlm import output, sessions

    found = sessions.listing()
    if as_json:
        for info in found:
            sys.stdout.write(json.dumps({
                "name": info.name, "updated": info.updated, "turns": info.turns,
                "model": info.model, "first_line": info.first_line,
                **({"problem": info.problem} if info.problem else {})},
                ensure_ascii=False) + "\n")
        return
    if not found:
        output.notice("no saved chat sessions yet (termlm chat starts one)")
        return
    rows = [(info.name, _when(info.updated), str(info.turns),
             (info.problem and f"(unreadable: {info.problem})") or info.first_line)
            for info in found]
    if output.is_tty(sys.stdout):
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("name", "last used", "turns", "first line"):
            table.add_column(column, no_wrap=column != "first line",
                             justify="right" if column == "turns" else "left")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # what was typed, never markup
        output.out_console().print(table)
    else:
        sys.stdout.write("name\tlast used\tturns\tfirst line\n")
        for row in rows:
            sys.stdout.write("\t".join(cell.replace("\t", " ") for cell in row) + "\n")


def _when(stamp: str) -> str:
    """'2026-12-02 19:30' from an ISO time ('' stays '')."""
    return stamp[:16].replace("T", " ")


def _prompt_reader() -> PromptReader:
    """The prompt goes to the terminal: stdout, or stderr when stdout is redirected."""
    from prompt_toolkit.output import create_output

    from termlm import output, paths

    prompt_out = None if output.is_tty(sys.stdout) else create_output(stdout=sys.stderr)
    return PromptReader(history=paths.state_dir() / "chat_history", output=prompt_out)
