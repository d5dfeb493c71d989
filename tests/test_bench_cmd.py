"""termlm bench: a speed sweep per configuration in child processes, and its recommendation.

The model tests run on the tiny model with small sizes; they assert what every run
must show, never which configuration is faster (that depends on the CPU and its load).
"""

from __future__ import annotations

import _thread
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from termlm import paths
from termlm.cli import app
from termlm.cli.common import AppState
from termlm.config import load_settings
from termlm.engine.speed import Speed, SpeedTest
from termlm.errors import UsageError
from termlm.evaluate import bench
from termlm.evaluate.bench import (
    Config,
    Recommendation,
    Report,
    Result,
    Run,
    Sweep,
    parse_counts,
    parse_flash_attn,
    recommend,
    render,
    run_probe,
    run_sweep,
)

from .conftest import model_env

SMALL = ["--pp", "32", "--tg", "8", "--repeat", "1"]
CRASH_ON_TWO_THREADS = (
    "import json, os, runpy, signal, sys\n"
    "if json.loads(sys.argv[1])['threads'] == 2:\n"
    "    os.kill(os.getpid(), signal.SIGSEGV)\n"
    "sys.argv = ['bench_probe', sys.argv[1]]\n"
    "runpy.run_module('termlm.evaluate.bench_probe', run_name='__main__')\n"
)


def _bench(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["bench", *args], obj=AppState())
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _rows(out: str) -> list[list[str]]:
    """The table's rows under its header, split on runs of spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("threads  parallel"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


# -- on the real model -----------------------------------------------------------------
@pytest.mark.model
def test_threads_and_parallel_sweep_recommends_and_saves() -> None:
    code, out, err = _bench("-m", "smollm2", "--threads", "1,2", "--parallel", "1,4",
                            "--pp", "64", "--tg", "16", "--repeat", "1", "--save")
    assert code == 0, out + err
    header = next(line for line in out.splitlines() if line.startswith("threads"))
    for column in bench.COLUMNS:
        assert column in header
    rows = _rows(out)
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("1", "4"), ("2", "1"), ("2", "4")]
    for row in rows:
        assert row[2] == "auto" and row[3] == "2048"
        pp, tg, load_s, rss = float(row[4]), float(row[5]), float(row[7]), float(row[8])
        assert pp > 0 and tg > 0 and load_s > 0 and rss > 0
        assert (row[6] == "-") == (row[1] == "1")  # batched only where parallel > 1
    one = re.search(r"^fastest for one stream: --threads (\d) --flash-attn auto$", out, re.M)
    many = re.search(r"^fastest for batches: --threads (\d) --parallel (\d) --flash-attn auto$",
                     out, re.M)
    assert one and many, out
    for i in range(1, 5):
        assert f"[{i}/4] --threads " in err
    saved = load_settings()
    assert saved.threads == int(one.group(1)) and saved.flash_attn == "auto"
    assert saved.parallel == int(many.group(2))
    assert f"saved threads: {saved.threads}, flash_attn: auto, parallel: {saved.parallel} " \
           f"to {paths.config_file()}" in err


@pytest.mark.model
def test_json_sweeps_flash_attn_and_ctx(tmp_path: Path) -> None:
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("model: smollm2\n", encoding="utf-8")  # the configured model
    result = CliRunner().invoke(app, ["--threads", "1", "bench", "--parallel", "2",
                                      "--flash-attn", "on,off", "--ctx", "256,512", *SMALL,
                                      "--json"], obj=AppState())
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["model"]["name"] == "smollm2" and data["model"]["n_ctx_train"] > 0
    assert (data["pp"], data["tg"], data["repeat"]) == (32, 8, 1)
    assert data["interrupted"] is False and data["saved"] is None
    configs = [r["config"] for r in data["results"]]
    assert configs == [{"threads": 1, "parallel": 2, "flash_attn": f, "ctx": c}
                       for f in ("on", "off") for c in (256, 512)]
    for entry in data["results"]:
        assert entry["ok"] is True and entry["error"] is None and len(entry["runs"]) == 1
        m = entry["measurement"]
        assert m["pp_tokens_per_s"] > 0 and m["tg_tokens_per_s"] > 0
        assert m["batched_tokens_per_s"] > 0 and m["load_s"] > 0 and m["peak_rss_mb"] > 0
    rec = data["recommendation"]
    assert rec["one_stream"]["threads"] == 1 and rec["one_stream"]["flash_attn"] in ("on", "off")
    assert rec["batches"]["parallel"] == 2
    assert rec["settings"] == {"threads": 1, "flash_attn": rec["one_stream"]["flash_attn"],
                               "parallel": 2}
    assert rec["same_for_both"] is (rec["batches"]["flash_attn"]
                                    == rec["one_stream"]["flash_attn"])


@pytest.mark.model
def test_a_crashing_configuration_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "PROBE_COMMAND", [sys.executable, "-c", CRASH_ON_TWO_THREADS])
    code, out, err = _bench("-m", "smollm2", "--threads", "1,2", "--parallel", "1",
                            "--pp", "32", "--tg", "8", "--repeat", "2")
    assert code == 3, out + err  # some configurations failed
    rows = _rows(out)
    assert rows[0][:4] == ["1", "1", "auto", "2048"] and float(rows[0][5]) > 0
    assert rows[1][:4] == ["2", "1", "auto", "2048"]
    assert " ".join(rows[1][4:]) == "FAILED: llama.cpp crashed (SIGSEGV)"
    assert "fastest for one stream: --threads 1 --flash-attn auto" in out
    assert "[3/4] --threads 1" in err  # the other configuration ran again
    assert "[4/4] --threads 2 --parallel 1 --flash-attn auto --ctx 2048: skipped" in err


@pytest.mark.model
def test_every_configuration_failing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"
    monkeypatch.setattr(bench, "PROBE_COMMAND", [sys.executable, "-c", crash])
    code, out, err = _bench("-m", "smollm2", "--threads", "1", "--parallel", "1", *SMALL,
                            "--save")
    assert code == 1
    assert "FAILED: llama.cpp crashed (SIGABRT)" in out
    assert "termlm: error: every configuration failed" in err
    assert not paths.config_file().exists()


@pytest.mark.model
def test_ctrl_c_kills_the_child_and_prints_what_was_measured() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "termlm", "bench", "-m", "smollm2", "--threads", "1,2",
         "--parallel", "1", "--pp", "32", "--tg", "8", "--repeat", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=model_env())
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("[2/6]"):  # the first run is done; the second child is running
            break
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert time.monotonic() - began < 20  # the running child was killed, not awaited
    assert "interrupted" in rest
    rows = _rows(out)
    assert [r[0] for r in rows] == ["1"] and float(rows[0][5]) > 0


@pytest.mark.parametrize("args", [
    ["--threads", "0"], ["--threads", "1,x"], ["--parallel", "-1"], ["--parallel", "1,,4"],
    ["--flash-attn", "maybe"], ["--flash-attn", "on,"], ["--ctx", "2048,abc"],
    ["--pp", "0"], ["--tg", "-3"], ["--repeat", "0"],
])
def test_bad_values_are_one_line_usage_errors(args: list[str]) -> None:
    code, out, err = _bench("-m", "no-such-model-anywhere", *args)  # checked before the model
    assert code == 2, out + err
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("termlm: error: "), err


@pytest.mark.model
def test_sizes_that_do_not_fit_the_context_are_usage_errors() -> None:
    code, _, err = _bench("-m", "smollm2", "--pp", "512", "--ctx", "256")
    assert code == 2
    assert "a prompt of 512 tokens does not fit in a context of 256" in err
    code, _, err = _bench("-m", "smollm2", "--parallel", "8", "--pp", "64", "--tg", "64",
                          "--ctx", "256")
    assert code == 2 and "8 sequences of 64 generated tokens" in err


@pytest.mark.model
def test_unknown_model_and_bad_file_exit_1(tmp_path: Path) -> None:
    code, out, err = _bench("-m", "no-such-model-anywhere", *SMALL)
    assert code == 1 and out == ""
    assert err.startswith("termlm: error: ") and "Traceback" not in err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    code, out, err = _bench("-m", str(bad), *SMALL)
    assert code == 1 and out == ""
    assert err.startswith("termlm: error: ") and "Traceback" not in err


def test_a_crashed_probe_reports_its_signal_and_rss(monkeypatch: pytest.MonkeyPatch) -> None:
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(bench, "PROBE_COMMAND", [sys.executable, "-c", crash])
    run = run_probe(SpeedTest("unused.gguf", 256, 1))
    assert not run.ok and run.signal == "SIGSEGV"
    assert run.error == "llama.cpp crashed (SIGSEGV)"
    assert run.peak_rss is not None and run.peak_rss > 0
    monkeypatch.setattr(bench, "PROBE_COMMAND", [sys.executable, "-c", "print('hello')"])
    assert run_probe(SpeedTest("unused.gguf", 256, 1)).error == \
        "the measurement exited 0: no output"


def _sleeper(pidfile: Path) -> list[str]:
    script = (f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
              "time.sleep(120)")
    return [sys.executable, "-c", script]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_ctrl_c_during_a_run_kills_its_child(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setattr(bench, "PROBE_COMMAND", _sleeper(pidfile))

    def interrupt_when_started() -> None:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_probe(SpeedTest("unused.gguf", 256, 1))
    assert _gone(int(pidfile.read_text()))


def test_a_probe_that_never_answers_is_killed(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setattr(bench, "PROBE_COMMAND", _sleeper(pidfile))
    run = run_probe(SpeedTest("unused.gguf", 256, 1), timeout_s=3)
    assert not run.ok and run.error == "no answer within 3 s"
    assert _gone(int(pidfile.read_text()))


def test_the_probe_reports_an_engine_error(tmp_path: Path) -> None:
    run = run_probe(SpeedTest(str(tmp_path / "missing.gguf"), 256, 1, pp=32, tg=8))
    assert not run.ok and run.signal is None
    assert run.error is not None and "could not load" in run.error


# -- the pure parts ----------------------------------------------------------------------
def _result(threads: int, parallel: int, pp: float, tg: float, batched: float | None = None,
            flash_attn: str = "auto", *, failed: bool = False) -> Result:
    config = Config(threads, parallel, flash_attn, 2048)
    runs = [Run(Speed(0.2, pp, tg, batched, 2048), 100 << 20)]
    if failed:
        runs.append(Run(None, 50 << 20, "llama.cpp crashed (SIGSEGV)", "SIGSEGV"))
    return Result(config, runs)


def test_one_stream_takes_the_best_tg_and_breaks_ties_by_pp() -> None:
    results = [_result(1, 1, 200.0, 90.0), _result(2, 1, 250.0, 90.04), _result(4, 1, 300, 80)]
    rec = recommend(results)
    assert rec.one_stream == results[1].config  # 90.0 and 90.04 tie; pp decides
    exact = [_result(1, 1, 200.0, 90.0, flash_attn="on"), _result(2, 1, 200.0, 90.0)]
    assert recommend(exact).one_stream == exact[0].config  # a full tie: the first


def test_failed_configurations_are_never_recommended() -> None:
    fast_but_crashing = _result(2, 4, 900.0, 900.0, 1800.0, failed=True)
    slow = _result(1, 4, 100.0, 50.0, 80.0)
    rec = recommend([fast_but_crashing, slow])
    assert rec.one_stream == slow.config and rec.batches == slow.config
    assert not fast_but_crashing.ok and fast_but_crashing.failure is not None
    assert recommend([fast_but_crashing]) == Recommendation(None, None)
    assert recommend([]).lines() == ["no configuration was measured: nothing to recommend"]


def test_batches_take_the_best_total_and_count_one_stream_at_parallel_1() -> None:
    single = _result(2, 1, 200.0, 95.0, flash_attn="on")
    four = _result(2, 4, 200.0, 60.0, 150.0, flash_attn="on")
    eight = _result(1, 8, 200.0, 60.0, 140.0)
    rec = recommend([single, four, eight])
    assert rec.one_stream == single.config and rec.batches == four.config
    assert rec.same_for_both
    assert rec.settings() == {"threads": 2, "flash_attn": "on", "parallel": 4}
    assert rec.lines() == [
        "fastest for one stream: --threads 2 --flash-attn on",
        "fastest for batches: --threads 2 --parallel 4 --flash-attn on",
        "one set is fastest for both: --threads 2 --flash-attn on, with --parallel 4 for "
        "batches"]
    slow_batch = _result(1, 4, 200.0, 40.0, 90.0)
    assert recommend([single, slow_batch]).batches == single.config  # batching lost here
    only_one = recommend([single])
    assert only_one.batches is None and only_one.settings() == {"threads": 2, "flash_attn": "on"}
    assert not recommend([single, eight]).same_for_both


def test_each_figure_keeps_its_best_run() -> None:
    result = Result(Config(1, 4, "auto", 2048), [
        Run(Speed(0.5, 100.0, 60.0, 90.0, 2048), 100 << 20),
        Run(Speed(0.3, 120.0, 50.0, 95.0, 2048), 120 << 20)])
    assert (result.pp, result.tg, result.batched, result.load_s) == (120.0, 60.0, 95.0, 0.3)
    assert result.peak_rss == 120 << 20
    assert result.to_dict()["measurement"] == {
        "pp_tokens_per_s": 120.0, "tg_tokens_per_s": 60.0, "batched_tokens_per_s": 95.0,
        "load_s": 0.3, "peak_rss_mb": 120.0}


def _sweep(threads: tuple[int, ...] = (1, 2), parallel: tuple[int, ...] = (1,)) -> Sweep:
    return Sweep("m", "m.gguf", 8192, threads, parallel, ("auto",), (2048,), repeat=2)


def test_repeats_alternate_and_a_failed_configuration_is_not_run_again() -> None:
    order: list[int] = []

    def fake(test: SpeedTest, *, verbose: bool) -> Run:
        order.append(test.threads)
        if test.threads == 3:
            return Run(None, None, "llama.cpp crashed (SIGBUS)", "SIGBUS")
        return Run(Speed(0.1, 10.0 * test.threads, 5.0, None, 2048), 1 << 20)

    notes: list[str] = []
    report = run_sweep(_sweep(threads=(1, 2, 3)), notify=notes.append, run=fake)
    assert order == [1, 2, 3, 1, 2]  # A B C A B: C failed and is skipped
    assert notes[0] == "[1/6] --threads 1 --parallel 1 --flash-attn auto --ctx 2048"
    assert notes[-1].startswith("[6/6] --threads 3") and notes[-1].endswith("skipped "
                                                                            "(it failed before)")
    assert [len(r.runs) for r in report.results] == [2, 2, 1]
    assert report.failed == [report.results[2]] and not report.interrupted


def test_ctrl_c_stops_the_sweep_with_what_was_measured() -> None:
    calls = 0

    def fake(test: SpeedTest, *, verbose: bool) -> Run:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return Run(Speed(0.1, 10.0, 5.0, None, 2048), 1 << 20)

    report = run_sweep(_sweep(), notify=lambda _line: None, run=fake)
    assert report.interrupted
    assert [r.config.threads for r in report.measured] == [1]
    assert report.to_dict()["interrupted"] is True
    assert len(report.to_dict()["results"]) == 1


def test_lists_are_parsed_and_checked() -> None:
    assert parse_counts("--threads", " 1, 2,1 ") == (1, 2)
    assert parse_counts("--threads", None) is None
    assert parse_flash_attn("ON,off,on") == ("on", "off")
    for bad in ("", "0", "1.5", "a", "1,,2", "-2"):
        with pytest.raises(UsageError, match="--ctx takes positive whole numbers"):
            parse_counts("--ctx", bad)
    with pytest.raises(UsageError, match="--flash-attn takes auto, on or off"):
        parse_flash_attn("yes")


def test_the_table_shows_failures_across_the_figures() -> None:
    ok = _result(1, 4, 200.0, 95.25, 150.0)
    failed = Result(Config(2, 4, "on", 2048),
                    [Run(None, None, "llama.cpp crashed (SIGILL)", "SIGILL")])
    lines = render(Report(_sweep(threads=(1, 2), parallel=(4,)), [ok, failed]))
    assert lines[0] == "m: prompt 512 tokens (pp512), 128 generated (tg128), best of 2 runs"
    assert lines[2].split("  ")[0] == "threads"
    assert lines[3].split() == ["1", "4", "auto", "2048", "200.0", "95.2", "150.0", "0.20",
                                "100"]
    assert lines[4].split() == ["2", "4", "on", "2048", "FAILED:", "llama.cpp", "crashed",
                                "(SIGILL)"]
    assert lines[-3:-1] == ["fastest for one stream: --threads 1 --flash-attn auto",
                            "fastest for batches: --threads 1 --parallel 4 --flash-attn auto"]
    assert lines[-1].startswith("one set is fastest for both: ")
