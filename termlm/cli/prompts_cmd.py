"""`termlm prompts`: list and show prompt templates."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from termlm.cli.common import handles_errors

app = typer.Typer(help="Prompt templates: built-ins in prompts/, yours in the config dir.\n\n"
                  "Example: termlm prompts show ask", no_args_is_help=True)


@app.command("list")
@handles_errors
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List templates: name, origin, description.

    Example: termlm prompts list
    """
    from termlm.prompts import list_templates

    rows = [
        {"name": t.name, "origin": "built-in" if t.builtin else "user",
         "description": t.description, "variables": t.variables, "path": str(t.path)}
        for t in list_templates()
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from termlm.output import is_tty, out_console

    if not is_tty(sys.stdout):  # a pipe: plain TSV
        for row in rows:
            sys.stdout.write(f"{row['name']}\t{row['origin']}\t{row['description']}\n")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "origin", "variables", "description"):
        table.add_column(column)
    for t in list_templates():
        table.add_row(t.name, "built-in" if t.builtin else "user",
                      ", ".join(t.variables) or "-", t.description)
    out_console().print(table)


@app.command("show")
@handles_errors
def show(
    name: Annotated[str, typer.Argument(help="Template name.")],
) -> None:
    """Print a template's YAML source and where it comes from.

    Example: termlm prompts show chat
    """
    from termlm.prompts import load_template

    template = load_template(name)
    origin = "built-in" if template.builtin else "user"
    sys.stderr.write(f"# {template.name} ({origin}): {template.path}\n")
    assert template.path is not None
    sys.stdout.write(template.path.read_text(encoding="utf-8"))


@app.command("path")
@handles_errors
def path() -> None:
    """Print the directory where your own templates go (they override built-ins).

    Example: cp my.yaml "$(termlm prompts path)/"
    """
    from termlm.paths import user_prompts_dir

    sys.stdout.write(f"{user_prompts_dir()}\n")
