"""termlm eval on real models: each task end to end, and Ctrl-C keeps the finished runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

TERMLM = [sys.executable, "-m", "termlm"]
EVAL = Path(__file__).parent / "data" / "eval"


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TERMLM, "eval", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_classify_compares_two_models() -> None:
    result = run("classify", str(EVAL / "sentiment3-dev.jsonl"), "-l",
                 "positive,negative,neutral", "-m", "smollm2", "-m", "qwen2.5-coder-0.5b",
                 "--limit", "9", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["task"] == "classify" and data["primary"] == "accuracy"
    rows = data["results"]
    assert [r["model"] for r in rows] == ["smollm2", "qwen2.5-coder-0.5b"]
    for row in rows:
        assert row["ok"], row
        assert 0 <= row["quality"]["accuracy"] <= 1 and row["quality"]["valid_labels"] == 1
        assert row["speed"]["records_per_s"] > 0 and row["speed"]["tokens_per_s"] > 0
        assert row["speed"]["load_s"] > 0 and row["speed"]["peak_rss_mb"] > 50
    assert rows[0]["file"]["quant"] == "Q4_1" and rows[1]["file"]["quant"] == "Q4_K_M"
    # each run is its own process: the bigger model's peak memory is its own
    assert rows[1]["speed"]["peak_rss_mb"] > rows[0]["speed"]["peak_rss_mb"]
    assert any(r["front"] for r in rows)
    assert "eval 1/2: smollm2 on 9 records" in result.stderr


def test_prompt_variants_multiply_the_runs(tmp_path: Path) -> None:
    variants = tmp_path / "variants.yaml"
    variants.write_text("plain:\ncalibrated:\n  args: [--calibrate]\n")
    result = run("classify", str(EVAL / "sentiment3-dev.jsonl"), "-l",
                 "positive,negative,neutral", "-m", "smollm2", "--limit", "6",
                 "--prompt-variants", str(variants))
    assert result.returncode == 0, result.stderr
    assert "| smollm2 (plain) |" in result.stdout
    assert "| smollm2 (calibrated) |" in result.stdout


def test_extract_translate_and_qa_score_their_outputs() -> None:
    extract = run("extract", str(EVAL / "people.jsonl"), "--fields", "name,city,year",
                  "-m", "smollm2", "--limit", "4", "--json")
    assert extract.returncode == 0, extract.stderr
    quality = json.loads(extract.stdout)["results"][0]["quality"]
    assert {"field_match", "exact_match", "schema_valid", "match:name"} <= set(quality)
    assert quality["schema_valid"] == 1.0  # the grammar holds the output to the schema

    translate = run("translate", str(EVAL / "en-fr.jsonl"), "--to", "French", "-m",
                    "smollm2", "--limit", "4", "--json")
    assert translate.returncode == 0, translate.stderr
    quality = json.loads(translate.stdout)["results"][0]["quality"]
    assert 0 < quality["chrf"] <= 100 and quality["nonempty"] == 1.0

    qa = run("qa", str(EVAL / "qa.jsonl"), "--docs", str(EVAL / "qa-docs"), "-m", "smollm2",
             "--limit", "6", "--json")
    assert qa.returncode == 0, qa.stderr
    quality = json.loads(qa.stdout)["results"][0]["quality"]
    assert {"qa_score", "answer_match", "citation_correct",
            "not_found_when_unanswerable"} <= set(quality)


def test_ctrl_c_keeps_the_finished_runs() -> None:
    proc = subprocess.Popen([*TERMLM, "eval", "classify", str(EVAL / "topics.jsonl"), "-l",
                             "World,Sports,Business,Sci/Tech", "-m", "smollm2", "-m",
                             "qwen2.5-coder-0.5b", "--limit", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 300
    while "eval 2/2" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: 1 of 2 runs done" in seen + err
    assert "| smollm2 |" in out and "qwen2.5-coder-0.5b" not in out
    assert "Traceback" not in err
