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


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that is False, not an error, for a path no file can have (too
    long, a NUL byte): such an alias is listed as missing."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _need(settings: Settings, path: Path | None, entry: Any) -> tuple[int, int | None]:
    """(context, bytes needed there) from the file's header when it is here, else from
    the catalog's numbers; (context, None) when neither says."""
    from termlm.engine.loader import effective_ctx
    from termlm.errors import ModelFileError
    from termlm.models.gguf import read_gguf
    from termlm.models.memory import catalog_memory_need, memory_need

    if path is not None and _is_file(path):
        try:
            header = read_gguf(path)
        except ModelFileError:
            return settings.n_ctx, None
        n_ctx = effective_ctx(settings.n_ctx, header.context_length)
        return n_ctx, memory_need(header, n_ctx).total
    if entry is not None and entry.arch is not None:
        n_ctx = effective_ctx(settings.n_ctx, entry.context)
        return n_ctx, catalog_memory_need(entry.size, entry.arch, n_ctx).total
    return settings.n_ctx, None


def _rows(settings: Settings, task: str | None = None) -> list[dict[str, Any]]:
    from termlm.models.catalog import load_catalog
    from termlm.models.memory import free_memory_for
    from termlm.models.resolve import is_pulled, local_path

    where, free = free_memory_for(settings.n_gpu_layers)

    def fits(need: int | None) -> bool | None:
        return None if need is None or free is None else need <= free

    rows: list[dict[str, Any]] = []
    for name, entry in load_catalog().items():
        if task is not None and task not in entry.tags:
            continue
        pulled = is_pulled(entry)
        n_ctx, need = _need(settings, local_path(entry) if pulled else None, entry)
        rows.append({
            "name": name, "kind": "catalog",
            "default": name == (settings.embed_model if entry.is_embedding else settings.model),
            "params": entry.params, "quant": entry.quant, "context": entry.context,
            "size": entry.size, "n_ctx": n_ctx, "memory_needed": need, "memory": where,
            "fits": fits(need), "tags": list(entry.tags), "pulled": pulled,
            "license": entry.license, "notes": entry.notes, "path": str(local_path(entry)),
            "source": [str(s) for s in entry.sources],
            "sources": [[str(s) for s in alt] for alt in entry.alternatives],
        })
    if task is not None:
        return rows
    for name, raw in sorted(settings.models.items()):
        path = Path(raw).expanduser()
        size = path.stat().st_size if _is_file(path) else None
        n_ctx, need = _need(settings, path, None)
        rows.append({
            "name": name, "kind": "alias", "default": name == settings.model,
            "params": None, "quant": None, "context": None, "size": size, "n_ctx": n_ctx,
            "memory_needed": need, "memory": where, "fits": fits(need), "tags": [],
            "pulled": size is not None, "license": "", "notes": f"local alias for {path}",
            "path": str(path), "source": [str(path)], "sources": [[str(path)]],
        })
    return rows


TaskOpt = Annotated[str | None, typer.Option(
    "--task", help="Only models tagged for this task: chat, translate, classify, extract, "
    "code, long-context, embed (embedding models).", show_default=False)]


@app.command("list")
@handles_errors
def list_models(ctx: typer.Context, as_json: JsonOpt = False, task: TaskOpt = None) -> None:
    """List catalog models and your local aliases.

    For each: parameters, quantization, download size, the memory it needs at the
    configured context (--ctx), whether that fits this machine's free RAM (VRAM with a
    GPU build), its task tags and whether it is pulled; * marks the default (the chat
    model, and the embedding model among those tagged embedding).

    Example: termlm models list --task translate
    """
    from termlm.errors import UsageError
    from termlm.models.catalog import TAGS
    from termlm.models.pull import human_size
    from termlm.output import is_tty, out_console

    task = "embedding" if task == "embed" else task  # the command's name for it
    if task is not None and task not in TAGS:
        raise UsageError(f"unknown task {task!r}; choose from {', '.join(TAGS)}")
    settings = state(ctx).settings()
    rows = _rows(settings, task)
    if as_json:
        _out(json.dumps(rows, indent=2))
        return

    def size(value: int | None) -> str:
        return human_size(value) if value is not None else "-"

    def pulled(row: dict[str, Any]) -> str:
        if row["kind"] == "alias":
            return "local" if row["pulled"] else "missing"
        return "yes" if row["pulled"] else "no"

    def fits(row: dict[str, Any]) -> str:
        return {True: "yes", False: "no", None: "?"}[row["fits"]]

    def cells(row: dict[str, Any]) -> list[str]:
        return [row["name"], human_count(row["params"]) if row["params"] else "-",
                row["quant"] or "-", size(row["size"]), size(row["memory_needed"]), fits(row),
                ",".join(row["tags"]) or "-", pulled(row)]

    if not is_tty(sys.stdout):
        _out("\t".join(("name", "params", "quant", "size", "memory", "fits", "tags", "pulled",
                        "default", "license", "notes")))
        for row in rows:
            _out("\t".join([*cells(row), "*" if row["default"] else "-",
                            row["license"] or "-", row["notes"] or "-"]))
        return
    from rich.table import Table

    where = rows[0]["memory"].upper() if rows else "RAM"
    n_ctx = settings.n_ctx
    table = Table(box=None, pad_edge=False, header_style="bold",
                  caption=f"memory: weights + KV cache + compute at context {n_ctx} (capped "
                  f"by each model's own); fits: in this machine's free {where}",
                  caption_justify="left")
    right = {"params", "size", f"{where} at {n_ctx}"}
    for column in ("name", "params", "quant", "size", f"{where} at {n_ctx}", "fits", "tags",
                   "pulled", "notes"):
        table.add_column(column, justify="right" if column in right else "left")
    for row in rows:
        first, *rest = cells(row)
        table.add_row(f"{first} *" if row["default"] else first, *rest, row["notes"])
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
    if entry is None and name.startswith("hf:"):
        from termlm.errors import TermlmError
        from termlm.models.resolve import resolve_model

        try:  # downloaded already (offline or not): nothing to pull
            found = resolve_model(name, settings, allow_pull=False)
        except TermlmError:
            found = None
        if found is not None:
            stderr_notify(f"{name} is already pulled")
            _out(str(found.path))
            return
    if settings.offline and (entry is not None or name.startswith("hf:")):
        raise ModelMissing(f"cannot pull {name!r}: offline mode is on",
                           hint="drop --offline (or unset TERMLM_OFFLINE) to download")
    _out(str(pull_model(entry or name, notify=stderr_notify)))


def _resolve(ctx: typer.Context, name: str) -> ResolvedModel:
    from termlm.models.resolve import resolve_model

    return resolve_model(name, state(ctx).settings(), allow_pull=False)


def _info_lines(resolved: ResolvedModel, header: GGUFHeader, settings: Settings
                ) -> list[tuple[str, str]]:
    from termlm.engine.loader import effective_ctx
    from termlm.models.memory import free_memory_for, memory_need
    from termlm.models.pull import human_size

    def known(value: int | None) -> str:
        return "unknown" if value is None else str(value)

    if header.has_chat_template:
        template = "yes"
    elif resolved.turn_format is not None:
        template = f"no (termlm uses the catalog's {resolved.turn_format.name} turn format)"
    else:
        template = "no (termlm uses a plain User:/Assistant: format)"
    n_ctx = effective_ctx(settings.n_ctx, header.context_length)
    need = memory_need(header, n_ctx)
    where, free = free_memory_for(settings.n_gpu_layers)
    fits = need.fits(free)
    verdict = {True: "yes", False: "NO", None: "unknown"}[fits]
    bpw = header.bits_per_weight
    return [
        ("name", resolved.name),
        ("model", header.name or "unknown"),
        ("architecture", header.architecture or "unknown"),
        ("parameters", human_count(header.parameter_count) + " (the file's tensors)"),
        ("quantization", (header.quantization or "unknown")
         + (f", {bpw:.2f} bits per weight" if bpw else "")),
        ("layers", known(header.block_count)),
        ("attention heads", known(header.head_count)),
        ("KV heads", known(header.head_count_kv or header.head_count)),
        ("embedding size", known(header.embedding_length)),
        ("feed-forward size", known(header.feed_forward_length)),
        ("vocab", known(header.vocab_size)),
        ("trained context", known(header.context_length)),
        ("chat template", template),
        ("file size", f"{human_size(header.file_size)} ({header.file_size} bytes)"),
        (f"memory at {n_ctx}", f"{human_size(need.total)} = weights {human_size(need.weights)}"
         f" + KV cache {human_size(need.kv_cache)} + compute {human_size(need.compute)} "
         "(estimate)"),
        ("fits here", f"{verdict} ({human_size(free) if free is not None else 'unknown'} "
         f"free {where.upper()})"),
        ("path", str(header.path)),
    ]


@app.command()
@handles_errors
def info(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """Show a model's details, read from its GGUF header.

    The architecture in the terms a transformer is taught in (layers, attention and KV
    heads, embedding and feed-forward sizes, vocabulary, trained context), the
    quantization and its bits per weight, the memory it needs at the configured context
    (--ctx: weights + KV cache + compute buffer), and whether that fits here. Weights are
    never loaded, and nothing is downloaded.

    Example: termlm --ctx 8192 models info qwen2.5-coder-0.5b
    """
    from termlm.engine.loader import effective_ctx
    from termlm.models.gguf import read_gguf
    from termlm.models.memory import free_memory_for, memory_need

    settings = state(ctx).settings()
    resolved = _resolve(ctx, name)
    header = read_gguf(resolved.path)
    if as_json:
        fields = header.to_dict()
        fields["model_name"] = fields.pop("name")
        data = {"name": resolved.name, **fields}
        n_ctx = effective_ctx(settings.n_ctx, header.context_length)
        need = memory_need(header, n_ctx)
        where, free = free_memory_for(settings.n_gpu_layers)
        data["memory"] = {**need.to_dict(), "free": free, "in": where,
                          "fits": need.fits(free)}
        data["catalog"] = resolved.entry.to_dict() if resolved.entry else None
        _out(json.dumps(data, indent=2, ensure_ascii=False))
        return
    lines = _info_lines(resolved, header, settings)
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
    if name in settings.models:  # the alias is what NAME means everywhere else: never rm it
        hidden = " (it hides the catalog model of that name)" if entry is not None else ""
        raise UsageError(f"{name!r} is a local alias{hidden}; termlm only deletes files it "
                         "pulled", hint="remove the alias from the config file (termlm "
                         "config path) to delete the catalog model's file")
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


from termlm.cli.quantize_cmd import quantize  # noqa: E402 - the command lives in its own module

app.command("quantize")(quantize)
