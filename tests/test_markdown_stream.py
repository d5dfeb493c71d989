"""Live Markdown renders each line of a reply once (issue 12, item 1)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from termlm.engine.types import Delta
from termlm.markdown_stream import MarkdownView, split_finished


def test_blocks_end_at_blank_lines_once_the_next_has_begun() -> None:
    assert split_finished("one\n\ntwo") == (["one"], "two")
    assert split_finished("one\n\n") == ([], "one\n\n")  # nothing after it yet
    assert split_finished("one\n\ntwo\n\nthr") == (["one", "two"], "thr")


def test_a_fenced_block_is_never_split_at_its_blank_lines() -> None:
    text = "intro\n\n```\na\n\nb\n```\nafter"
    assert split_finished(text) == (["intro", "```\na\n\nb\n```"], "after")
    open_fence = "```py\nx = 1\n\n\ny = 2\n"
    assert split_finished(open_fence) == ([], open_fence)


def test_an_indented_continuation_stays_with_its_block() -> None:
    text = "1. item\n\n   more of the item\n\nnext"
    assert split_finished(text) == (["1. item\n\n   more of the item"], "next")


def test_the_partial_last_line_never_ends_a_block() -> None:
    assert split_finished("```\ncode\n```") == ([], "```\ncode\n```")  # maybe ````` yet
    assert split_finished("para\n\n ") == ([], "para\n\n ")  # maybe an indented part


class _FakeLive:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.tallest = 0
        self.shown: list[str] = []

    def update(self, renderable: Any, refresh: bool = False) -> None:
        self.shown = ["".join(s.text for s in line).rstrip() for line in renderable.lines]
        self.tallest = max(self.tallest, len(self.shown))


def _long_reply() -> str:
    parts = ["# A long answer", ""]
    parts += [f"Paragraph {i} has a few words in it." for i in range(1, 25)]
    text = "\n\n".join(parts) + "\n\n```python\n"
    text += "".join(f"print('code {i}')\n" for i in range(1, 41)) + "```\n\n"
    text += "".join(f"- point {i}\n" for i in range(1, 16)) + "\nThe end."
    return text


def _feed_all(text: str, height: int) -> tuple[list[str], _FakeLive]:
    console = Console(file=io.StringIO(), width=70, height=height, color_system=None)
    live = _FakeLive(console)
    view = MarkdownView(console, live)  # type: ignore[arg-type]
    for i in range(0, len(text), 3):
        view.text += text[i:i + 3]
        view._show(final=False)  # every piece, not throttled: the worst case
    view.finish()
    printed = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    return [line.rstrip() for line in printed] + live.shown, live


def test_each_line_reaches_the_screen_once_and_the_live_part_fits() -> None:
    text = _long_reply()
    lines, live = _feed_all(text, height=20)
    words = [w for w in lines if w.strip()]
    for i in range(1, 25):
        assert sum(f"Paragraph {i} has" in w for w in words) == 1
    for i in range(1, 41):
        assert sum(f"print('code {i}')" in w for w in words) == 1
    for i in range(1, 16):
        assert sum(w.endswith(f"point {i}") for w in words) == 1
    assert sum("The end." in w for w in words) == 1
    assert live.tallest <= 18  # never taller than the terminal: nothing to redraw off-screen
    assert live.shown == []  # at the end everything is printed for good


def test_a_short_reply_renders_as_markdown() -> None:
    lines, _ = _feed_all("Some **bold** words.\n\n- a\n- b", height=40)
    assert [line for line in lines if line.strip()] == ["Some bold words.", " • a", " • b"]


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from termlm.engine.types import Delta
    from termlm.render import stream_markdown
    text = open({text!r}, encoding="utf-8").read()
    def events():
        for i in range(0, len(text), 4):
            yield Delta(text[i:i + 4])
            time.sleep(0.002)
    stream_markdown(events())
    sys.stderr.write("RENDER-DONE\\n")
    time.sleep(60)
""")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (a real terminal)")
def test_in_a_real_terminal_the_scrollback_holds_each_line_once(tmp_path: Path) -> None:
    reply = tmp_path / "reply.md"
    reply.write_text(_long_reply(), encoding="utf-8")
    script = tmp_path / "show.py"
    root = str(Path(__file__).resolve().parents[1])
    script.write_text(SCRIPT.format(root=root, text=str(reply)), encoding="utf-8")
    name = f"termlm-md-{time.monotonic_ns()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "80", "-y", "24",
                    f"{sys.executable} {script}"], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-t", name, "-p", "-S", "-",
                                     "-E", "-"], capture_output=True, text=True).stdout
            if "RENDER-DONE" in screen:
                break
            time.sleep(0.2)
        assert "RENDER-DONE" in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    for i in range(1, 25):
        assert sum(f"Paragraph {i} has" in line for line in lines) == 1, i
    for i in range(1, 41):
        assert sum(f"print('code {i}')" in line for line in lines) == 1, i
    assert sum("The end." in line for line in lines) == 1
    # 24 paragraphs + heading + 40 code lines + 15 points + the end + the marker, and the
    # blank lines between them: nothing like one copy per redraw
    assert len(screen.rstrip().splitlines()) < 200


def test_interrupting_keeps_what_came(monkeypatch: pytest.MonkeyPatch) -> None:
    from termlm.render import stream_markdown

    def events() -> Iterator[Delta]:
        yield Delta("partial answer")
        raise KeyboardInterrupt

    console = Console(file=io.StringIO(), width=60, color_system=None)
    result = stream_markdown(events(), console=console)
    assert result.interrupted and result.text == "partial answer"
    assert "partial answer" in console.file.getvalue()  # type: ignore[attr-defined]
