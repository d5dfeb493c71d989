"""Issue 11's reliability suite: random interruptions (INT, TERM, KILL) at random points of
a real ``termlm batch -o`` process, each followed by ``--resume``; in the end every id is
in the output exactly once, with its own answer. The engine is a fake OpenAI-compatible
server (no model to load), so many rounds fit in a few seconds each."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_remote_units import FakeServer, Reply, chat_reply

N_RECORDS = 400
ROUNDS = 8
DEADLINE_S = 90.0


def _echo(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
    if not path.endswith("/chat/completions"):
        return Reply(status=404)
    text = body["messages"][-1]["content"]
    reply = chat_reply(f"echo {text}")
    reply.delay_s = random.uniform(0.01, 0.04)
    return reply


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer(_echo)
    yield fake
    fake.close()


def _command(server: FakeServer, inp: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "termlm", "--engine", "openai", "--base-url", server.url,
           "--concurrency", "4", "batch", "-p", "{text}", str(inp), "-o", str(out)]
    return [*cmd, "--resume"] if resume else cmd


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TERMLM_CONFIG_DIR=str(tmp_path / "config"), TERMLM_STATE_DIR=str(tmp_path / "st"),
               TERMLM_CACHE_DIR=str(tmp_path / "cache"), TERMLM_MODELS_DIR=str(tmp_path / "m"))
    return env


def test_random_interrupt_and_resume_rounds(server: FakeServer, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("TERMLM_ROUNDS_SEED", "11")))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "text": f"record {i}"}) + "\n"
                           for i in range(N_RECORDS)))
    out = tmp_path / "out.jsonl"
    env = _env(tmp_path)
    started = time.monotonic()
    signals_sent: list[str] = []
    for round_no in range(ROUNDS):
        proc = subprocess.Popen(_command(server, inp, out, resume=round_no > 0), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.4, 1.6))
        sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
        if proc.poll() is None:
            proc.send_signal(sig)
            signals_sent.append(sig.name)
        _, err = proc.communicate(timeout=20)
        # a run that is interrupted exits at once, with its own code (143: a SIGTERM that
        # came before Python had started termlm, or after it had finished)
        assert proc.returncode in (0, 130, 143, -signal.SIGKILL, 128 + signal.SIGKILL), err
        if proc.returncode == 130:
            assert b"resume with:" in err
        assert b"Traceback" not in err
        assert time.monotonic() - started < DEADLINE_S
    final = subprocess.run(_command(server, inp, out, resume=True), env=env,
                           capture_output=True, timeout=60)
    assert final.returncode == 0, final.stderr
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is whole
    ids = Counter(r["id"] for r in records)
    assert set(ids) == {f"r{i}" for i in range(N_RECORDS)}, signals_sent
    assert max(ids.values()) == 1, [k for k, v in ids.items() if v > 1]
    for rec in records:
        assert rec["output"] == f"echo record {rec['id'][1:]}"


def test_a_signal_to_the_whole_process_group_is_one_interruption(server: FakeServer,
                                                                   tmp_path: Path) -> None:
    """`kill -INT -PGID` (a script, `timeout`) reaches termlm's worker directly and through
    the crash guard: the second copy must not cut the clean-up short."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "text": f"record {i}"}) + "\n"
                           for i in range(N_RECORDS)))
    out = tmp_path / "out.jsonl"
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(_command(server, inp, out, resume=out.exists()),
                                env=_env(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(1.5)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        assert b"resume with:" in err and b"ok, 0 failed" in err
        assert b"Traceback" not in err
