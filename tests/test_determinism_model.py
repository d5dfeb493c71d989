"""Which outputs repeat bit for bit (README "Determinism"), on the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

TERMLM = [sys.executable, "-m", "termlm"]
SYSTEM = "You are a helpful assistant. Answer directly and concisely."
PROMPTS = ["What is the capital of France?", "Name three colors.", "Why is the sea salty?"]


def run(*args: str, input: str | None = None) -> str:
    proc = subprocess.run([*TERMLM, *args], input=input, capture_output=True, text=True,
                          timeout=600, check=False, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_batch_at_parallel_1_equals_ask() -> None:
    asked = [run("ask", "--temperature", "0", "-n", "32", prompt).strip() for prompt in PROMPTS]
    out = run("batch", "-P", "1", "--system", SYSTEM, "-p", "{text}", "--temperature", "0",
              "-n", "32", "--output-format", "jsonl", input="\n".join(PROMPTS) + "\n")
    batched = [json.loads(line)["output"] for line in out.splitlines()]
    assert batched == asked


def test_same_input_settings_and_parallel_repeat_exactly(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("\n".join(f"Translate to French: {p}" for p in PROMPTS * 3) + "\n")
    runs = [run("batch", "-P", "4", "-p", "{text}", "--temperature", "0.8", "--seed", "11",
                "-n", "24", str(data)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0].splitlines()) == 9
