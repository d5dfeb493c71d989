"""The real default model (qwen2.5-coder-0.5b), as a user gets it from a fresh clone.

The rest of the suite runs on the tiny smollm2 for speed where it checks plumbing; these
tests check answers, on the model `termlm` uses when nothing is configured. Assertions
are ones the model gets right by a wide margin, so they hold on any CPU kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.default_model]

TERMLM = [sys.executable, "-m", "termlm"]
DATA = Path(__file__).parent / "data"


def run(*args: str, input: str | None = None, timeout: float = 900
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TERMLM_MODEL"}
    return subprocess.run([*TERMLM, *args], input=input, capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def test_the_readme_question_is_answered_by_the_default_model() -> None:
    result = run("ask", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_models_list_marks_it_the_default() -> None:
    result = run("models", "list", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["qwen2.5-coder-0.5b"]["default"] is True
    assert rows["qwen2.5-coder-0.5b"]["pulled"] is True  # the first test pulled it
    assert rows["smollm2"]["default"] is False


def test_classify_gets_clear_sentiment_right() -> None:
    rows = [json.loads(line) for line in (DATA / "sentiment.jsonl").read_text().splitlines()]
    sample = "".join(json.dumps(r) + "\n" for r in rows[:24])
    result = run("classify", "--labels", "positive,negative", "--gold-field", "label",
                 input=sample)
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    correct = sum(o["label"] == r["label"] for o, r in zip(outputs, rows, strict=False))
    assert len(outputs) == 24
    assert correct >= 20, result.stderr  # smollm2 is near chance on these labels


def test_translate_gives_french(tmp_path: Path) -> None:
    doc = tmp_path / "note.md"
    doc.write_text("# Installation\n\nInstall the tool and run it once.\n\n"
                   "The weather is nice today.\n")
    result = run("translate", "--to", "French", str(doc))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("# ")
    assert len([line for line in out.splitlines() if line.strip()]) == 3  # structure kept
    lowered = out.lower()
    assert any(word in lowered for word in (" le ", " la ", " les ", "l'", " et ",
                                            "aujourd", "temps", "outil"))


def test_extract_finds_the_fields(tmp_path: Path) -> None:
    data = tmp_path / "people.jsonl"
    data.write_text('{"id": "a", "text": "Alice Martin was born in Lyon in 1990."}\n'
                    '{"id": "b", "text": "Bob Stone lives in Boston."}\n')
    result = run("extract", "--fields", "name,city", str(data))
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r["data"] for r in map(json.loads, result.stdout.splitlines())}
    assert "Lyon" in rows["a"]["city"] and "Alice" in rows["a"]["name"]
    assert "Boston" in rows["b"]["city"] and "Bob" in rows["b"]["name"]
