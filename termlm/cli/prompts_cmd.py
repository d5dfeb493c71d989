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
    from termlm.errors import TermlmError
    from termlm.output import notice
    from termlm.prompts import load_template, template_files

    rows: list[dict[str, object]] = []
    for name, (path, builtin) in sorted(template_files().items()):
        origin = "built-in" if builtin else "user"
        try:
            t = load_template(name)
        except TermlmError as exc:  # one bad file is flagged, and the rest still listed
            notice(f"warning: {exc.message}")
            rows.append({"name": name, "origin": origin, "description": "",
                         "variables": [], "path": str(path), "problem": exc.message})
            continue
        rows.append({"name": t.name, "origin": origin, "description": t.description,
                     "variables": t.variables, "path": str(t.path), "problem": None})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from termlm.output import is_tty, out_console

    def description(row: dict[str, object]) -> str:
        return f"(unusable: see the warning above) {row['path']}" if row["problem"] \
            else str(row["description"])

    if not is_tty(sys.stdout):  # a pipe: plain TSV
        for row in rows:
            sys.stdout.write(f"{row['name']}\t{row['origin']}\t{description(row)}\n")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "origin", "variables", "description"):
        table.add_column(column)
    for row in rows:
        names = row["variables"]
        table.add_row(str(row["name"]), str(row["origin"]),
                      ", ".join(names) if isinstance(names, list) and names else "-",
                      Text(description(row)))
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
