"""`termlm config`: where the config file is and what is in effect."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from termlm.cli.common import handles_errors, state

app = typer.Typer(help="Settings: flags > TERMLM_* environment > config file > defaults.\n\n"
                  "Example: termlm config show", no_args_is_help=True)


@app.command("path")
@handles_errors
def path() -> None:
    """Print the config file's path (it need not exist).

    Example: $EDITOR "$(termlm config path)"
    """
    from termlm.paths import config_file

    sys.stdout.write(f"{config_file()}\n")


@app.command("show")
@handles_errors
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the settings in effect and where each comes from.

    Example: TERMLM_CTX=2048 termlm config show
    """
    from termlm.engine.remote_http import redact_url

    settings = state(ctx).settings()
    values = settings.to_dict()
    if values.get("base_url"):  # a password in the URL is never printed
        values["base_url"] = redact_url(str(values["base_url"]))
    if as_json:
        sys.stdout.write(json.dumps({"settings": values, "source": settings.source},
                                    indent=2) + "\n")
        return
    import yaml

    # valid YAML, each key's source a comment on its own line
    for key in sorted(values):
        text = yaml.safe_dump({key: values[key]}, allow_unicode=True, sort_keys=True)
        first, _, rest = text.partition("\n")
        source = settings.source.get(key, "default")
        sys.stdout.write(f"{first}  # {source}\n{rest}")
