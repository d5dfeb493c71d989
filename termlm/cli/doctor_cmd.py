"""`termlm doctor`: before a long job, will this machine work?"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from termlm.cli.common import ModelOpt, handles_errors, state
from termlm.errors import ExitCode


@handles_errors
def doctor(
    ctx: typer.Context,
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as one JSON "
                                          "object.")] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Load the model in a child "
                                       "process and time a prompt and 32 tokens.")] = True,
) -> None:
    """Check this machine: versions, llama.cpp's CPU features and the AMX guard, GPU,
    threads, memory for the model, disk, then a live check. Exit 0 when all is well, 1
    otherwise.

    Example: termlm doctor -m qwen2.5-coder-0.5b
    """
    from termlm.doctor import render, run_doctor
    from termlm.output import notice

    settings = state(ctx).settings(model=model)
    if not as_json and live:
        notice("checking (the live check loads the model in a child process)...")
    report = run_doctor(settings, live=live, notify=notice)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(render(report)) + "\n")
    sys.stdout.flush()
    raise typer.Exit(int(ExitCode.OK if report.ok else ExitCode.ERROR))
