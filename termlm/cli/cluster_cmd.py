"""`termlm cluster`: records or a collection in, a cluster (and its label) per record out."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from termlm.cli.common import handles_errors, state
from termlm.cli.embed_cmd import PoolingOpt
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
    TextFieldOpt,
)


class Method(str, Enum):
    kmeans = "kmeans"
    density = "density"


@handles_errors
def cluster(
    ctx: typer.Context,
    inputs: Inputs = None,
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="Cluster the vectors of this collection (termlm embed "
        "-c NAME made it) instead of records.", show_default=False)] = None,
    k: Annotated[int | None, typer.Option(
        "-k", "--clusters", min=1, help="How many clusters (k-means); default: the k with "
        "the best silhouette in --k-range.", show_default=False)] = None,
    k_range: Annotated[str | None, typer.Option(
        "--k-range", help="The ks to try, LOW..HIGH (default 2..12, at most one less than "
        "the records).", show_default=False)] = None,
    method: Annotated[Method, typer.Option(
        "--method", help="kmeans, or density (HDBSCAN: finds k itself and leaves outliers "
        "unassigned: cluster null, label \"(outliers)\").")] = Method.kmeans,
    min_size: Annotated[int | None, typer.Option(
        "--min-size", min=2, help="--method density: the smallest cluster (default: 1% of "
        "the records, at least 5).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Random seed of k-means and the silhouette sample (a run repeats).")
    ] = 0,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write the JSONL (id, cluster, label, distance) to FILE "
        "instead of stdout.", show_default=False)] = None,
    summary_json: Annotated[str | None, typer.Option(
        "--summary-json", help="Write the clusters (label, size, examples), k, method, "
        "silhouette and the --gold-field scores as JSON to FILE (the label set for "
        "termlm classify --labels-from).", show_default=False)] = None,
    gold_field: Annotated[str | None, typer.Option(
        "--gold-field", help="Input field with the true topic: print purity, NMI and ARI on "
        "stderr.", show_default=False)] = None,
    show_map: Annotated[bool, typer.Option(
        "--map", help="Draw the clusters on a 2-D map (PCA) on stderr.")] = False,
    no_labels: Annotated[bool, typer.Option(
        "--no-labels", help="Call no chat model: the labels are \"cluster N\".")] = False,
    label_template: Annotated[str, typer.Option(
        "--label-template", help="Template of the prompt that writes each label, with "
        "{texts} (the cluster's central members, numbered).")] = "cluster_label",
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Chat model that writes the labels: a catalog name, a local "
        "alias, a .gguf path, or hf:owner/repo/file.gguf.", show_default=False)] = None,
    embed_model: Annotated[str | None, typer.Option(
        "--embed-model", help="Embedding model for records (default: minilm, or embed_model "
        "in the config).", show_default=False)] = None,
    pooling: PoolingOpt = None,
    glob: GlobOpt = None,
    input_format: InputFormatOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    per_file: PerFileOpt = False,
    encoding_errors: EncodingOpt = EncodingErrors.STRICT,
    limit: LimitOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Group records by meaning, and name each group with the chat model.

    Records are embedded first (the embedding model), or -c NAME takes a
    collection's stored vectors. One JSONL line per record on stdout; a summary
    (size, label, examples of each cluster) on stderr.

    Example: termlm cluster tickets.jsonl --summary-json topics.json -o clusters.jsonl
    """
    from termlm.errors import UsageError
    from termlm.vectors.cluster import ClusterOptions, parse_k_range
    from termlm.vectors.cluster_cli import ClusterArgs, run
    from termlm.vectors.cluster_labels import label_template as load_label_template

    if method is Method.density and (k is not None or k_range is not None):
        raise UsageError("-k and --k-range go with --method kmeans (density finds k itself)")
    if k is not None and k_range is not None:
        raise UsageError("give -k N or --k-range LOW..HIGH, not both")
    options = ClusterOptions(method=method.value, k=k,
                             k_range=parse_k_range(k_range) if k_range else None,
                             min_size=min_size, seed=seed)
    args = ClusterArgs(
        inputs=list(inputs or []), collection=collection, glob=glob,
        input_format=input_format.value if input_format else None, text_field=text_field,
        id_field=id_field, per_file=per_file, encoding_errors=encoding_errors.value,
        limit=limit, progress=progress, output=output, summary_json=summary_json,
        gold_field=gold_field, show_map=show_map, write_labels=not no_labels,
        label_template=None if no_labels else load_label_template(label_template), model=model,
        embed_model=embed_model, pooling=pooling, options=options)
    raise typer.Exit(int(run(state(ctx), args)))
