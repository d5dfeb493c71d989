"""`termlm eval`: run the real task command once per model (and prompt variant), score it.

Each run is a child process: ``python -m termlm TASK ... -m MODEL -o OUT`` with
``TERMLM_RUN_STATS`` set, so it goes through exactly the code a user's own command
does (no second implementation), its peak memory is its own (``wait4``), and the
command reports its load time, records, seconds and tokens (:mod:`termlm.runstats`).
The outputs are then scored against the gold fields of the same records
(:mod:`termlm.evaluate.scoring`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from termlm.crashguard import signal_name
from termlm.errors import TermlmError, UsageError
from termlm.evaluate import scoring

TASKS = ("classify", "extract", "translate", "qa")
CHILD = [sys.executable, "-m", "termlm"]  # the seam tests may replace


@dataclass(frozen=True)
class Variant:
    """A prompt variant: a template name and/or extra options for the task command."""

    name: str
    template: str | None = None
    args: tuple[str, ...] = ()

    def cli_args(self) -> list[str]:
        return [*(["--template", self.template] if self.template else []), *self.args]


PLAIN = Variant("default")


def load_variants(path: Path) -> list[Variant]:
    """``name: {template: NAME, args: [--calibrate]}`` per variant (YAML, safe_load)."""
    import yaml

    from termlm import yamlfile

    try:
        data = yamlfile.load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such prompt-variants file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"prompt-variants file {path}: {yamlfile.reason(exc)}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path} must map variant names to {{template, args}}")
    variants = []
    for name, spec in data.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"template", "args"}:
            raise UsageError(f"{path}: variant {name!r} takes template and args only")
        template, args = spec.get("template"), spec.get("args", [])
        if template is not None and not isinstance(template, str):
            raise UsageError(f"{path}: variant {name!r}: template must be a template name")
        if not isinstance(args, list) or not all(isinstance(a, (str, int, float))
                                                 for a in args):
            raise UsageError(f"{path}: variant {name!r}: args must be a list of options")
        bad = [a for a in args if str(a) in ("-m", "--model", "-o", "--output")]
        if bad:
            raise UsageError(f"{path}: variant {name!r}: {bad[0]} is eval's to set")
        variants.append(Variant(str(name), template, tuple(str(a) for a in args)))
    return variants


@dataclass(frozen=True)
class TaskSpec:
    """What to run and how to score it, for one task over one data set."""

    task: str
    records: list[dict[str, Any]]
    args: list[str]  # the task command's own options (labels, fields, --to, --docs ...)
    gold_field: str
    text_field: str = "text"
    labels: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    reference_field: str = "reference"
    source_field: str = "source"


@dataclass
class RunResult:
    model: str
    variant: str
    ok: bool
    error: str | None = None
    quality: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    peak_rss: int = 0  # bytes

    @property
    def records_per_s(self) -> float:
        run_s = float(self.stats.get("run_s") or 0)
        return round(float(self.stats.get("records") or 0) / run_s, 3) if run_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        run_s = float(self.stats.get("run_s") or 0)
        tokens = self.stats.get("tokens_evaluated")
        return round(float(tokens) / run_s, 1) if run_s and tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant, "ok": self.ok,
                "error": self.error, "quality": self.quality,
                "speed": {"records_per_s": self.records_per_s,
                          "tokens_per_s": self.tokens_per_s,
                          "load_s": round(float(self.stats.get("load_s") or 0), 3),
                          "wall_s": round(self.wall_s, 2),
                          "peak_rss_mb": round(self.peak_rss / 2**20)},
                "file": {"path": self.stats.get("path"), "size": self.stats.get("file_size"),
                         "quant": self.stats.get("quant")}}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").split("\n"):  # U+2028 is text, not a break
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _command(spec: TaskSpec, model: str, variant: Variant, work: Path
             ) -> tuple[list[str], Path, Callable[[Path], dict[str, float]]]:
    """The child's command line, where its output goes, and how to score that output."""
    out = work / "out.jsonl"
    records = spec.records
    ids = [str(r["id"]) for r in records]
    if spec.task == "translate":
        source = work / "source.txt"
        # one record a line: --line-mode keeps exactly as many lines as the input
        lines = [" ".join(str(r.get(spec.text_field, "")).split()) for r in records]
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out = work / "out.txt"
        cmd = ["translate", str(source), *spec.args, "--line-mode", "--format", "text",
               "--no-cache", "--no-progress"]

        def score(path: Path) -> dict[str, float]:
            got = path.read_text(encoding="utf-8").split("\n") if path.exists() else []
            if got and got[-1] == "":  # the last line's newline
                got.pop()
            got += [""] * (len(records) - len(got))
            refs = [str(r.get(spec.reference_field, "")) for r in records]
            return scoring.score_translate(got[:len(records)], refs)
    else:
        data = work / "records.jsonl"
        if spec.task == "qa":
            _write_jsonl(data, [{"id": r["id"], "question": r[spec.text_field]}
                                for r in records])
            cmd = ["qa", "--questions", str(data), *spec.args]
        else:
            _write_jsonl(data, [{"id": r["id"], "text": r[spec.text_field]} for r in records])
            cmd = [spec.task, str(data), *spec.args, "--no-progress"]
        cmd += ["-o", str(out)]

        def score(path: Path) -> dict[str, float]:
            by_id = {str(row.get("id")): row for row in _read_jsonl(path)}
            outputs = [by_id.get(i, {"error": "no output"}) for i in ids]
            if spec.task == "classify":
                return scoring.score_classify(outputs, [r.get(spec.gold_field)
                                                        for r in records], spec.labels)
            if spec.task == "extract":
                assert spec.schema is not None
                golds = [r.get(spec.gold_field) or {} for r in records]
                return scoring.score_extract(outputs, golds, spec.schema)
            golds = [{"answer": r.get(spec.gold_field), "source": r.get(spec.source_field)}
                     for r in records]
            return scoring.score_qa(outputs, golds)
    return [*CHILD, *cmd, "-m", model, *variant.cli_args()], out, score


def _child_env(settings_env: dict[str, str], stats: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings_env)
    env["TERMLM_RUN_STATS"] = str(stats)
    env.pop("TERMLM_MODEL", None)  # each run names its model with -m
    return env


def run_one(spec: TaskSpec, model: str, variant: Variant, settings_env: dict[str, str],
            *, timeout: float | None = None) -> RunResult:
    """One model and variant over the records, in a child process, scored."""
    with tempfile.TemporaryDirectory(prefix="termlm-eval-") as tmp:
        work = Path(tmp)
        cmd, out, score = _command(spec, model, variant, work)
        stats_path = work / "stats.json"
        stdout = out.open("w", encoding="utf-8") if spec.task == "translate" else None
        err_path = work / "stderr.txt"
        started = time.perf_counter()
        with err_path.open("w", encoding="utf-8") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=stdout or subprocess.DEVNULL, stderr=err,
                                    env=_child_env(settings_env, stats_path),
                                    start_new_session=True)
            try:
                status, usage = _wait(proc, timeout)
            except BaseException:
                _stop(proc)
                raise
            finally:
                if stdout is not None:
                    stdout.close()
        wall = time.perf_counter() - started
        result = RunResult(model, variant.name, ok=False, wall_s=wall,
                           peak_rss=usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024))
        try:
            result.stats = json.loads(stats_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result.stats = {}
        code = os.waitstatus_to_exitcode(status) if status is not None else None
        if code is None:
            result.error = f"no result within {timeout:.0f} s"
        elif code < 0:
            result.error = f"llama.cpp crashed ({signal_name(-code)})"
        elif code not in (0, 3):  # 3: some records failed, which the scores count
            result.error = _last_error(err_path) or f"exited {code}"
        if result.error is None:
            result.quality = score(out)
            result.ok = True
        return result


def _wait(proc: subprocess.Popen[Any], timeout: float | None) -> tuple[int | None, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, usage
        if deadline is not None and time.monotonic() > deadline:
            _stop(proc)
            _, _, usage = os.wait4(proc.pid, 0) if proc.returncode is None else (0, 0, usage)
            return None, usage
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """End the child (and its own children) and reap it."""
    if proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_error(path: Path) -> str | None:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace")
             .splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("termlm:")]
    found = errors or lines
    return found[-1] if found else None


def run_all(spec: TaskSpec, models: Sequence[str], variants: Sequence[Variant],
            settings_env: dict[str, str], notify: Callable[[str], None]) -> list[RunResult]:
    """Every model with every variant, one child at a time; Ctrl-C keeps what is done."""
    results: list[RunResult] = []
    plan = [(m, v) for m in models for v in variants]
    try:
        for n, (model, variant) in enumerate(plan, 1):
            label = model if len(variants) == 1 else f"{model} ({variant.name})"
            notify(f"eval {n}/{len(plan)}: {label} on {len(spec.records)} records ...")
            result = run_one(spec, model, variant, settings_env)
            if result.ok:
                primary = scoring.PRIMARY[spec.task]
                load = float(result.stats.get("load_s") or 0)
                notify(f"  {primary} {result.quality.get(primary, 0):g}, "
                       f"{result.records_per_s:g} records/s, load {load:.2f} s, "
                       f"peak {result.peak_rss >> 20} MB")
            else:
                notify(f"  failed: {result.error}")
            results.append(result)
    except KeyboardInterrupt:
        raise EvalInterrupted(results) from None
    return results


class EvalInterrupted(TermlmError):
    """Ctrl-C during eval: the runs finished so far travel with it."""

    def __init__(self, results: list[RunResult]) -> None:
        super().__init__("interrupted")
        self.results = results
