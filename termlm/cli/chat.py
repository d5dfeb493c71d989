"""termlm chat: an interactive conversation, or one turn per line when piped."""

from __future__ import annotations

import sys
from typing import Annotated

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
from termlm.conversation import Conversation, load_last
from termlm.engine.types import Engine
from termlm.errors import ExitCode
from termlm.repl import ChatSession, PromptReader, describe, run_interactive, run_piped

ContinueOpt = Annotated[
    bool,
    typer.Option("--continue", "-c", help="Resume the last chat (saved after every turn)."),
]


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
) -> None:
    """Chat with a model. Type /help for commands; Ctrl-D leaves.

    When stdin is not a terminal, each line is one message and the replies
    are written to stdout, one after another.

    Example: printf 'Hi!\\nName three rivers.\\n' | termlm chat
    """
    from termlm import output
    from termlm.prompts import load_template

    tmpl = load_template(template or "chat")
    tmpl.render_user({"prompt": ""})  # a template that needs more than {prompt} fails now
    sampling = tmpl.sampling().override(temperature=temperature, top_p=top_p,
                                        max_tokens=max_tokens, seed=seed)

    interactive = output.is_tty(sys.stdin)
    talk: list[str] = []
    convo = load_last() if continue_ else None
    if continue_ and convo is None:
        talk.append("no previous chat to continue; starting a new one")
    elif convo is not None:
        talk.append(f"continuing the last chat ({output.plural(len(convo), 'exchange')})")
    convo = convo or Conversation(tmpl.system)
    if system is not None:
        convo.system = system or None

    app = state(ctx)
    settings = app.settings(model=model, seed=seed, n_ctx=ctx_size)
    if seed is None and settings.seed is not None:
        sampling = sampling.with_(seed=settings.seed)

    def open_model(name: str) -> Engine:
        return app.open_engine(app.settings(model=name, seed=seed, n_ctx=ctx_size))

    color = output.is_tty(sys.stderr) and not output.no_color()
    session = ChatSession(
        app.open_engine(settings), convo, sampling, open_model=open_model,
        format_user=lambda text: tmpl.render_user({"prompt": text}),
        markdown=interactive and output.is_tty(sys.stdout), color=interactive and color,
        interrupt_exits=not interactive,
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


def _prompt_reader() -> PromptReader:
    """The prompt goes to the terminal: stdout, or stderr when stdout is redirected."""
    from prompt_toolkit.output import create_output

    from termlm import output, paths

    prompt_out = None if output.is_tty(sys.stdout) else create_output(stdout=sys.stderr)
    return PromptReader(history=paths.state_dir() / "chat_history", output=prompt_out)
