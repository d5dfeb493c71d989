"""A crash never goes unexplained: termlm forks once, the parent reports how the child died."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from termlm.crashguard import explain

TERMLM = [sys.executable, "-m", "termlm"]


def _guarded(body: str) -> subprocess.Popen[str]:
    code = ("import os, signal, sys, time\n"
            "from termlm.crashguard import note_resume, run_guarded\n"
            "def run():\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n"
            "run_guarded(run)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_explain_names_the_signal_and_doctor() -> None:
    lines = explain(signal.SIGSEGV, ["termlm batch x -o y --resume"])
    assert lines == ["termlm: llama.cpp crashed (SIGSEGV); run `termlm doctor` to find out why",
                     "termlm: resume with: termlm batch x -o y --resume"]
    assert "SIGABRT" in explain(signal.SIGABRT, [])[0]
    assert "memory" in explain(signal.SIGKILL, [])[0]
    assert explain(signal.SIGINT, []) == []  # asked for: nothing to explain


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS,
                                    signal.SIGILL])
def test_a_crashed_child_gives_one_line_and_128_plus_the_signal(signum: int) -> None:
    proc = _guarded(f"note_resume('termlm classify in.jsonl -o out.jsonl --resume')\n"
                    f"os.kill(os.getpid(), {int(signum)})")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum
    lines = err.splitlines()
    assert lines[0] == (f"termlm: llama.cpp crashed ({signal.Signals(signum).name}); "
                        "run `termlm doctor` to find out why")
    assert lines[1] == "termlm: resume with: termlm classify in.jsonl -o out.jsonl --resume"
    assert out == ""


def test_exit_codes_and_output_pass_through() -> None:
    proc = _guarded("print('data', flush=True)\nsys.stderr.write('talk\\n')\nsys.exit(3)")
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (3, "data\n", "talk\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_sent_to_the_parent_reach_the_child_once(signum: int) -> None:
    proc = _guarded("""
        got = []
        signal.signal(signal.SIGTERM, lambda n, f: got.append(n))
        signal.signal(signal.SIGINT, lambda n, f: got.append(n))
        print('ready', flush=True)
        deadline = time.time() + 20
        while not got and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second copy would arrive by now
        print(len(got), flush=True)
        sys.exit(130)
        """)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert out.strip() == "1"


def test_help_stays_fast() -> None:
    best = min(_timed([*TERMLM, "--help"]) for _ in range(3))
    assert best < 1.5, f"termlm --help took {best:.2f} s"


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    return time.perf_counter() - start


def _child_of(pid: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("termlm did not fork a child")


@pytest.mark.model
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_crash_mid_batch_prints_the_resume_command_and_resume_completes(tmp_path: Path
                                                                         ) -> None:
    data = tmp_path / "words.txt"
    words = [f"word number {i}" for i in range(30)]
    data.write_text("\n".join(words) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*TERMLM, "batch", "-p", "Repeat: {text}", "-n", "24",
                             "--temperature", "0", "--parallel", "1", str(data), "-o",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    child = _child_of(proc.pid)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.kill(child, signal.SIGSEGV)  # what llama.cpp's AMX kernel does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGSEGV, err
    lines = [line for line in err.splitlines() if line.startswith("termlm:")]
    assert lines[0].startswith("termlm: llama.cpp crashed (SIGSEGV)")
    assert "termlm doctor" in lines[0]
    assert lines[1].startswith("termlm: resume with: termlm batch ")
    assert "Traceback" not in err
    before = [json.loads(line)["id"] for line in out.read_text().splitlines()
              if line.endswith("}")]
    assert 3 <= len(before) < len(words)
    resume = shlex.split(lines[1].removeprefix("termlm: resume with: "))
    assert resume[0] == "termlm" and "--resume" in resume
    done = subprocess.run([*TERMLM, *resume[1:]], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids, key=int) == [str(i) for i in range(1, len(words) + 1)]
    assert len(ids) == len(set(ids))
