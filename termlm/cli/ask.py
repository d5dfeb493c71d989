"""`termlm ask`: one question, one answer, made for pipes."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from termlm.cli.common import (
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    TemplateOpt,
    TopPOpt,
    handles_errors,
    state,
)
from termlm.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from termlm.config import Settings
    from termlm.engine.types import ChatRequest, Engine, StreamEvent
    from termlm.render import StreamResult


@handles_errors
def ask(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(
        help="The question. Text piped on stdin is attached as context; with no PROMPT, "
        "stdin is the question.", show_default=False)] = None,
    model: ModelOpt = None,
    system: SystemOpt = None,
    template: TemplateOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: text, model, "
                                          "usage, timings.")] = False,
    no_log: Annotated[bool, typer.Option("--no-log", help="Keep this exchange out of the "
                                         "log (termlm logs).")] = False,
) -> None:
    """Ask a one-shot question; the answer streams to stdout.

    Example: cat notes.md | termlm ask "summarize this in three bullets"
    """
    from termlm.engine.types import ChatRequest, Message
    from termlm.inputs import read_stdin, stdin_is_tty
    from termlm.output import is_tty, no_color
    from termlm.prompts import load_template
    from termlm.render import PipeClosed, stream_markdown, stream_plain

    piped = "" if stdin_is_tty() else read_stdin()
    if prompt is not None and not prompt.strip():
        prompt = None
    if prompt is None and not piped.strip():
        raise UsageError("nothing to ask: give a PROMPT or pipe text on stdin",
                         hint='termlm ask "What is the capital of France?"')
    tmpl = load_template(template or "ask")
    if prompt is None:
        user = tmpl.render_user({"prompt": piped.strip(), "input": ""})
    elif piped.strip():
        user = tmpl.render_user({"prompt": prompt, "input": piped}, with_input=True)
    else:
        user = tmpl.render_user({"prompt": prompt, "input": ""})

    st = state(ctx)
    settings = st.settings(model=model)
    sampling = tmpl.sampling().override(
        temperature=temperature, top_p=top_p, max_tokens=max_tokens,
        seed=seed if seed is not None else settings.seed, stop=stop or None)
    system_text = system if system is not None else tmpl.system
    messages = ([Message("system", system_text)] if system_text else []) + [Message("user", user)]
    request = ChatRequest(tuple(messages), sampling)

    # A one-shot prompt never needs more context than its bytes (a token is at least one
    # byte) plus the template's own text and the reply: a smaller KV cache loads faster.
    needed = len((system_text or "").encode()) + len(user.encode()) + 256 + sampling.max_tokens
    settings = replace(settings, n_ctx=min(settings.n_ctx, -(-needed // 256) * 256))
    engine = st.open_engine(settings)
    try:
        events = _waiting(engine, request)
        if as_json:
            result = stream_plain(events, out=_Discard())
        elif is_tty(sys.stdout):
            result = stream_markdown(events, no_color=no_color())
        else:
            try:
                result = stream_plain(events)
            except PipeClosed as closed:  # | head: the reply so far is logged, then a quiet exit
                if not no_log:
                    _log(engine, settings, request, tmpl.name, closed.result)
                raise
            if result.text and not result.text.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.flush()
        if as_json and result.completion is not None and not result.interrupted:
            done = result.completion
            payload = {
                "text": done.text,
                "model": engine.info.name,
                "finish_reason": done.finish_reason,
                "usage": {"prompt_tokens": done.usage.prompt_tokens,
                          "completion_tokens": done.usage.completion_tokens},
                "timings": {"load_s": round(engine.load_s, 4),
                            "ttft_s": round(done.timings.ttft_s, 4),
                            "completion_tokens_per_s":
                                round(done.timings.completion_tokens_per_s, 2)},
            }
            sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        if not no_log:
            _log(engine, settings, request, tmpl.name, result)
        if result.interrupted:
            raise KeyboardInterrupt
    finally:
        engine.close()
    raise typer.Exit(int(ExitCode.OK))


def _log(engine: Engine, settings: Settings, request: ChatRequest, template: str,
         result: StreamResult) -> None:
    """The exchange into the log (termlm.logs), an interrupted one too; never fails."""
    from dataclasses import asdict

    from termlm.logs import describe_settings, log_exchange

    done = result.completion
    system = next((m.content for m in request.messages if m.role == "system"), None)
    timings = {"load_s": engine.load_s}
    prompt_tokens: int | None
    completion_tokens: int | None
    if done is not None:
        timings.update(ttft_s=done.timings.ttft_s, total_s=done.timings.total_s,
                       completion_tokens_per_s=done.timings.completion_tokens_per_s)
        prompt_tokens, completion_tokens = done.usage.prompt_tokens, done.usage.completion_tokens
    else:  # cut short: the engine gave no usage, so count the prompt and what came back
        try:
            prompt_tokens = engine.count_prompt_tokens(request.messages)
            completion_tokens = engine.count_tokens(result.text) if result.text else 0
        except Exception:  # the log never changes how the command ends
            prompt_tokens = completion_tokens = None
    log_exchange(
        "ask", prompt=request.messages[-1].content, system=system, reply=result.text,
        model=engine.info.name,
        settings=describe_settings(settings, template=template,
                                   sampling=asdict(request.sampling)),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        timings=timings, finish_reason=done.finish_reason if done else None,
        interrupted=result.interrupted)


def _waiting(engine: Engine, request: ChatRequest) -> Iterator[StreamEvent]:
    """The reply's events, with "reading the prompt (N tokens)..." on a terminal's stderr
    until the first one arrives."""
    from termlm.activity import Activity, until_first
    from termlm.output import plural

    activity = Activity()
    if not activity.enabled:
        return engine.stream(request)
    tokens = engine.count_prompt_tokens(request.messages)
    return until_first(engine.stream(request), activity,
                       f"reading the prompt ({plural(tokens, 'token')})...")


class _Discard:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        return None
