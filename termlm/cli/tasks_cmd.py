"""`termlm batch`, `termlm classify`, `termlm extract`: tasks over record streams."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from termlm.cli.common import (
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    TemplateOpt,
    TopPOpt,
    handles_errors,
    state,
)
from termlm.cli.records_opts import (
    DryRunOpt,
    EncodingErrors,
    EncodingOpt,
    FailFastOpt,
    GlobOpt,
    IdFieldOpt,
    InputFormatOpt,
    Inputs,
    KeepFieldsOpt,
    LimitOpt,
    OutputFormat,
    OutputFormatOpt,
    OutputOpt,
    Overflow,
    OverflowOpt,
    ParallelOpt,
    PerFileOpt,
    ProgressOpt,
    RecordArgs,
    ResumeOpt,
    TextFieldOpt,
    drive,
)
from termlm.errors import TemplateError, UsageError
from termlm.records.types import Record


def _args(options: dict[str, Any]) -> RecordArgs:
    """The shared record options out of a command's parameters (its ``locals()``)."""
    values = {f.name: options[f.name] for f in fields(RecordArgs)}
    values["inputs"] = list(values["inputs"] or [])
    return RecordArgs(**values)


@handles_errors
def batch(
    ctx: typer.Context,
    inputs: Inputs = None,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", "-p", help="Instruction with {text} and {field} placeholders.",
        show_default=False)] = None,
    template: TemplateOpt = None,
    system: SystemOpt = None,
    json_schema: Annotated[Path | None, typer.Option(
        "--json-schema", help="Constrain each output to JSON matching this schema file.",
        show_default=False)] = None,
    model: ModelOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    glob: GlobOpt = None,
    input_format: InputFormatOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    per_file: PerFileOpt = False,
    encoding_errors: EncodingOpt = EncodingErrors.STRICT,
    output: OutputOpt = None,
    output_format: OutputFormatOpt = OutputFormat.jsonl,
    resume: ResumeOpt = False,
    keep_fields: KeepFieldsOpt = False,
    fail_fast: FailFastOpt = False,
    on_overflow: OverflowOpt = Overflow.error,
    limit: LimitOpt = None,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = None,
    parallel: ParallelOpt = None,
) -> None:
    """Run a prompt over each record; output field "output".

    Example: termlm batch -p "Translate to French: {text}" sentences.txt -o fr.jsonl
    """
    from termlm.prompts import load_template, variables_in
    from termlm.tasks.generate import GenerateTask
    from termlm.tasks.schema import load_schema

    if prompt is not None and template is not None:
        raise UsageError("give --prompt or --template, not both")
    tmpl = load_template(template or "batch")
    user = prompt if prompt is not None else tmpl.user
    variables_in(user, "--prompt")  # malformed placeholders fail before any work
    if prompt is not None and not variables_in(user, "--prompt"):  # {{text}} is literal
        user = user.rstrip() + "\n\n{text}"
    schema = load_schema(json_schema) if json_schema is not None else None
    sampling = tmpl.sampling().override(temperature=temperature, top_p=top_p,
                                        max_tokens=max_tokens, seed=seed, stop=stop or None)
    task = GenerateTask(user=user, system=system if system is not None else tmpl.system,
                        sampling=sampling, json_schema=schema)

    def check_first(record: Record) -> None:
        known = {"text", "id", *map(str, record.fields)}
        missing = [v for v in variables_in(user, "--prompt") if v not in known]
        if missing:
            raise TemplateError(
                f"the prompt uses {{{missing[0]}}}, which record {record.id} does not have",
                hint=f"record fields: {', '.join(sorted(known))}")

    args = _args(locals())
    drive(state(ctx), args, model, task, ["id", "output", "finish_reason", "truncated"],
          check_first=check_first)


@handles_errors
def classify(
    ctx: typer.Context,
    inputs: Inputs = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", "-l", help="Comma-separated labels.", show_default=False)] = None,
    labels_file: Annotated[Path | None, typer.Option(
        "--labels-file", help="YAML: label -> description (or {description, examples}).",
        show_default=False)] = None,
    labels_from: Annotated[Path | None, typer.Option(
        "--labels-from", help="JSON: a list of labels, or the --summary-json of termlm "
        "cluster (its clusters' labels).", show_default=False)] = None,
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Also output every label "
                                              "whose probability reaches --threshold.")] = False,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0,
                                             help="Probability for --multi-label.")] = 0.5,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Score the labels once on content-free inputs and divide each "
        "record's probabilities by that prior (Calibrate Before Use, Zhao et al. 2021), so "
        "a label the model prefers regardless of the text stops winning by default.")
    ] = False,
    gold_field: Annotated[str | None, typer.Option(
        "--gold-field", help="Input field with the true label: print accuracy, macro-F1, "
        "per-label precision/recall and a confusion matrix on stderr.",
        show_default=False)] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the --gold-field report as JSON here.",
        show_default=False)] = None,
    template: TemplateOpt = None,
    model: ModelOpt = None,
    glob: GlobOpt = None,
    input_format: InputFormatOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    per_file: PerFileOpt = False,
    encoding_errors: EncodingOpt = EncodingErrors.STRICT,
    output: OutputOpt = None,
    output_format: OutputFormatOpt = OutputFormat.jsonl,
    resume: ResumeOpt = False,
    keep_fields: KeepFieldsOpt = False,
    fail_fast: FailFastOpt = False,
    on_overflow: OverflowOpt = Overflow.error,
    limit: LimitOpt = None,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = None,
    parallel: ParallelOpt = None,
) -> None:
    """Label each record by scoring every label under the model (never by parsing text).

    Example: termlm classify --labels positive,negative reviews.jsonl -o labels.jsonl
    """
    from termlm.prompts import load_template
    from termlm.tasks.classify import (
        ClassifyTask,
        load_labels_file,
        load_labels_json,
        parse_labels,
    )
    from termlm.tasks.metrics import GoldReport, render_report

    given = [flag for flag, value in (("--labels", labels), ("--labels-file", labels_file),
                                      ("--labels-from", labels_from)) if value is not None]
    if len(given) != 1:
        raise UsageError("give --labels a,b,c, --labels-file FILE or --labels-from FILE.json "
                         "(one of them)" + (f", not {' and '.join(given)}" if given else ""))
    if labels is not None:
        label_list = parse_labels(labels)
    elif labels_file is not None:
        label_list = load_labels_file(labels_file)
    else:
        assert labels_from is not None
        label_list = load_labels_json(labels_from)
    if report is not None and gold_field is None:
        raise UsageError("--report needs --gold-field")
    task = ClassifyTask(tuple(label_list), load_template(template or "classify"),
                        multi_label=multi_label, threshold=threshold, calibrate=calibrate)

    def before(engine: object) -> None:
        if calibrate:
            from termlm.output import notice

            prior = task.calibrate_on(engine)  # type: ignore[arg-type]
            notice("calibrated: prior " + ", ".join(
                f"{label.name} {p:.3f}" for label, p in zip(label_list, prior, strict=True)))
    gold = GoldReport([label.name for label in label_list]) if gold_field else None

    def on_result(record: Record, out: dict[str, object]) -> None:
        if gold is not None and gold_field is not None:
            gold.add(record.fields.get(gold_field), str(out["label"]))

    def after() -> None:
        if gold is None:
            return
        data = gold.to_dict()
        import sys

        sys.stderr.write(render_report(data) + "\n")
        if report is not None:
            try:
                report.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write report {report}: {exc.strerror}") from None

    args = _args(locals())
    columns = ["id", "label", "confidence", *(["labels"] if multi_label else []), "scores",
               "truncated"]
    drive(state(ctx), args, model, task, columns, on_result=on_result, after=after,
          before=before)


@handles_errors
def extract(
    ctx: typer.Context,
    inputs: Inputs = None,
    schema: Annotated[Path | None, typer.Option(
        "--schema", help="JSON schema file the output must match.", show_default=False)] = None,
    fields: Annotated[str | None, typer.Option(
        "--fields", help="Comma-separated field names (each a string or null).",
        show_default=False)] = None,
    template: TemplateOpt = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    glob: GlobOpt = None,
    input_format: InputFormatOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    per_file: PerFileOpt = False,
    encoding_errors: EncodingOpt = EncodingErrors.STRICT,
    output: OutputOpt = None,
    output_format: OutputFormatOpt = OutputFormat.jsonl,
    resume: ResumeOpt = False,
    keep_fields: KeepFieldsOpt = False,
    fail_fast: FailFastOpt = False,
    on_overflow: OverflowOpt = Overflow.error,
    limit: LimitOpt = None,
    dry_run: DryRunOpt = False,
    progress: ProgressOpt = None,
    parallel: ParallelOpt = None,
) -> None:
    """Extract structured facts from each record as JSON (output field "data").

    Example: termlm extract --fields name,date,amount invoices/ -o facts.jsonl
    """
    from termlm.prompts import load_template
    from termlm.tasks.extract import ExtractTask
    from termlm.tasks.schema import load_schema, schema_from_fields

    if (schema is None) == (fields is None):
        raise UsageError("give --schema FILE or --fields a,b,c (one of them)")
    spec = load_schema(schema) if schema is not None else schema_from_fields(fields.split(","))  # type: ignore[union-attr]
    tmpl = load_template(template or "extract")
    sampling = tmpl.sampling().with_(temperature=0.0)
    if max_tokens is not None:
        sampling = sampling.with_(max_tokens=max_tokens)
    task = ExtractTask(spec, tmpl, sampling)
    args = _args(locals())
    drive(state(ctx), args, model, task, ["id", "data", "truncated"])
