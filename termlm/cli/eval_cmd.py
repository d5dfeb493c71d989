"""`termlm eval`: choose a model with your own data."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from termlm.cli.common import AppState, handles_errors, state
from termlm.errors import ExitCode, InputError, UsageError


class EvalTask(str, Enum):
    classify = "classify"
    extract = "extract"
    translate = "translate"  # type: ignore[assignment]  # str.translate: the task's name wins
    qa = "qa"


@handles_errors
def eval_(
    ctx: typer.Context,
    task: Annotated[EvalTask, typer.Argument(help="classify, extract, translate or qa.",
                                             show_default=False)],
    data: Annotated[Path, typer.Argument(help="JSONL records with the gold fields.",
                                         show_default=False)],
    models: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="A model to compare (repeat: -m a -m b); default: the "
        "configured one.", show_default=False)] = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", "-l", help="classify: comma-separated labels.", show_default=False)] = None,
    labels_file: Annotated[Path | None, typer.Option(
        "--labels-file", help="classify: YAML labels with descriptions and examples.",
        show_default=False)] = None,
    fields: Annotated[str | None, typer.Option(
        "--fields", help="extract: comma-separated field names.", show_default=False)] = None,
    schema: Annotated[Path | None, typer.Option(
        "--schema", help="extract: JSON schema file.", show_default=False)] = None,
    to: Annotated[str | None, typer.Option(
        "--to", help="translate: target language.", show_default=False)] = None,
    source_lang: Annotated[str | None, typer.Option(
        "--from", help="translate: source language.", show_default=False)] = None,
    docs: Annotated[list[str] | None, typer.Option(
        "--docs", "-d", help="qa: the documents (repeatable).", show_default=False)] = None,
    gold_field: Annotated[str | None, typer.Option(
        "--gold-field", help="The gold field (default: label for classify, gold for "
        "extract, answer for qa).", show_default=False)] = None,
    reference_field: Annotated[str, typer.Option(
        "--reference-field", help="translate: the reference translation's field.")
    ] = "reference",
    source_field: Annotated[str, typer.Option(
        "--source-field", help="qa: the field naming the document that answers.")
    ] = "source",
    text_field: Annotated[str | None, typer.Option(
        "--text-field", help="The input text's field (default: text; question for qa).",
        show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Only the first N records, for a quick look.",
        show_default=False)] = None,
    variants: Annotated[Path | None, typer.Option(
        "--prompt-variants", help="YAML: variant name -> {template: NAME, args: [...]}; "
        "each model runs once per variant.", show_default=False)] = None,
    parallel: Annotated[int | None, typer.Option(
        "--parallel", "-P", min=1, help="Passed to the task command.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Also write the JSON results to this file.",
        show_default=False)] = None,
) -> None:
    """Run the real task command over labelled records with each model, in its own
    process, and compare quality, records/s, tokens/s, load time, peak memory and size.

    The best value in each column is marked, and so are the models no other beats on
    both quality and speed. On a terminal, a chart of quality against speed follows.

    Example: termlm eval classify reviews.jsonl -l positive,negative -m smollm2 -m qwen2.5-0.5b
    """
    from termlm.evaluate import report as rep
    from termlm.evaluate.runs import PLAIN, EvalInterrupted, load_variants, run_all
    from termlm.output import is_tty, notice, out_console

    st = state(ctx)
    if report is not None:  # written at the end: checked now, before any model runs
        from termlm.records.outfile import check_side_output

        given = [data, labels_file, schema, variants, *(Path(d) for d in docs or [])]
        check_side_output(str(report), "--report",
                          files=[str(f) for f in given if f is not None])
    spec = _spec(task.value, data, labels, labels_file, fields, schema, to, source_lang, docs,
                 gold_field, reference_field, source_field, text_field, limit, parallel)
    variant_list = load_variants(variants) if variants is not None else [PLAIN]
    chosen = list(dict.fromkeys(models or [st.settings().model]))
    interrupted = False
    try:
        results = run_all(spec, chosen, variant_list, _settings_env(st), notice)
    except EvalInterrupted as exc:
        results, interrupted = exc.results, True
        notice(f"interrupted: {len(results)} of {len(chosen) * len(variant_list)} runs done")
    if not results:
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    n_variants = len(variant_list)
    payload = rep.to_json(task.value, str(data), results, n_variants)
    if report is not None:
        from termlm.fileio import cannot_write, write_atomic

        try:
            write_atomic(report, json.dumps(payload, indent=2) + "\n")
        except OSError as exc:
            raise cannot_write(str(report), exc) from None
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    elif is_tty(sys.stdout):
        console = out_console()
        console.print(rep.rich_table(task.value, results, n_variants))
        if sum(r.ok for r in results) >= 1:
            sys.stdout.write("\n" + rep.chart(task.value, results, n_variants,
                                              console.width) + "\n")
    else:
        sys.stdout.write(rep.markdown_table(task.value, results, n_variants) + "\n")
    sys.stdout.flush()
    if interrupted:
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if not all(r.ok for r in results):
        raise typer.Exit(int(ExitCode.ERROR if not any(r.ok for r in results)
                             else ExitCode.PARTIAL))


def _settings_env(st: AppState) -> dict[str, str]:
    """The root options (--threads, --ctx, ...) as the children's environment."""
    from termlm.config import env_var_for

    env = {}
    for key, value in st.flags.items():
        var = env_var_for(key)
        if var is not None and key != "model":
            env[var] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _read_records(path: Path, limit: int | None) -> list[dict[str, Any]]:
    import stat

    from termlm.inputs import read_file

    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0  # read_file says what is wrong
    if mode and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise InputError(f"{path} is not a regular file (a FIFO or device?)")
    text = read_file(path)
    rows: list[dict[str, Any]] = []
    implicit: set[str] = set()  # ids that are line numbers (records without an id)
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is text
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}, line {number}: a record must be a JSON object")
        if "id" not in row:
            implicit.add(str(number))
        row.setdefault("id", str(number))
        row["id"] = str(row["id"])
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise UsageError(f"no records in {path}: nothing to evaluate")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        if dup in implicit:
            raise InputError(f"{path}: id {dup!r} appears twice: a record has it, and the "
                             f"record on line {dup} has no id and is numbered by its line",
                             hint="give every record an id, or none")
        raise InputError(f"{path}: id {dup!r} appears twice; eval needs unique ids")
    return rows


def _need(rows: list[dict[str, Any]], field: str, path: Path, what: str) -> None:
    missing = [r["id"] for r in rows if field not in r]
    if missing:
        raise InputError(f"{path}: record {missing[0]} has no {field!r} field ({what})",
                         hint=f"name it with --{what.replace(' ', '-')}")


def _spec(task: str, data: Path, labels: str | None, labels_file: Path | None,
          fields: str | None, schema: Path | None, to: str | None, source_lang: str | None,
          docs: list[str] | None, gold_field: str | None, reference_field: str,
          source_field: str, text_field: str | None, limit: int | None,
          parallel: int | None) -> Any:
    from termlm.evaluate.runs import TaskSpec

    rows = _read_records(data, limit)
    text = text_field or ("question" if task == "qa" else "text")
    _need(rows, text, data, "text field")
    extra = ["--parallel", str(parallel)] if parallel else []
    if task == "classify":
        from termlm.tasks.classify import load_labels_file, parse_labels

        if (labels is None) == (labels_file is None):
            raise UsageError("eval classify needs --labels a,b,c or --labels-file FILE")
        found = parse_labels(labels) if labels is not None else load_labels_file(labels_file)  # type: ignore[arg-type]
        gold = gold_field or "label"
        _need(rows, gold, data, "gold field")
        args = ["--labels", labels] if labels is not None else ["--labels-file",
                                                                 str(labels_file)]
        return TaskSpec(task, rows, [*args, *extra], gold, text,
                        labels=tuple(label.name for label in found))
    if task == "extract":
        from termlm.tasks.schema import load_schema, schema_from_fields

        if (fields is None) == (schema is None):
            raise UsageError("eval extract needs --fields a,b,c or --schema FILE")
        spec = load_schema(schema) if schema is not None else schema_from_fields(
            fields.split(","))  # type: ignore[union-attr]
        gold = gold_field or "gold"
        _need(rows, gold, data, "gold field")
        if not all(isinstance(r[gold], dict) for r in rows):
            raise InputError(f"{data}: the {gold!r} field must be a JSON object per record")
        args = ["--fields", fields] if fields is not None else ["--schema", str(schema)]
        return TaskSpec(task, rows, [*args, *extra], gold, text, schema=dict(spec))
    if task == "translate":
        if not to:
            raise UsageError("eval translate needs --to LANGUAGE")
        _need(rows, reference_field, data, "reference field")
        args = ["--to", to, *(["--from", source_lang] if source_lang else [])]
        return TaskSpec(task, rows, [*args, *extra], gold_field or reference_field, text,
                        reference_field=reference_field)
    if not docs:
        raise UsageError("eval qa needs --docs PATH (the documents the answers come from)")
    gold = gold_field or "answer"
    _need(rows, gold, data, "gold field")
    args = [arg for d in docs for arg in ("--docs", d)]
    return TaskSpec(task, rows, [*args, *extra], gold, text, source_field=source_field)
