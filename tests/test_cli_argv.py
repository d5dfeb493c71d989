"""Issue 12, item 7: global options work after the command too; habit commands and
option abbreviations get the right name."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer.main

from termlm.cli import app
from termlm.cli.argv import prepare_argv
from termlm.errors import UsageError

ROOT: Any = typer.main.get_command(app)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ask", "--threads", "2", "hi"], ["--threads", "2", "ask", "hi"]),
        (["ask", "--offline", "--ctx", "4096", "hi"], ["--offline", "--ctx", "4096", "ask", "hi"]),
        (["ask", "--ctx=4096", "-v", "hi"], ["--ctx=4096", "-v", "ask", "hi"]),
        # chat has its own --ctx: it stays chat's
        (["chat", "--ctx", "2048"], ["chat", "--ctx", "2048"]),
        # nested commands, and options already in front
        (["--verbose", "models", "list", "--offline"],
         ["--verbose", "--offline", "models", "list"]),
        (["--threads", "3", "batch", "-p", "{text}", "--engine", "openai", "in.txt"],
         ["--threads", "3", "--engine", "openai", "batch", "-p", "{text}", "in.txt"]),
        # nothing after -- moves; a value that looks like an option stays a value
        (["ask", "--", "--offline"], ["ask", "--", "--offline"]),
        (["ask", "-s", "--offline", "hi"], ["ask", "-s", "--offline", "hi"]),
        (["--help"], ["--help"]),
        ([], []),
    ],
)
def test_global_options_are_hoisted(argv: list[str], expected: list[str]) -> None:
    assert prepare_argv(argv, ROOT) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pull", "smollm2"], "did you mean `termlm models pull`?"),
        (["list"], "did you mean `termlm models list`?"),
        (["run", "x"], "did you mean `termlm chat"),
        (["ask", "--temp", "0", "hi"], "did you mean --temperature or --template?"),
        (["classify", "--calib"], "did you mean --calibrate?"),
    ],
)
def test_habits_and_abbreviations_get_the_right_name(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match="did you mean") as info:
        prepare_argv(argv, ROOT)
    assert message in info.value.message


def test_the_real_command_line_accepts_options_after_the_command() -> None:
    run = subprocess.run([sys.executable, "-m", "termlm", "config", "show", "--offline"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "offline: true" in run.stdout
    habit = subprocess.run([sys.executable, "-m", "termlm", "pull", "x"], capture_output=True,
                           text=True, timeout=60)
    assert habit.returncode == 2
    assert habit.stderr.strip() == ("termlm: error: no command 'pull'; did you mean "
                                    "`termlm models pull`?")
