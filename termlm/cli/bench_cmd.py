"""`termlm bench`: tune this machine for a model (threads, parallel, flash attention)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from termlm.cli.common import ModelOpt, handles_errors, state
from termlm.errors import EngineError, ExitCode

if TYPE_CHECKING:
    from termlm.evaluate.bench import Recommendation


@handles_errors
def bench(
    ctx: typer.Context,
    model: ModelOpt = None,
    threads: Annotated[str | None, typer.Option(
        "--threads", metavar="N[,N...]", help="CPU threads to try, comma-separated "
        "(default: one per physical core, or the root command's --threads).",
        show_default=False)] = None,
    parallel: Annotated[str | None, typer.Option(
        "--parallel", metavar="P[,P...]", help="Sequences generating together to try "
        "(default: 1,4); batched generation is measured where P > 1.",
        show_default=False)] = None,
    flash_attn: Annotated[str | None, typer.Option(
        "--flash-attn", metavar="auto|on|off[,...]", help="Flash attention settings to try "
        "(default: the configured one).", show_default=False)] = None,
    ctx_sizes: Annotated[str | None, typer.Option(
        "--ctx", metavar="N[,N...]", help="Context windows to try (default: 2048, or the "
        "configured one; capped at the model's trained context).", show_default=False)] = None,
    pp: Annotated[int, typer.Option("--pp", metavar="N", help="Prompt tokens to decode "
                                    "(llama-bench's pp512).")] = 512,
    tg: Annotated[int, typer.Option("--tg", metavar="N", help="Tokens to generate, per "
                                    "sequence (llama-bench's tg128).")] = 128,
    repeat: Annotated[int, typer.Option("--repeat", metavar="R", help="Runs of each "
                                        "configuration, alternating; the best counts.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results and the "
                                          "recommendation as one JSON object.")] = False,
    save: Annotated[bool, typer.Option("--save", help="Write the recommended threads, "
                                       "flash_attn and parallel to the config file.")] = False,
) -> None:
    """Tune this machine for a model: measure prompt processing (pp) and generation (tg)
    tokens/s, batched generation, load time and peak RSS for every combination of the
    values given, each configuration in its own child process; then name the fastest
    settings for one stream and for batches.

    Example: termlm bench --threads 1,2 --parallel 1,4
    """
    from termlm.engine.loader import effective_ctx
    from termlm.evaluate import bench as sweeps
    from termlm.models.resolve import resolve_model
    from termlm.output import notice
    from termlm.sysinfo import default_threads

    options = sweeps.SweepOptions(
        threads=sweeps.parse_counts("--threads", threads),
        parallel=sweeps.parse_counts("--parallel", parallel),
        flash_attn=sweeps.parse_flash_attn(flash_attn),
        ctx=sweeps.parse_counts("--ctx", ctx_sizes), pp=pp, tg=tg, repeat=repeat)
    st = state(ctx)
    settings = st.settings(model=model)
    if settings.engine != "llama":
        notice(f"termlm bench measures the in-process engine (not engine {settings.engine})")
    resolved = resolve_model(settings.model, settings, allow_pull=not settings.offline,
                             notify=notice)
    trained = resolved.header.context_length or 0
    configured_ctx = settings.n_ctx if settings.source.get("n_ctx", "default") != "default" \
        else sweeps.DEFAULT_CTX
    from_flag = settings.threads if settings.source.get("threads") == "flag" else None
    sweep = sweeps.plan_sweep(
        options, model=resolved.name, path=str(resolved.path), n_ctx_train=trained,
        threads=from_flag or default_threads(), flash_attn=settings.flash_attn,
        n_ctx=effective_ctx(configured_ctx, trained), n_gpu_layers=settings.n_gpu_layers,
        cpu_extra_buffers=settings.cpu_extra_buffers, notify=notice)
    n = len(sweep.configurations())
    notice(f"benchmarking {resolved.name}: {n} configuration{'s' if n != 1 else ''}, "
           f"{sweep.repeat} run{'s' if sweep.repeat != 1 else ''} each, one child process "
           "per run")
    report = sweeps.run_sweep(sweep, notify=notice, verbose=st.verbose)
    recommendation = report.recommendation
    data = report.to_dict()
    values = recommendation.settings()
    saved_to = None
    if save and not report.interrupted and values:
        from termlm.config import update_config_file

        saved_to = update_config_file(values)
    saved = None if saved_to is None else {"path": str(saved_to), "settings": values}
    if as_json:
        sys.stdout.write(json.dumps({**data, "saved": saved}, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(sweeps.render(report)) + "\n")
    sys.stdout.flush()
    if saved_to is not None:
        notice(_saved_line(recommendation, values, str(saved_to)))
    elif save and not report.interrupted:
        notice("nothing saved: no configuration was measured")
    if report.interrupted:
        sys.stderr.write("interrupted\n")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if not any(r.ok for r in report.results):
        raise EngineError("every configuration failed", hint="termlm doctor says why")
    if report.failed:
        raise typer.Exit(int(ExitCode.PARTIAL))


def _saved_line(recommendation: Recommendation, values: dict[str, Any], path: str) -> str:
    written = ", ".join(f"{k}: {v}" for k, v in values.items())
    if recommendation.batches is None:
        why = "threads and flash_attn fastest for one stream; no --parallel above 1 measured"
    elif recommendation.same_for_both:
        why = ("threads and flash_attn fastest for one stream and for batches, parallel "
               "fastest for batches")
    else:
        why = (f"threads and flash_attn fastest for one stream (batches were fastest with "
               f"{recommendation.batches.flags(parallel=False)}), parallel fastest for batches")
    return f"saved {written} to {path} ({why})"
