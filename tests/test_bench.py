"""scripts/bench, reduced: a smoke run that must produce the table (timings are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent
GUARDED = ROOT / "scripts" / "llama_guarded.py"


def test_bench_smoke_run_produces_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # every case but embed, whose baseline (sentence-transformers, torch) is never installed
    # in termlm's venv: the next test runs it against a stand-in
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--records", "6",
                           "--repeat", "1", "--parallel", "2", "--json", str(out), "--cases",
                           "classify,translate,generate,cold-start,threads,similar,cluster"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    for row in ("classify-6: records/s", "classify-6: valid labels",
                "classify-6: tokens evaluated per record", "translate-6: requests/s",
                "single-stream generation", "cold start", "default threads",
                "similar at 100,000 vectors", "cluster 10,000 vectors"):
        assert row in table, table
    data = json.loads(out.read_text())
    assert data["classify"]["termlm"]["valid_labels"] == 1.0
    assert data["classify"]["termlm"]["tokens_evaluated_per_record"] > 0
    assert data["classify"]["baseline"]["tokens_evaluated_per_record"] > 0
    assert data["generate"]["per_round"]["rounds"] == 5  # the short cases run 5 times a side
    assert data["translate"]["requests"] == 6
    assert data["cold_start"]["termlm_s"] > 0
    threads = data["threads_case"]
    assert set(threads["by_threads"]) == {str(k) for k in range(1, (os.cpu_count() or 1) + 1)}
    assert threads["default_tok_per_s"] > 0 and threads["ratio"] > 0
    assert data["similar"]["search_ms"] > 0 and data["similar"]["ids"] == 100_000
    assert data["cluster"]["auto_k"] == 8


def test_bench_embed_case_with_a_stand_in_baseline(tmp_path: Path) -> None:
    """The embed case's plumbing: termlm's side for real (minilm), the baseline a stub that
    answers like the sentence-transformers side (which needs torch, never installed here)."""
    stub = tmp_path / "st-python"
    stub.write_text("#!/bin/sh\necho '{\"seconds\": 2.0, \"n\": 320, \"similar\": 0.6, "
                    "\"unrelated\": 0.0}'\n")
    stub.chmod(0o755)
    out = tmp_path / "bench.json"
    env = {**os.environ, "BENCH_ST_PYTHON": str(stub)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--cases", "embed",
                           "--repeat", "1", "--json", str(out)], capture_output=True,
                          text=True, timeout=900, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "embed-320: texts/s (vs sentence-transformers, same weights)" in proc.stdout
    embed = json.loads(out.read_text())["embed"]
    assert embed["st_texts_per_s"] == 160.0 and embed["termlm_texts_per_s"] > 0
    assert embed["per_round"]["rounds"] == 3
    similar, unrelated = embed["termlm_similar_unrelated"]
    assert similar > unrelated + 0.3
    q8 = embed["q8_0"]  # the Q8_0 copy, quantized for the run and measured in the same rounds
    assert q8["termlm_texts_per_s"] > 0 and q8["per_round"]["rounds"] == 3
    assert 0.99 < q8["min_cosine_to_f16"] <= 1.0001
    assert "Q8_0 copy (min cosine to F16" in proc.stdout


def test_bench_llama_server_row_with_a_stand_in_server(tmp_path: Path) -> None:
    """LLAMA_SERVER takes llama-server's arguments; llama-cpp-python's server stands in."""
    shim = tmp_path / "llama-server"
    shim.write_text(
        "#!/usr/bin/env python3\n"
        "import argparse, os, sys\n"
        "p = argparse.ArgumentParser()\n"
        "for flag in ('-m', '--host', '--port', '-np', '-c', '-t'):\n"
        "    p.add_argument(flag)\n"
        "p.add_argument('--no-repack', action='store_true')\n"
        "a = p.parse_args()\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}, {str(GUARDED)!r}, '-m',\n"
        "         'llama_cpp.server',\n"
        "         '--model', a.m, '--host', a.host, '--port', a.port,\n"
        "         '--n_ctx', '2048', '--n_threads', a.t])\n")
    shim.chmod(0o755)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--cases",
                           "translate", "--records", "4", "--repeat", "1", "--parallel", "2",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "LLAMA_SERVER": str(shim)})
    assert proc.returncode == 0, proc.stderr
    assert "vs llama-server, 2 slots and clients" in proc.stdout
    data = json.loads(out.read_text())
    assert data["translate"]["llama_server"]["requests_per_s"] > 0


def test_bench_llama_bench_row_with_a_stand_in(tmp_path: Path) -> None:
    """LLAMA_BENCH is called as llama-bench (-m -t -p 0 -n N -r 1 -o json) and its avg_ts
    becomes the single-stream ceiling row."""
    shim = tmp_path / "llama-bench"
    shim.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "assert args[args.index('-p') + 1] == '0' and args[args.index('-o') + 1] == 'json'\n"
        "assert args[args.index('-n') + 1] == '8', args\n"
        "assert int(args[args.index('-d') + 1]) > 5, args  # termlm's prompt length\n"
        "print(json.dumps([{'n_gen': 8, 'avg_ts': 1000.0}]))\n")
    shim.chmod(0o755)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--cases",
                           "generate", "--records", "4", "--repeat", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "LLAMA_BENCH": str(shim)})
    assert proc.returncode == 0, proc.stderr
    assert "vs llama-bench tg8, the ceiling" in proc.stdout
    data = json.loads(out.read_text())["generate"]
    assert data["llama_bench_tok_per_s"] == 1000.0
    assert data["termlm_vs_llama_bench"] == round(data["termlm_tok_per_s"] / 1000.0, 2)
