"""The Typer app. Each command group lives in its own small module."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from termlm import __version__
from termlm.cli.common import AppState, CtxOpt, state

app = typer.Typer(
    name="termlm",
    help="Local GGUF language models in your terminal: chat, pipes and batch jobs.\n\n"
    "Example: termlm ask 'What is the capital of France?'",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"termlm {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Show llama.cpp's log and tracebacks.")] = False,
    offline: Annotated[bool, typer.Option("--offline",
                                          help="Never download; fail if a model is missing "
                                          "(also TERMLM_OFFLINE=1).")] = False,
    ctx_size: CtxOpt = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for llama.cpp.", min=1, show_default=False)] = None,
    gpu_layers: Annotated[str | None, typer.Option(
        "--gpu-layers", help="Layers to offload to the GPU: a number, or 'auto' (all, when "
        "the build supports it).", show_default=False)] = None,
    flash_attn: Annotated[str | None, typer.Option(
        "--flash-attn", help="llama.cpp's flash attention: auto (on where the backend has it, "
        "the default), on or off.", show_default=False)] = None,
    cpu_extra_buffers: Annotated[str | None, typer.Option(
        "--cpu-extra-buffers", help="llama.cpp's extra CPU weight buffers (repacking, AMX): "
        "auto (the default: off where llama.cpp would use AMX, which crashes), on or off.",
        show_default=False)] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="llama (in-process, the default) or openai (an OpenAI-compatible "
        "server: llama-server, vLLM, Ollama, LM Studio).", show_default=False)] = None,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="Server URL for --engine openai, e.g. http://127.0.0.1:8080/v1.",
        show_default=False)] = None,
    api_key_env: Annotated[str | None, typer.Option(
        "--api-key-env", help="Environment variable that holds the server's API key.",
        show_default=False)] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, help="Requests in flight with --engine openai (default 4).",
        show_default=False)] = None,
    timeout_connect: Annotated[float | None, typer.Option(
        "--timeout-connect", help="Seconds to connect to the server, --engine openai "
        "(default 10).", show_default=False)] = None,
    timeout_read: Annotated[float | None, typer.Option(
        "--timeout-read", help="Seconds the server may send nothing before a try fails "
        "(default 120).", show_default=False)] = None,
    timeout_total: Annotated[float | None, typer.Option(
        "--timeout-total", help="Seconds one try of a request may take in all (default 600).",
        show_default=False)] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    st = state(ctx)
    st.verbose = st.verbose or verbose
    st.command = ctx.invoked_subcommand
    flags = {"n_ctx": ctx_size, "threads": threads, "n_gpu_layers": gpu_layers,
             "flash_attn": flash_attn, "cpu_extra_buffers": cpu_extra_buffers,
             "engine": engine, "base_url": base_url, "api_key_env": api_key_env,
             "concurrency": concurrency, "timeout_connect": timeout_connect,
             "timeout_read": timeout_read, "timeout_total": timeout_total}
    if offline:
        flags["offline"] = True
    st.flags.update({k: v for k, v in flags.items() if v is not None})
    logging.basicConfig(
        level=logging.DEBUG if st.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )


def _register() -> None:
    from termlm.cli import ask, chat, config_cmd, models, prompts_cmd, tasks_cmd

    app.command("ask")(ask.ask)
    app.command("chat")(chat.chat)
    app.command("batch")(tasks_cmd.batch)
    app.command("classify")(tasks_cmd.classify)
    app.command("extract")(tasks_cmd.extract)
    from termlm.cli import translate_cmd

    app.command("translate")(translate_cmd.translate)
    from termlm.cli import qa_cmd

    app.command("qa")(qa_cmd.qa)
    from termlm.cli import summarize_cmd

    app.command("summarize")(summarize_cmd.summarize)
    from termlm.cli import doctor_cmd

    app.command("doctor")(doctor_cmd.doctor)
    from termlm.cli import eval_cmd

    app.command("eval")(eval_cmd.eval_)
    from termlm.cli import bench_cmd

    app.command("bench")(bench_cmd.bench)
    app.add_typer(models.app, name="models")
    app.add_typer(prompts_cmd.app, name="prompts")
    app.add_typer(config_cmd.app, name="config")
    from termlm.cli import embed_cmd

    app.command("embed")(embed_cmd.embed)
    app.command("similar")(embed_cmd.similar)
    from termlm.cli import cluster_cmd

    app.command("cluster")(cluster_cmd.cluster)
    from termlm.cli import logs_cmd

    app.add_typer(logs_cmd.app, name="logs")


_register()


_last_interrupt = [float("-inf")]
SAME_INTERRUPT_S = 1.0


def _interrupt(_signum: int, _frame: object) -> None:
    """Ctrl-C and SIGTERM stop cleanly (exit 130). A repeat within a second is the same
    request delivered twice (``kill -INT -PGID`` reaches this process directly and through
    the crash guard), and must not cut the clean-up short."""
    import time

    now = time.monotonic()
    if now - _last_interrupt[0] < SAME_INTERRUPT_S:
        return
    _last_interrupt[0] = now
    raise KeyboardInterrupt


def _run() -> None:
    import signal

    from termlm.cli.argv import prepare_argv
    from termlm.errors import UsageError
    from termlm.output import error_line, guard_stdout

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    command = typer.main.get_command(app)
    try:
        argv = prepare_argv(sys.argv[1:], command)
    except UsageError as exc:
        error_line(exc.message)
        sys.exit(int(exc.exit_code))
    guard_stdout(lambda: command(args=argv, obj=AppState(), prog_name="termlm"))


def main() -> None:
    from termlm.crashguard import run_guarded

    run_guarded(_run)


__all__ = ["app", "main"]
