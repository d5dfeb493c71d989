"""`termlm embed` (records in, vectors out) and `termlm similar` (search a collection)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from termlm.cli.common import handles_errors, state
from termlm.cli.records_opts import (
    EncodingErrors,
    EncodingOpt,
    GlobOpt,
    IdFieldOpt,
    InputFormatOpt,
    Inputs,
    LimitOpt,
    PerFileOpt,
    ProgressOpt,
    ResumeOpt,
    TextFieldOpt,
)
from termlm.errors import ExitCode, UsageError


class EmbedOverflow(str, Enum):
    chunk = "chunk"
    error = "error"
    truncate = "truncate"


EmbedModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Embedding model: a catalog name (termlm models list --task embed), "
    "a .gguf path or hf:owner/repo/file.gguf (default: minilm, or embed_model in the config).",
    show_default=False)]
PoolingOpt = Annotated[str | None, typer.Option(
    "--pooling", help="mean, cls or last: for a model whose GGUF declares no pooling (a "
    "generative model).", show_default=False)]
CollectionOpt = Annotated[str | None, typer.Option(
    "--collection", "-c", help="Store the vectors in this named collection (made if new).",
    show_default=False)]


@handles_errors
def embed(
    ctx: typer.Context,
    inputs: Inputs = None,
    collection: CollectionOpt = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write the vectors to FILE: JSONL (id, embedding, chunks), or "
        "a .npy matrix when FILE ends in .npy.", show_default=False)] = None,
    model: EmbedModelOpt = None,
    pooling: PoolingOpt = None,
    on_overflow: Annotated[EmbedOverflow, typer.Option(
        "--on-overflow", help="A text longer than the model's context: embed it in pieces "
        "and average them (chunk), fail it (error), or keep only its start (truncate).")
    ] = EmbedOverflow.chunk,
    glob: GlobOpt = None,
    input_format: InputFormatOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    per_file: PerFileOpt = False,
    encoding_errors: EncodingOpt = EncodingErrors.STRICT,
    limit: LimitOpt = None,
    resume: ResumeOpt = False,
    progress: ProgressOpt = None,
    list_: Annotated[bool, typer.Option("--list", help="List the collections and exit.")
                     ] = False,
    drop: Annotated[str | None, typer.Option("--drop", help="Delete the collection NAME and "
                                             "exit.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --list: one JSON object per "
                                          "line.")] = False,
) -> None:
    """Embed records: one vector per line, JSONL record or file.

    With -c NAME the vectors go into a collection (for termlm similar and
    termlm cluster); running again embeds only new or changed records. Without
    -c or -o, JSONL goes to stdout.

    Example: termlm embed notes/ --per-file -c notes
    """
    from termlm.vectors import embed_cli

    if list_:
        embed_cli.list_collections(as_json)
        raise typer.Exit(int(ExitCode.OK))
    if drop is not None:
        embed_cli.drop_collection(drop)
        raise typer.Exit(int(ExitCode.OK))
    if as_json:
        raise UsageError("--json goes with --list", hint="termlm embed --list --json")
    if collection is not None and output is not None:
        raise UsageError("give -c NAME or -o FILE, not both")
    if resume and (output is None or output.endswith(".npy")):
        raise UsageError("--resume goes with -o FILE.jsonl (a collection always resumes)")
    args = embed_cli.EmbedArgs(
        inputs=list(inputs or []), glob=glob, input_format=input_format.value
        if input_format else None, text_field=text_field, id_field=id_field,
        per_file=per_file, encoding_errors=encoding_errors.value, limit=limit,
        collection=collection, output=output, resume=resume, on_overflow=on_overflow.value,
        progress=progress, model=model, pooling=pooling)
    raise typer.Exit(int(embed_cli.run(state(ctx), args)))


@handles_errors
def similar(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="The collection to search.")],
    text: Annotated[str | None, typer.Argument(
        help="What to look for (a - reads it from stdin).", show_default=False)] = None,
    by_id: Annotated[str | None, typer.Option("--id", help="Look for records like this one "
                                              "(an id in the collection).",
                                              show_default=False)] = None,
    count: Annotated[int, typer.Option("-n", "--count", min=1, help="How many matches.")
                     ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per match: id, "
                                          "score, text.")] = False,
    pooling: PoolingOpt = None,
) -> None:
    """Find the records of a collection nearest in meaning to TEXT (or to --id ID).

    The query is embedded with the collection's own model; scores are cosine
    similarities (1 is the same direction).

    Example: termlm similar notes "where do I keep the settings folder?"
    """
    from termlm.vectors import embed_cli

    if (text is None) == (by_id is None):
        raise UsageError("give TEXT or --id ID: what to look for",
                         hint='termlm similar notes "backup schedule"')
    if text == "-":
        from termlm.inputs import read_stdin

        text = read_stdin()
    if text is not None and not text.strip():
        raise UsageError("the text to look for is empty")
    embed_cli.similar(state(ctx), collection, text, by_id, count, as_json, pooling)
