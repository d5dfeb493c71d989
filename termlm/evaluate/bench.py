"""``termlm bench``: sweep threads, parallel, flash attention and context; name the fastest.

:func:`plan_sweep` turns the command's values (and the settings' defaults) into a
:class:`Sweep`; :func:`run_sweep` measures every configuration in its own child
(``python -m termlm.evaluate.bench_probe``), so each has its own load time and peak
RSS (the child's rusage) and a llama.cpp crash fails that configuration alone.
Repeats alternate the configurations (A B A B), since a shared machine's slow and
fast phases would otherwise favour whichever ran first; each figure keeps its best
run. :func:`recommend` is pure: the fastest one-stream and batch settings.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from termlm.crashguard import signal_name
from termlm.engine.speed import Speed, SpeedTest, misfit
from termlm.errors import UsageError

PROBE_COMMAND = [sys.executable, "-m", "termlm.evaluate.bench_probe"]  # the seam tests replace
PROBE_TIMEOUT_S = 900.0
FLASH_ATTN_CHOICES = ("auto", "on", "off")
DEFAULT_PARALLEL = (1, 4)
DEFAULT_CTX = 2048
_POLL_S = 0.02

Notify = Callable[[str], None]


# -- what to measure ---------------------------------------------------------------
def parse_counts(option: str, text: str | None) -> tuple[int, ...] | None:
    """``"1,2,4"`` as positive whole numbers, in order, without repeats; None: not given."""
    if text is None:
        return None
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"{option} takes positive whole numbers separated by commas, "
                             f"not {text!r}")
        if int(part) not in values:
            values.append(int(part))
    return tuple(values)


def parse_flash_attn(text: str | None) -> tuple[str, ...] | None:
    """``"on,off"``: each auto, on or off; None: not given."""
    if text is None:
        return None
    values: list[str] = []
    for part in text.split(","):
        value = part.strip().lower()
        if value not in FLASH_ATTN_CHOICES:
            raise UsageError(f"--flash-attn takes auto, on or off (comma-separated), "
                             f"not {text!r}")
        if value not in values:
            values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class SweepOptions:
    """The command's values; None: the default."""

    threads: tuple[int, ...] | None = None
    parallel: tuple[int, ...] | None = None
    flash_attn: tuple[str, ...] | None = None
    ctx: tuple[int, ...] | None = None
    pp: int = 512
    tg: int = 128
    repeat: int = 2

    def __post_init__(self) -> None:
        for option, value in (("--pp", self.pp), ("--tg", self.tg), ("--repeat", self.repeat)):
            if value < 1:
                raise UsageError(f"{option} must be a positive whole number, not {value}")


@dataclass(frozen=True)
class Config:
    """One point of the sweep."""

    threads: int
    parallel: int
    flash_attn: str
    n_ctx: int

    def flags(self, *, parallel: bool = True, ctx: bool = False) -> str:
        parts = [f"--threads {self.threads}"]
        if parallel:
            parts.append(f"--parallel {self.parallel}")
        parts.append(f"--flash-attn {self.flash_attn}")
        if ctx:
            parts.append(f"--ctx {self.n_ctx}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "parallel": self.parallel,
                "flash_attn": self.flash_attn, "ctx": self.n_ctx}


@dataclass(frozen=True)
class Sweep:
    """Every value of each setting to try, the model file and the sizes."""

    model: str
    path: str
    n_ctx_train: int
    threads: tuple[int, ...]
    parallel: tuple[int, ...]
    flash_attn: tuple[str, ...]
    ctx: tuple[int, ...]
    pp: int = 512
    tg: int = 128
    repeat: int = 2
    n_gpu_layers: int | str = "auto"
    cpu_extra_buffers: str = "auto"

    def configurations(self) -> list[Config]:
        return [Config(t, p, f, c) for t, p, f, c
                in itertools.product(self.threads, self.parallel, self.flash_attn, self.ctx)]

    def test(self, config: Config) -> SpeedTest:
        return SpeedTest(self.path, config.n_ctx, config.threads, config.parallel,
                         config.flash_attn, self.n_gpu_layers, self.cpu_extra_buffers,
                         self.pp, self.tg)


def plan_sweep(options: SweepOptions, *, model: str, path: str, n_ctx_train: int,
               threads: int, flash_attn: str, n_ctx: int, n_gpu_layers: int | str = "auto",
               cpu_extra_buffers: str = "auto", notify: Notify | None = None) -> Sweep:
    """The sweep: the options, else the defaults given (``threads``, ``flash_attn``,
    ``n_ctx``) and parallel 1 and 4; contexts capped at the model's trained context.

    Raises UsageError for sizes that do not fit a context.
    """
    contexts: list[int] = []
    for asked in options.ctx or (n_ctx,):
        capped = min(asked, n_ctx_train) if n_ctx_train > 0 else asked
        if capped != asked and notify is not None:
            notify(f"--ctx {asked} is more than {model}'s trained context: using {capped}")
        if capped not in contexts:
            contexts.append(capped)
    parallel = options.parallel or DEFAULT_PARALLEL
    for size in contexts:
        for p in parallel:
            problem = misfit(options.pp, options.tg, p, size)
            if problem:
                raise UsageError(problem,
                                 hint="lower --pp, --tg or --parallel, or raise --ctx")
    return Sweep(model, path, n_ctx_train, options.threads or (threads,), parallel,
                 options.flash_attn or (flash_attn,), tuple(contexts), options.pp, options.tg,
                 options.repeat, n_gpu_layers, cpu_extra_buffers)


# -- one configuration, in a child ---------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One child's answer: the figures, or why it failed."""

    speed: Speed | None
    peak_rss: int | None = None  # bytes
    error: str | None = None
    signal: str | None = None  # the signal that killed the child

    @property
    def ok(self) -> bool:
        return self.speed is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ok": self.ok}
        if self.speed is not None:
            data.update(_figures(self.speed.pp_tokens_per_s, self.speed.tg_tokens_per_s,
                                 self.speed.batched_tokens_per_s, self.speed.load_s,
                                 self.peak_rss))
        else:
            data.update({"error": self.error, "signal": self.signal})
        return data


def _figures(pp: float, tg: float, batched: float | None, load_s: float,
             peak_rss: int | None) -> dict[str, Any]:
    return {"pp_tokens_per_s": round(pp, 1), "tg_tokens_per_s": round(tg, 1),
            "batched_tokens_per_s": None if batched is None else round(batched, 1),
            "load_s": round(load_s, 3),
            "peak_rss_mb": None if peak_rss is None else round(peak_rss / 2**20, 1)}


def _max_rss_bytes(usage: Any) -> int:
    """ru_maxrss is in KiB on Linux, in bytes on macOS."""
    return int(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def _reap(pid: int, timeout_s: float) -> tuple[int, Any] | None:
    """The child's wait status and rusage, or None if it is still running after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            return status, usage
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_S)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child (and anything it started) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, 0)
    proc.returncode = -signal.SIGKILL


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0)
    lines = stream.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def run_probe(test: SpeedTest, *, verbose: bool = False,
              timeout_s: float = PROBE_TIMEOUT_S) -> Run:
    """Measure ``test`` in a child process of its own session.

    Its own session: Ctrl-C at the terminal reaches only this process, which then
    kills the child (KeyboardInterrupt propagates). With ``verbose`` the child's
    stderr (llama.cpp's log) passes through.
    """
    command = [*PROBE_COMMAND, json.dumps({**test.to_dict(), "verbose": verbose})]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=None if verbose else err, start_new_session=True)
        try:
            reaped = _reap(proc.pid, timeout_s)
        except BaseException:
            _kill(proc)
            raise
        if reaped is None:
            _kill(proc)
            return Run(None, error=f"no answer within {timeout_s:.0f} s")
        status, usage = reaped
        code = proc.returncode = os.waitstatus_to_exitcode(status)
        rss = _max_rss_bytes(usage)
        if code < 0:
            name = signal_name(-code)
            what = "llama.cpp crashed" if -code != signal.SIGKILL else "killed"
            return Run(None, rss, f"{what} ({name})", name)
        try:
            data = json.loads(_tail(out))
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            return Run(None, rss, f"the measurement exited {code}: {_tail(err)}")
        if not data.get("ok"):
            return Run(None, rss, str(data.get("error") or f"the measurement exited {code}"))
        try:
            speed = Speed(float(data["load_s"]), float(data["pp_tokens_per_s"]),
                          float(data["tg_tokens_per_s"]),
                          None if data.get("batched_tokens_per_s") is None
                          else float(data["batched_tokens_per_s"]), int(data["n_ctx"]))
        except (KeyError, TypeError, ValueError):
            return Run(None, rss, "the measurement answered without its figures")
        return Run(speed, rss)


# -- results ---------------------------------------------------------------------------
@dataclass
class Result:
    """A configuration and its runs; each figure is its best run's."""

    config: Config
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Measured, and no run failed (a configuration that crashes once is no winner)."""
        return bool(self.runs) and all(run.ok for run in self.runs)

    @property
    def failure(self) -> Run | None:
        return next((run for run in self.runs if not run.ok), None)

    def _speeds(self) -> list[Speed]:
        return [run.speed for run in self.runs if run.speed is not None]

    @property
    def pp(self) -> float:
        return max((s.pp_tokens_per_s for s in self._speeds()), default=0.0)

    @property
    def tg(self) -> float:
        return max((s.tg_tokens_per_s for s in self._speeds()), default=0.0)

    @property
    def batched(self) -> float | None:
        rates = [s.batched_tokens_per_s for s in self._speeds()
                 if s.batched_tokens_per_s is not None]
        return max(rates) if rates else None

    @property
    def batch_rate(self) -> float:
        """Tokens/s for batch work: summed over the sequences; one stream's at parallel 1."""
        batched = self.batched
        return batched if batched is not None else self.tg

    @property
    def load_s(self) -> float:
        return min((s.load_s for s in self._speeds()), default=0.0)

    @property
    def peak_rss(self) -> int | None:
        """The highest peak over the runs: what the configuration needs."""
        sizes = [run.peak_rss for run in self.runs if run.ok and run.peak_rss is not None]
        return max(sizes) if sizes else None

    def to_dict(self) -> dict[str, Any]:
        failure = self.failure
        return {
            "config": self.config.to_dict(), "ok": self.ok,
            "measurement": _figures(self.pp, self.tg, self.batched, self.load_s,
                                    self.peak_rss) if self._speeds() else None,
            "error": failure.error if failure else None,
            "signal": failure.signal if failure else None,
            "runs": [run.to_dict() for run in self.runs]}


@dataclass(frozen=True)
class Recommendation:
    """The fastest settings for one stream (best tg, ties by pp) and for batches."""

    one_stream: Config | None
    batches: Config | None

    @property
    def same_for_both(self) -> bool:
        one, many = self.one_stream, self.batches
        return (one is not None and many is not None and one.threads == many.threads
                and one.flash_attn == many.flash_attn)

    def settings(self) -> dict[str, Any]:
        """Config file values: threads and flash_attn for one stream, parallel for batches."""
        values: dict[str, Any] = {}
        if self.one_stream is not None:
            values.update(threads=self.one_stream.threads,
                          flash_attn=self.one_stream.flash_attn)
        if self.batches is not None:
            values["parallel"] = self.batches.parallel
        return values

    def lines(self) -> list[str]:
        if self.one_stream is None:
            return ["no configuration was measured: nothing to recommend"]
        lines = [f"fastest for one stream: {self.one_stream.flags(parallel=False)}"]
        if self.batches is not None:
            lines.append(f"fastest for batches: {self.batches.flags()}")
            if self.same_for_both:
                lines.append(f"one set is fastest for both: "
                             f"{self.one_stream.flags(parallel=False)}, with --parallel "
                             f"{self.batches.parallel} for batches")
        else:
            lines.append("fastest for batches: not measured (no --parallel above 1)")
        return lines

    def to_dict(self) -> dict[str, Any]:
        one, many = self.one_stream, self.batches
        return {
            "one_stream": None if one is None else {"threads": one.threads,
                                                    "flash_attn": one.flash_attn},
            "batches": None if many is None else {"threads": many.threads,
                                                  "parallel": many.parallel,
                                                  "flash_attn": many.flash_attn},
            "same_for_both": self.same_for_both, "settings": self.settings()}


def _rate(value: float | None) -> float:
    """Rates compare as shown (to 0.1 tok/s): closer than that is a tie."""
    return round(value or 0.0, 1)


def recommend(results: Sequence[Result]) -> Recommendation:
    """The winners among configurations that never failed; the first in sweep order on ties.

    One stream: the best tg, ties by pp. Batches: the best total tokens/s among all
    configurations (parallel 1 counts with its one stream), ties by tg then pp; only
    when some configuration with parallel above 1 was measured.
    """
    ok = [r for r in results if r.ok]
    if not ok:
        return Recommendation(None, None)
    one = max(ok, key=lambda r: (_rate(r.tg), _rate(r.pp)))
    batches: Result | None = None
    if any(r.config.parallel > 1 for r in ok):
        batches = max(ok, key=lambda r: (_rate(r.batch_rate), _rate(r.tg), _rate(r.pp)))
    return Recommendation(one.config, batches.config if batches else None)


@dataclass
class Report:
    sweep: Sweep
    results: list[Result]
    interrupted: bool = False

    @property
    def measured(self) -> list[Result]:
        return [r for r in self.results if r.runs]

    @property
    def recommendation(self) -> Recommendation:
        return recommend(self.results)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.measured if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        s = self.sweep
        return {"model": {"name": s.model, "path": s.path, "n_ctx_train": s.n_ctx_train},
                "pp": s.pp, "tg": s.tg, "repeat": s.repeat,
                "results": [r.to_dict() for r in self.measured],
                "recommendation": self.recommendation.to_dict(),
                "interrupted": self.interrupted}


# -- the sweep -----------------------------------------------------------------------
def _summary(run: Run) -> str:
    if run.speed is None:
        return f"failed: {run.error}"
    s = run.speed
    text = f"pp {s.pp_tokens_per_s:.1f} tok/s, tg {s.tg_tokens_per_s:.1f} tok/s"
    if s.batched_tokens_per_s is not None:
        text += f", batched {s.batched_tokens_per_s:.1f} tok/s"
    return text + f", loaded in {s.load_s:.2f} s"


def run_sweep(sweep: Sweep, *, notify: Notify, verbose: bool = False,
              run: Callable[..., Run] | None = None) -> Report:
    """Every configuration, ``repeat`` times, alternating; Ctrl-C stops with what is measured.

    A configuration that failed is not run again.
    """
    probe = run or run_probe
    report = Report(sweep, [Result(config) for config in sweep.configurations()])
    total = len(report.results) * sweep.repeat
    step = 0
    try:
        for _round in range(sweep.repeat):
            for result in report.results:
                step += 1
                label = f"[{step}/{total}] {result.config.flags(ctx=True)}"
                if result.runs and not result.ok:
                    notify(f"{label}: skipped (it failed before)")
                    continue
                notify(label)
                outcome = probe(sweep.test(result.config), verbose=verbose)
                result.runs.append(outcome)
                notify(f"  {_summary(outcome)}")
    except KeyboardInterrupt:
        report.interrupted = True
    return report


# -- the table -------------------------------------------------------------------------
COLUMNS = ("threads", "parallel", "flash-attn", "ctx", "pp tok/s", "tg tok/s",
           "batched tg tok/s", "load s", "peak RSS MB")


def _row(result: Result) -> list[str]:
    c = result.config
    head = [str(c.threads), str(c.parallel), c.flash_attn, str(c.n_ctx)]
    failure = result.failure
    if failure is not None:
        return [*head, f"FAILED: {failure.error}"]
    batched = result.batched
    rss = result.peak_rss
    return [*head, f"{result.pp:.1f}", f"{result.tg:.1f}",
            "-" if batched is None else f"{batched:.1f}", f"{result.load_s:.2f}",
            "-" if rss is None else f"{rss / 2**20:.0f}"]


def render(report: Report) -> list[str]:
    """The table (one row per measured configuration), then the recommendation."""
    s = report.sweep
    runs = "1 run" if s.repeat == 1 else f"best of {s.repeat} runs"
    lines = [f"{s.model}: prompt {s.pp} tokens (pp{s.pp}), {s.tg} generated (tg{s.tg}), "
             f"{runs}", ""]
    rows = [list(COLUMNS), *(_row(r) for r in report.measured)]
    widths = [max(len(row[i]) for row in rows if len(row) > i and not
                  (len(row) == 5 and i == 4)) for i in range(len(COLUMNS))]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if len(row) == 5 and i == 4:  # a failure spans the figures
                cells.append(cell)
            elif COLUMNS[i] == "flash-attn":
                cells.append(cell.ljust(widths[i]))
            else:
                cells.append(cell.rjust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.extend(report.recommendation.lines())
    return lines
