"""End-to-end: `termlm qa` on the real default model, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from termlm import paths

pytestmark = pytest.mark.model

TERMLM = [sys.executable, "-m", "termlm"]
FACT = "The Zorblax reactor was commissioned in 1987 in Tromsø."
Q = "When was the Zorblax reactor commissioned?"
SWALLOW = "What is the airspeed of an unladen swallow?"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "zorblax.md").write_text(
        "# The Zorblax reactor\n\n"
        "The Zorblax reactor is an experimental research reactor in northern Norway.\n"
        f"{FACT}\nIt is cooled by sea water drawn from the fjord.\n")
    (root / "hedges.md").write_text(
        "# Hedges\n\nTrim hedges in late spring, after birds have finished nesting.\n"
        "Use sharp shears so the cut heals quickly.\n")
    (root / "bread.txt").write_text("Sourdough bread needs a starter of flour and water.\n"
                                    "Bake it at 230 degrees for about forty minutes.\n")
    return root


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["TERMLM_MODELS_DIR"] = str(paths.models_dir())  # the shared, already pulled model
    env["TERMLM_CACHE_DIR"] = str(cwd / "cache")  # a fresh index
    return subprocess.run([*TERMLM, *args], capture_output=True, text=True, timeout=600,
                          check=False, env=env, cwd=cwd)


def assert_valid(citations: list[dict[str, Any]], cwd: Path) -> None:
    for c in citations:
        lines = (cwd / c["path"]).read_text().split("\n")
        assert 1 <= c["start"] <= c["end"] <= len(lines)


def test_answers_from_the_documents_and_cites_them(docs: Path) -> None:
    cwd = docs.parent
    (cwd / "qs.jsonl").write_text(json.dumps({"id": "fact", "question": Q}) + "\n"
                                  + json.dumps({"id": "swallow", "question": SWALLOW}) + "\n")
    result = run("qa", "--docs", "docs", "--questions", "qs.jsonl", cwd=cwd)
    assert result.returncode == 0, result.stderr
    fact, swallow = (json.loads(line) for line in result.stdout.splitlines())
    assert fact["id"] == "fact" and fact["found"] is True
    assert "1987" in fact["answer"]  # greedy: measured "...commissioned in 1987 in Tromsø..."
    assert "docs/zorblax.md" in {c["path"] for c in fact["citations"]}
    assert_valid(fact["citations"], cwd)
    zorblax = [c for c in fact["citations"] if c["path"] == "docs/zorblax.md"]
    assert any(FACT in c["snippet"] for c in zorblax)
    assert swallow["found"] is False and swallow["citations"] == []


def test_plain_output_lists_sources_and_unanswerable_says_so(docs: Path) -> None:
    cwd = docs.parent
    result = run("qa", "--docs", "docs", Q, cwd=cwd)
    assert result.returncode == 0, result.stderr
    answer, _, sources = result.stdout.partition("\nSources:\n")
    assert answer.strip() and "docs/zorblax.md:" in sources
    result = run("qa", "--docs", "docs", "--json", SWALLOW, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["found"] is False
