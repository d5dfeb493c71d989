"""End-to-end: `termlm translate` as a subprocess on the real default model (smollm2).

The model is tiny: this checks the plumbing (kept parts byte-identical, exit
code, cache), not the quality of the French.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from termlm import paths

pytestmark = pytest.mark.model

FRONT = "---\ntitle: Notes\ntags: [demo]\n---\n"
CODE = "```python\nprint('do not translate me')\n```\n"
URL = "https://example.com/docs"
DOC = (f"{FRONT}# A short guide\n\nRead the manual at {URL} before you start.\n\n"
       f"{CODE}\nThe cat sleeps on the warm sofa.\n")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "termlm", *args], capture_output=True,
                          text=True, timeout=600, check=False, env=env)


@pytest.mark.parametrize("parallel", ["1", "3"])
def test_translate_markdown_keeps_front_matter_code_and_urls(tmp_path: Path,
                                                             parallel: str) -> None:
    env = {**os.environ, "TERMLM_MODELS_DIR": str(paths.models_dir()),
           "TERMLM_CACHE_DIR": str(tmp_path / "cache")}
    pulled = run("models", "pull", "smollm2", env=env)
    assert pulled.returncode == 0, pulled.stderr
    source = tmp_path / "guide.md"
    source.write_text(DOC, encoding="utf-8")
    result = run("translate", "--to", "French", "--parallel", parallel, str(source), env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(FRONT)
    assert CODE in out
    assert URL in out
    body = out[len(FRONT):].replace(CODE, "")
    assert body.strip(), out
    assert "3 segments" in result.stderr
