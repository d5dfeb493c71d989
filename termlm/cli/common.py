"""What every command shares: app state, common options, error mapping, engine opening."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from termlm.config import Settings, load_settings, model_for
from termlm.engine.types import Engine
from termlm.errors import ExitCode, TermlmError

if TYPE_CHECKING:
    from termlm.engine.embedding import Embedder

EngineFactory = Callable[[Settings], Engine]
EmbedderFactory = Callable[[Settings, "str | None"], "Embedder"]  # settings, --pooling

log = logging.getLogger("termlm")


@dataclass
class AppState:
    """Travels on ``ctx.obj``. Tests inject ``engine_factory`` to use the FakeEngine."""

    verbose: bool = False
    flags: dict[str, Any] = field(default_factory=dict)
    engine_factory: EngineFactory | None = None
    embedder_factory: EmbedderFactory | None = None  # tests: the FakeEmbedder
    command: str | None = None  # the subcommand, for task_models

    def settings(self, **command_flags: Any) -> Settings:
        merged = dict(self.flags)
        merged.update({k: v for k, v in command_flags.items() if v is not None})
        settings = load_settings(merged)
        if self.command and "model" not in merged:
            chosen = model_for(settings, self.command, None)
            if chosen != settings.model:
                source = {**settings.source, "model": f"task_models.{self.command}"}
                settings = replace(settings, model=chosen, source=source)
        return settings

    def open_engine(self, settings: Settings, *, batch: bool = False) -> Engine:
        """The engine for ``settings``; ``batch`` asks for a multi-sequence one (record tasks)."""
        if self.engine_factory is not None:
            return self.engine_factory(settings)
        from termlm.engine.loader import open_engine

        return open_engine(settings, batch=batch)

    def open_embedder(self, settings: Settings, pooling: str | None = None) -> Embedder:
        """The embedding engine for ``settings.embed_model`` (``--pooling`` for a model that
        declares none)."""
        if self.embedder_factory is not None:
            return self.embedder_factory(settings, pooling)
        from termlm.engine.embed_loader import open_embedder

        return open_embedder(settings, pooling)


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppState):
        obj = AppState()
        ctx.find_root().obj = obj
    return obj


F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Map domain errors to one stderr line and an exit code; Ctrl-C to 130; EPIPE to quiet.

    The one error path for I/O errors: stdout is flushed here, before the command
    returns, so a failed write (a full disk, /dev/full) is caught like any other; an
    OSError from a failed write (ENOSPC, EIO, EROFS, EACCES, ...) is one line
    (``termlm: error: cannot write stdout: No space left on device``), exit 1. A closed
    pipe (EPIPE, ``| head -1``) is a quiet exit 0. Either way stdout is then pointed at
    /dev/null, so the interpreter's last flush prints nothing.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from termlm.output import error_line, io_error_message, settle_stdout, silence_stdout

        verbose = any(isinstance(a, typer.Context) and state(a).verbose for a in args) or any(
            isinstance(v, typer.Context) and state(v).verbose for v in kwargs.values()
        )
        try:
            try:
                result = func(*args, **kwargs)
            except typer.Exit:
                sys.stdout.flush()
                raise
            sys.stdout.flush()
            return result
        except TermlmError as exc:
            if verbose:
                log.exception("details")
            settle_stdout()
            error_line(exc.message, exc.hint)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            settle_stdout()
            sys.stderr.write("\ninterrupted\n")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(int(ExitCode.OK)) from None
        except OSError as exc:
            message = io_error_message(exc)
            if message is None:
                raise
            if verbose:
                log.exception("details")
            if exc.filename is None:
                silence_stdout()  # what could not be written must not fail again at exit
            else:
                settle_stdout()
            error_line(message)
            raise typer.Exit(int(ExitCode.ERROR)) from None

    return wrapper  # type: ignore[return-value]


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Model: a catalog name (termlm models list), a local alias, "
        "a .gguf path, or hf:owner/repo/file.gguf.", show_default=False,
    ),
]
SystemOpt = Annotated[
    str | None,
    typer.Option("--system", "-s", help="System prompt (replaces the template's).",
                 show_default=False),
]
TemplateOpt = Annotated[
    str | None,
    typer.Option("--template", "-t", help="Prompt template name (termlm prompts list).",
                 show_default=False),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option("--temperature", help="Sampling temperature; 0 is greedy.", min=0.0,
                 show_default=False),
]
TopPOpt = Annotated[
    float | None,
    typer.Option("--top-p", help="Nucleus sampling cut-off.", min=0.0, max=1.0,
                 show_default=False),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option("--max-tokens", "-n", help="Most tokens to generate.", min=1,
                 show_default=False),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Random seed, for reproducible sampling.", show_default=False),
]
StopOpt = Annotated[
    list[str] | None,
    typer.Option("--stop", help="Stop when this text is generated (repeatable).",
                 show_default=False),
]
CtxOpt = Annotated[
    int | None,
    typer.Option("--ctx", help="Context window in tokens (capped at the model's trained "
                 "context).", min=64, show_default=False),
]
