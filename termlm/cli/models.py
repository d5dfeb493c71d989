"""`termlm models`: list, pull, inspect, locate and delete model files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from termlm.cli.common import handles_errors, state

if TYPE_CHECKING:
    from termlm.config import Settings
    from termlm.models.gguf import GGUFHeader
    from termlm.models.resolve import ResolvedModel

app = typer.Typer(
    help="Manage models: the catalog, pulled files, and GGUF header details.\n\n"
    "Example: termlm models list",
    no_args_is_help=True,
    rich_markup_mode=None,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
NameArg = Annotated[str, typer.Argument(help="A catalog name, a local alias, "
                                        "hf:owner/repo/file.gguf, or a .gguf path.",
                                        metavar="NAME", show_default=False)]


def human_count(n: int) -> str:
    """``134515008`` -> ``134.5M``."""
    for limit, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= limit:
            return f"{n / limit:.1f}{unit}"
    return str(n)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _rows(settings: Settings) -> list[dict[str, Any]]:
    from termlm.models.catalog import load_catalog
    from termlm.models.resolve import is_pulled, local_path

    rows: list[dict[str, Any]] = []
    for name, entry in load_catalog().items():
        rows.append({
            "name": name, "kind": "catalog", "default": name == settings.model,
            "size": entry.size, "pulled": is_pulled(entry), "license": entry.license,
            "notes": entry.notes, "path": str(local_path(entry)),
            "source": [str(s) for s in entry.sources],
        })
    for name, raw in sorted(settings.models.items()):
        path = Path(raw).expanduser()
        size = path.stat().st_size if path.is_file() else None
        rows.append({
            "name": name, "kind": "alias", "default": name == settings.model, "size": size,
            "pulled": size is not None, "license": "", "notes": f"local alias for {path}",
            "path": str(path), "source": [str(path)],
        })
    return rows


@app.command("list")
@handles_errors
def list_models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List catalog models and your local aliases.

    Shows each model's size, whether it is pulled, and its license; * marks the default.

    Example: termlm models list --json
    """
    from termlm.models.pull import human_size
    from termlm.output import is_tty, out_console

    rows = _rows(state(ctx).settings())
    if as_json:
        _out(json.dumps(rows, indent=2))
        return

    def size(row: dict[str, Any]) -> str:
        return human_size(row["size"]) if row["size"] is not None else "-"

    def pulled(row: dict[str, Any]) -> str:
        if row["kind"] == "alias":
            return "local" if row["pulled"] else "missing"
        return "yes" if row["pulled"] else "no"

    if not is_tty(sys.stdout):
        for row in rows:  # name, size, pulled, default, license, notes
            _out("\t".join([row["name"], size(row), pulled(row),
                            "default" if row["default"] else "-", row["license"] or "-",
                            row["notes"] or "-"]))
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "size", "pulled", "license", "notes"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for row in rows:
        name = f"{row['name']} *" if row["default"] else row["name"]
        table.add_row(name, size(row), pulled(row), row["license"], row["notes"])
    out_console().print(table)


@app.command()
@handles_errors
def pull(ctx: typer.Context, name: NameArg) -> None:
    """Download and verify a model, then print its path.

    NAME is a catalog name or hf:owner/repo/file.gguf. Progress goes to stderr.

    Example: termlm models pull smollm2
    """
    from termlm.errors import ModelMissing
    from termlm.models import catalog
    from termlm.models.pull import pull as pull_model
    from termlm.models.resolve import is_pulled, local_path, stderr_notify

    settings = state(ctx).settings()
    if name in settings.models:
        stderr_notify(f"{name} is a local alias: nothing to pull")
        _out(str(Path(settings.models[name]).expanduser()))
        return
    entry = catalog.get_entry(name)
    if entry is not None and is_pulled(entry):
        stderr_notify(f"{name} is already pulled")
        _out(str(local_path(entry)))
        return
    if settings.offline and (entry is not None or name.startswith("hf:")):
        raise ModelMissing(f"cannot pull {name!r}: offline mode is on",
                           hint="drop --offline (or unset TERMLM_OFFLINE) to download")
    _out(str(pull_model(entry or name, notify=stderr_notify)))


def _resolve(ctx: typer.Context, name: str) -> ResolvedModel:
    from termlm.models.resolve import resolve_model

    return resolve_model(name, state(ctx).settings(), allow_pull=False)


def _info_lines(resolved: ResolvedModel, header: GGUFHeader) -> list[tuple[str, str]]:
    from termlm.models.pull import human_size

    def known(value: int | None) -> str:
        return "unknown" if value is None else str(value)

    heads = known(header.head_count)
    if header.head_count_kv is not None and header.head_count_kv != header.head_count:
        heads += f" (kv {header.head_count_kv})"
    if header.has_chat_template:
        template = "yes"
    elif resolved.turn_format is not None:
        template = f"no (termlm uses the catalog's {resolved.turn_format.name} turn format)"
    else:
        template = "no (termlm uses a plain User:/Assistant: format)"
    return [
        ("name", resolved.name),
        ("model", header.name or "unknown"),
        ("architecture", header.architecture or "unknown"),
        ("parameters", human_count(header.parameter_count)),
        ("quantization", header.quantization or "unknown"),
        ("trained context", known(header.context_length)),
        ("layers", known(header.block_count)),
        ("heads", heads),
        ("embedding size", known(header.embedding_length)),
        ("vocab", known(header.vocab_size)),
        ("chat template", template),
        ("file size", f"{human_size(header.file_size)} ({header.file_size} bytes)"),
        ("path", str(header.path)),
    ]


@app.command()
@handles_errors
def info(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """Show a model's details, read from its GGUF header.

    Architecture, parameters, quantization, trained context, layers, heads, vocabulary
    and chat template. Weights are never loaded, and nothing is downloaded.

    Example: termlm models info smollm2
    """
    from termlm.models.gguf import read_gguf

    resolved = _resolve(ctx, name)
    header = read_gguf(resolved.path)
    if as_json:
        fields = header.to_dict()
        fields["model_name"] = fields.pop("name")
        data = {"name": resolved.name, **fields}
        data["catalog"] = resolved.entry.to_dict() if resolved.entry else None
        _out(json.dumps(data, indent=2, ensure_ascii=False))
        return
    lines = _info_lines(resolved, header)
    width = max(len(key) for key, _ in lines) + 1
    for key, value in lines:
        _out(f"{key + ':':<{width}} {value}")


@app.command()
@handles_errors
def path(ctx: typer.Context, name: NameArg) -> None:
    """Print a model's file path (for scripts).

    Fails, with a hint, if the model is not pulled yet.

    Example: ls -l "$(termlm models path smollm2)"
    """
    _out(str(_resolve(ctx, name).path))


@app.command()
@handles_errors
def rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A pulled catalog name or hf: spec.",
                                        metavar="NAME", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete a pulled model file.

    Asks first on a terminal; when stdin is not a terminal, --yes is required.

    Example: termlm models rm gemma3-270m --yes
    """
    from termlm.errors import ModelMissing, UsageError
    from termlm.models import catalog
    from termlm.models.catalog import HfSource, LocalSource, parse_source
    from termlm.models.pull import human_size
    from termlm.models.resolve import hf_local_path, local_path, stderr_notify
    from termlm.output import is_tty

    settings = state(ctx).settings()
    entry = catalog.get_entry(name)
    if entry is not None and not isinstance(entry.sources[0], LocalSource):
        target = local_path(entry)
    elif entry is None and name.startswith("hf:"):
        source = parse_source(name)
        assert isinstance(source, HfSource)
        target = hf_local_path(source)
    else:
        where = "a local alias" if name in settings.models else "not a model termlm pulled"
        raise UsageError(f"{name!r} is {where}; termlm only deletes files it pulled",
                         hint="termlm models list")
    if not target.is_file():
        raise ModelMissing(f"model {name!r} is not pulled; nothing to delete")
    size = human_size(target.stat().st_size)
    if not yes:
        if not is_tty(sys.stdin):
            raise UsageError(f"not deleting {target} without --yes (stdin is not a terminal)",
                             hint=f"termlm models rm {name} --yes")
        if not typer.confirm(f"delete {target} ({size})?", default=False, err=True):
            stderr_notify("nothing deleted")
            raise typer.Exit(1)
    target.unlink()
    stderr_notify(f"deleted {target} ({size})")
