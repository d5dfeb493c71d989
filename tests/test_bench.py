"""scripts/bench, reduced: a smoke run that must produce the table (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_run_produces_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--records", "6",
                           "--repeat", "1", "--parallel", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    for row in ("classify-6: records/s", "classify-6: valid labels", "translate-6: requests/s",
                "single-stream generation", "cold start"):
        assert row in table, table
    data = json.loads(out.read_text())
    assert data["classify"]["termlm"]["valid_labels"] == 1.0
    assert data["translate"]["requests"] == 6
    assert data["cold_start"]["termlm_s"] > 0
