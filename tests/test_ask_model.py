"""End-to-end: the real CLI as a subprocess, on the real default model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

TERMLM = [sys.executable, "-m", "termlm"]


def run(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run([*TERMLM, *args], input=data, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


@pytest.fixture(scope="module", autouse=True)
def _default_model_pulled() -> None:
    result = run("models", "pull", "smollm2", timeout=900)
    assert result.returncode == 0, result.stderr


def test_factual_question() -> None:
    result = run("ask", "--temperature", "0", "--max-tokens", "40",
                 "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert result.stderr == ""


def test_stdin_is_used_as_context() -> None:
    notes = "Meeting notes. The project codename is BLUEFINCH. Budget approved.\n"
    result = run("ask", "--temperature", "0", "--max-tokens", "40",
                 "What is the project codename?", input=notes)
    assert result.returncode == 0, result.stderr
    assert "BLUEFINCH" in result.stdout.upper()


def test_json_output() -> None:
    result = run("ask", "--json", "--temperature", "0", "--max-tokens", "8", "Say hello")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "smollm2"
    assert data["text"].strip()
    assert 0 < data["usage"]["completion_tokens"] <= 8
    assert data["usage"]["prompt_tokens"] > 5
    assert data["timings"]["load_s"] > 0
    assert data["timings"]["ttft_s"] > 0


def test_greedy_and_seeded_runs_repeat() -> None:
    greedy = [run("ask", "--temperature", "0", "-n", "24", "Write one sentence about cats.")
              for _ in range(2)]
    assert greedy[0].stdout == greedy[1].stdout and greedy[0].stdout.strip()
    seeded = [run("ask", "--temperature", "0.9", "--seed", "7", "-n", "24",
                  "Write one sentence about dogs.") for _ in range(2)]
    assert seeded[0].stdout == seeded[1].stdout and seeded[0].stdout.strip()


def test_stop_string() -> None:
    result = run("ask", "--temperature", "0", "-n", "60", "--stop", "3",
                 "Count from 1 to 10, separated by commas.")
    assert result.returncode == 0
    assert "3" not in result.stdout
    assert "1" in result.stdout


def test_closed_pipe_exits_quietly() -> None:
    cmd = " ".join(["'" + a + "'" for a in TERMLM])
    proc = subprocess.run(
        f"{cmd} ask --temperature 0 -n 200 'Write a long story about a ship.' | head -c1",
        shell=True, capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout and len(proc.stdout) == 1
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert proc.stderr == ""


def test_ctrl_c_keeps_partial_output_and_exits_130() -> None:
    proc = subprocess.Popen(
        [*TERMLM, "ask", "--temperature", "0.8", "--seed", "1", "-n", "2000",
         "Write a very long story about the sea."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(20)
    assert first
    proc.send_signal(signal.SIGINT)
    _rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"interrupted" in err
    assert b"Traceback" not in err


def test_context_overflow_is_a_clear_error() -> None:
    long_text = "word " * 400
    result = run("--ctx", "128", "ask", "summarize", input=long_text)
    assert result.returncode == 1
    assert "more than the context window of" in result.stderr
    assert "Traceback" not in result.stderr


def test_offline_with_missing_model_names_the_pull_command(tmp_path: Path) -> None:
    result = run("ask", "hi", env={"TERMLM_MODELS_DIR": str(tmp_path), "TERMLM_OFFLINE": "1"})
    assert result.returncode == 1
    assert "termlm models pull smollm2" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model() -> None:
    result = run("ask", "-m", "no-such-model", "hi")
    assert result.returncode == 1
    assert "no-such-model" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def _valid_header_prefix() -> bytes:
    model = run("models", "path", "smollm2").stdout.strip()
    with open(model, "rb") as handle:
        return handle.read(4096)


@pytest.mark.parametrize("kind", ["truncated", "random", "text", "empty", "directory"])
def test_broken_model_files_never_crash(tmp_path: Path, kind: str) -> None:
    import random

    path = tmp_path / "model.gguf"
    if kind == "truncated":
        path.write_bytes(_valid_header_prefix())
    elif kind == "random":
        rng = random.Random(5)
        path.write_bytes(b"GGUF" + bytes(rng.getrandbits(8) for _ in range(50_000)))
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    result = run("ask", "-m", str(path), "hi")
    assert result.returncode == 1, (kind, result.returncode, result.stderr)
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_help_and_version_do_not_load_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from termlm.cli import app\n"
        "for argv in (['--help'], ['--version'], ['ask', '--help'], ['chat', '--help']):\n"
        "    try:\n"
        "        app(argv, prog_name='termlm')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('llama_cpp', 'prompt_toolkit', 'numpy', 'huggingface_hub')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    assert time.perf_counter() - started < 30
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_version_and_python_dash_m() -> None:
    from termlm import __version__

    result = run("--version")
    assert result.stdout.strip() == f"termlm {__version__}"


def test_verbose_shows_llama_log() -> None:
    quiet = run("ask", "--temperature", "0", "-n", "2", "hi")
    loud = run("-v", "ask", "--temperature", "0", "-n", "2", "hi")
    assert quiet.stderr == ""
    assert "llama" in loud.stderr.lower()


def test_sigterm_is_handled_like_ctrl_c() -> None:
    proc = subprocess.Popen(
        [*TERMLM, "ask", "--temperature", "0.8", "--seed", "1", "-n", "2000",
         "Write a very long story about the sea."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.read(10)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"Traceback" not in err
