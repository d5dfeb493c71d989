"""termlm chat end to end on the real default model (pulled once into the user cache).

Run with ``pytest -m model``. Each test starts ``python -m termlm chat`` as a
subprocess, piped or under a pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

import pexpect
import pytest

pytestmark = pytest.mark.model

TIMEOUT = 600  # the first run may pull the model


def _env() -> dict[str, str]:
    env = dict(os.environ)  # includes the per-test TERMLM_CONFIG_DIR / TERMLM_STATE_DIR
    env.pop("NO_COLOR", None)
    return env


def chat(*args: str, input: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "termlm", "chat", *args], input=input, text=True,
        capture_output=True, env=_env(), timeout=TIMEOUT, check=False,
    )


def test_piped_chat_answers() -> None:
    """The piped reply is the model's own answer: the same greedy text `ask` gets for the
    same system prompt and question on this machine (the exact words differ between CPU
    kernels, so they are compared run against run, not against a fixed string)."""
    system = "You are a helpful assistant."
    question = "What is the capital of France?"
    result = chat("--temperature", "0", "--max-tokens", "64", "--system", system,
                  input=question + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    assert "\x1b[" not in result.stdout  # plain text into a pipe
    ask = subprocess.run(
        [sys.executable, "-m", "termlm", "ask", "--temperature", "0", "--max-tokens", "64",
         "--system", system, question], text=True, capture_output=True, env=_env(),
        timeout=TIMEOUT, check=False)
    assert ask.returncode == 0, ask.stderr
    assert result.stdout.strip() == ask.stdout.strip() != ""


def test_small_context_drops_old_exchanges() -> None:
    paragraph = ("The river wound through the valley past old mills, stone bridges, "
                 "orchards and quiet villages where farmers sold apples, honey and bread "
                 "at the weekly market near the church square. ")
    lines = [f"Turn {i}: in five words, what is this about? {paragraph}" for i in range(5)]
    result = chat("--ctx", "256", "--temperature", "0", "--max-tokens", "24",
                  input="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert "to fit the context" in result.stderr
    assert "error" not in result.stderr
    assert result.stdout.strip()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def _wait_for_reply(child: pexpect.spawn, echo: str, pattern: str, timeout: float) -> str:
    """Read until the text shown after the entered line ``echo`` matches ``pattern``.

    The accepted line is drawn as ``echo`` and a newline; the reply follows.
    """
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(pexpect.TIMEOUT):  # nothing new yet: look again
            seen += child.read_nonblocking(4096, timeout=1)
        _, found, reply = _ANSI.sub("", seen).partition(echo + "\n")
        if found and re.search(pattern, reply):
            return reply
    raise AssertionError(f"no {pattern!r} after {echo!r} in {timeout}s: {_ANSI.sub('', seen)!r}")


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on() -> None:
    env = _env()
    env.update(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
    child = pexpect.spawn(sys.executable, ["-m", "termlm", "chat", "--temperature", "0"],
                          env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 120))
    try:
        child.expect_exact(">>>")  # the prompt's trailing space is drawn as a cursor move
        child.sendline("Write a very long story about a dragon who learns to bake bread.")
        _wait_for_reply(child, "learns to bake bread.", r"(?:[A-Za-z]+\W+){12}", 120)
        child.sendintr()
        child.expect_exact("[interrupted]", timeout=60)
        child.expect_exact(">>>", timeout=60)
        child.sendline("Now say hello in French.")
        # a reply (its content is up to the small model), then the prompt again
        _wait_for_reply(child, "hello in French.", r"[A-Za-z]{2,}[\s\S]*>>>", 120)
        child.sendeof()
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close()
    assert child.exitstatus == 0
