"""The code stays ruff- and mypy --strict-clean, and README examples stay true."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed; install the test extras: pip install -e '.[test]'")
    return found


def test_ruff_clean() -> None:
    proc = subprocess.run([_tool("ruff"), "check", "termlm", "tests", "scripts"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_clean() -> None:
    proc = subprocess.run([_tool("mypy"), "--no-error-summary"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _readme_commands() -> list[list[str]]:
    """Every `termlm ...` invocation inside the README's sh code blocks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for segment in re.split(r"\|(?!\|)|&&|;", line):
                words = shlex.split(segment, comments=True)
                for i, word in enumerate(words):
                    if word.endswith("termlm") and not word.endswith(".venv/bin/pip"):
                        args = [w for w in words[i + 1 :] if w not in (">", "review.md")]
                        commands.append(args)
                        break
    return commands


def test_readme_has_examples() -> None:
    assert len(_readme_commands()) > 20


def _rest(ctx: typer.Context) -> list[str]:
    protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
    return [*protected, *ctx.args]


@pytest.mark.parametrize("args", _readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_examples_parse(args: list[str]) -> None:
    """Each README example names real commands and options (run for real elsewhere)."""
    from termlm.cli import app
    from termlm.cli.argv import prepare_argv

    command = typer.main.get_command(app)
    ctx = command.make_context("termlm", prepare_argv(list(args), command),
                               resilient_parsing=False)
    sub_args = _rest(ctx)
    while sub_args and hasattr(command, "get_command"):
        name = sub_args[0]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"README uses unknown command {name!r} in {args}"
        ctx = sub.make_context(name, sub_args[1:], parent=ctx, resilient_parsing=False)
        command = sub
        sub_args = (_rest(ctx)) if hasattr(sub, "get_command") else []


def _leaf_commands() -> list[tuple[str, object]]:
    from termlm.cli import app

    root = typer.main.get_command(app)
    found: list[tuple[str, object]] = []

    def walk(prefix: str, command: object) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            found.append((prefix, command))

    walk("", root)
    return found


@pytest.mark.parametrize(("name", "command"), _leaf_commands(), ids=lambda x: str(x)[:30])
def test_every_command_help_has_an_example(name: str, command: object) -> None:
    from typer.testing import CliRunner

    from termlm.cli import app

    result = CliRunner().invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"termlm {name} --help has no example"


def test_wheel_ships_prompts_and_catalog(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import zipfile

    (wheel,) = tmp_path.glob("termlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (ROOT / "prompts").glob("*.yaml")}
    assert shipped and {f"termlm/_prompts/{n}" for n in shipped} <= names
    assert "termlm/models/catalog.yaml" in names


def test_readme_has_no_stray_editing_notes() -> None:
    """An HTML comment in the README opens and closes on one line (the translate markers);
    a "-->" alone is the tail of a broken comment, shown to every reader."""
    for number, line in enumerate((ROOT / "README.md").read_text(encoding="utf-8")
                                  .splitlines(), 1):
        assert line.count("-->") == line.count("<!--"), f"README line {number}: {line}"
