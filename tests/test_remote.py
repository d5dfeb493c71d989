"""End-to-end: termlm --engine openai against a real llama-cpp-python server.

The server (``python -m llama_cpp.server``, the ``server`` extra of
llama-cpp-python) runs the default model on 127.0.0.1 on a free port; the CLI
runs as a subprocess, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from .test_remote_units import free_port

pytestmark = pytest.mark.model

TERMLM = [sys.executable, "-m", "termlm"]
GUARDED = Path(__file__).resolve().parent.parent / "scripts" / "llama_guarded.py"


def run(*args: str, input: str | None = None, timeout: float = 180
        ) -> subprocess.CompletedProcess[str]:
    # no TERMLM_MODEL: with the model left at its default, termlm asks the server for
    # the model it serves (what a user of --engine openai gets)
    env = {k: v for k, v in os.environ.items() if k != "TERMLM_MODEL"}
    return subprocess.run([*TERMLM, *args], input=input, capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


class LlamaServer:
    """``python -m llama_cpp.server`` on the default model; start, stop, start again."""

    def __init__(self, model: str, log: Path) -> None:
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, str(GUARDED), "-m", "llama_cpp.server", "--model", self.model,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                pytest.fail(f"llama_cpp.server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        self.stop()
        pytest.fail(f"llama_cpp.server did not answer within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="module")
def model_path() -> str:
    pulled = run("models", "pull", "smollm2", timeout=900)
    assert pulled.returncode == 0, pulled.stderr
    path = run("models", "path", "smollm2").stdout.strip()
    assert Path(path).is_file()
    return path


@pytest.fixture(scope="module")
def server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    srv = LlamaServer(model_path, tmp_path_factory.mktemp("server") / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def remote(server: LlamaServer, *args: str) -> list[str]:
    return ["--engine", "openai", "--base-url", server.url, *args]


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_ask_answers(server: LlamaServer) -> None:
    result = run(*remote(server, "ask", "What is the capital of France?", "--temperature", "0",
                         "--max-tokens", "40"))
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert result.stderr == ""


def test_ask_json_has_usage(server: LlamaServer, model_path: str) -> None:
    result = run(*remote(server, "ask", "--json", "--temperature", "0", "--max-tokens", "8",
                         "Say hello"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["text"].strip()
    assert data["model"] == model_path  # the id that the server lists
    assert 0 < data["usage"]["completion_tokens"] <= 8
    assert data["usage"]["prompt_tokens"] > 5
    assert data["timings"]["ttft_s"] > 0


def test_batch_with_concurrency_keeps_input_order(server: LlamaServer) -> None:
    lines = [f"The number {i} is" for i in range(12)]
    result = run(*remote(server, "--concurrency", "4", "batch", "-p",
                         "Continue this: {text}", "--temperature", "0", "--max-tokens", "8"),
                 input="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    out = records(result.stdout)
    assert [r["id"] for r in out] == [str(i) for i in range(1, 13)]
    assert all(isinstance(r["output"], str) and "error" not in r for r in out)


def test_classify_gives_valid_labels_and_says_how(server: LlamaServer) -> None:
    data = Path(__file__).parent / "data" / "sentiment.jsonl"
    sample = "".join(data.read_text(encoding="utf-8").splitlines(keepends=True)[:6])
    result = run(*remote(server, "classify", "--labels", "positive,negative", "-"),
                 input=sample)
    assert result.returncode == 0, result.stderr
    out = records(result.stdout)
    assert len(out) == 6
    for record in out:
        assert record["label"] in ("positive", "negative")
        assert abs(sum(record["scores"].values()) - 1) < 1e-6
    assert "scoring labels by " in result.stderr


def test_server_dying_mid_batch_then_resume(model_path: str, tmp_path: Path) -> None:
    """Kill the server mid-run: the records it missed become error records, the run
    ends (exit 3); after a restart, --resume does them, and every id is there once."""
    srv = LlamaServer(model_path, tmp_path / "dying.log")
    srv.start()
    try:
        source = tmp_path / "in.txt"
        source.write_text("".join(f"Say the word {i}\n" for i in range(40)), encoding="utf-8")
        out = tmp_path / "out.jsonl"
        args = [*TERMLM, *remote(srv, "--concurrency", "4", "batch", "-p", "{text}",
                                 "--max-tokens", "12", "--temperature", "0", str(source),
                                 "-o", str(out))]
        with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as batch:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and batch.poll() is None:
                if out.exists() and len(out.read_text(encoding="utf-8").splitlines()) >= 5:
                    break
                time.sleep(0.1)
            srv.stop(kill=True)
            try:
                _, stderr = batch.communicate(timeout=180)
            finally:
                batch.kill()
        assert batch.returncode == 3, stderr
        first = records(out.read_text(encoding="utf-8"))
        assert [r["id"] for r in first] == [str(i) for i in range(1, 41)]
        failed = [r for r in first if "error" in r]
        assert failed and all("failed after 4 tries" in r["error"] for r in failed)

        srv.start()
        resumed = run(*remote(srv, "--concurrency", "4", "batch", "-p", "{text}",
                              "--max-tokens", "12", "--temperature", "0", str(source),
                              "-o", str(out), "--resume"))
        assert resumed.returncode == 0, resumed.stderr
        final = records(out.read_text(encoding="utf-8"))
        assert sorted(int(r["id"]) for r in final) == list(range(1, 41))  # each id once
        assert all("error" not in r and isinstance(r["output"], str) for r in final)
    finally:
        srv.stop()
