"""End-to-end: `termlm summarize` on the real default model, with a document 4x its context."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

TERMLM = [sys.executable, "-m", "termlm"]


def document(n_words: int, seed: int = 1) -> str:
    """Paragraphs of plain sentences about a small town (varied, so the parts differ)."""
    rng = random.Random(seed)
    subjects = ["The village council", "A young engineer named Mara", "The lighthouse keeper",
                "The river trade guild", "Farmers in the valley", "The railway company",
                "A travelling doctor", "The harbour master", "The town's bakers"]
    verbs = ["planned", "argued about", "repaired", "celebrated", "measured", "built",
             "worried about", "paid for"]
    objects = ["the stone bridge over the river", "a new water mill", "the winter grain stores",
               "the road to the northern mines", "the harbour wall after the storm",
               "the spring festival", "a clock tower in the square", "a library for the district"]
    tails = ["because the old one was failing", "after a long and difficult year",
             "with help from their neighbours", "even though money was short",
             "before the traders arrived in summer"]
    paragraphs: list[str] = []
    words = 0
    while words < n_words:
        sentences = []
        for _ in range(rng.randint(4, 7)):
            sentence = (f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
                        f"{rng.choice(tails)}.")
            sentences.append(sentence)
            words += len(sentence.split())
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs) + "\n"


def test_a_document_four_times_the_context_is_summarized(tmp_path: Path) -> None:
    text = document(2000)  # about 2,200 tokens: more than 4x a 512-token context
    doc = tmp_path / "town.txt"
    doc.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [*TERMLM, "--ctx", "512", "summarize", str(doc), "--length", "short",
         "--max-tokens", "48", "--temperature", "0", "--progress"],
        capture_output=True, text=True, timeout=900, check=False, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    match = re.search(r"summarizing (\d+) parts", result.stderr)
    assert match, result.stderr
    assert int(match.group(1)) >= 4
    assert "part 1/" in result.stderr and "combining" in result.stderr
    summary = result.stdout
    assert summary.strip() and summary.endswith("\n")
    assert "part 1/" not in summary  # progress stays on stderr
    vocabulary = set(re.findall(r"[a-z]+", text.lower()))
    used = set(re.findall(r"[a-z]{4,}", summary.lower())) & vocabulary
    assert len(used) >= 3, summary  # it talks about the document
