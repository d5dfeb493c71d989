"""`termlm translate` on the FakeEngine: what is kept, what is translated, files, cache,
checks, and every way a file can fail."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from termlm.cli.translate_cmd import output_path
from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest, Completion
from termlm.prompts import load_template
from termlm.segment import segment
from termlm.tasks import langid
from termlm.tasks.translate import MARK, Spec, Translator, language

from .conftest import Cli
from .test_segment import any_text, markdownish

DOC = """\
---
title: Release notes
url: https://example.com/keep
---
# Getting started

Install it with `pip install termlm` and read [the guide](https://example.com/guide).
See https://example.com/faq for answers.

```sh
termlm ask "hello"   # not prose
```

~~~
tilde fence
~~~

| Option | Meaning |
|--------|:-------:|
| `-o` | output directory |

<p align="center">Made with care</p>
"""


class Translating(FakeEngine):
    """Replies with the user's text transformed (unless replies are queued)."""

    def __init__(self, how: Callable[[str], str] = lambda t: "FR " + t, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.how = how

    def _reply_for(self, request: ChatRequest) -> str:
        if self.replies:
            return self.replies.popleft()
        return self.how(request.messages[-1].content)

    def chats(self) -> list[ChatRequest]:
        return [r for r in self.requests if isinstance(r, ChatRequest)]


class NoLanguages:
    """A language identifier that knows none, so the language check is skipped."""

    def supports(self, code: str) -> bool:
        return False

    def guess(self, text: str) -> list[tuple[str, float]]:
        return []


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))
    # The fake models here "translate" by tagging or upper-casing English, which the real
    # identifier rightly calls English: these tests are about layout, files and the cache.
    # The language check has its own tests (test_translate_checks.py).
    monkeypatch.setattr(langid, "_SHARED", NoLanguages())


def write(name: str, data: str | bytes) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return name


def block(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i : text.index(end, i) + len(end)]


# -- what is kept ------------------------------------------------------------------

def test_kept_parts_pass_through_a_model_that_upper_cases_everything() -> None:
    engine = Translating(str.upper)
    result = Cli(engine)("translate", "--to", "fr", write("doc.md", DOC))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for kept in (block(DOC, "---", "---\n#"), block(DOC, "```sh", "```\n\n"),
                 block(DOC, "~~~", "~~~\n\n"), "`pip install termlm`",
                 "](https://example.com/guide)", "https://example.com/faq",
                 "|--------|:-------:|", "| `-o` |", '<p align="center">', "</p>"):
        assert kept in out, kept
    assert "# GETTING STARTED\n" in out
    assert "| OPTION | MEANING |" in out and "| OUTPUT DIRECTORY |" in out
    assert "MADE WITH CARE" in out and "INSTALL IT WITH" in out and "FOR ANSWERS" in out
    assert out.count("\n") == DOC.count("\n")
    # the kept parts could not survive the upper-casing, so the prose around them was
    # translated on its own, with a warning naming what the whole reply lost
    assert "warning: doc.md: segment 2 (line 7)" in result.stderr


def test_a_well_behaved_model_gets_one_request_per_segment_and_no_warning() -> None:
    engine = Translating()
    result = Cli(engine)("translate", "--to", "French", write("doc.md", DOC))
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr
    # heading, paragraph, 2 header cells, 1 body cell, the HTML line
    assert len(engine.chats()) == 6
    assert "FR Install it with `pip install termlm` and read [the guide](https://" in \
        result.stdout
    assert "| `-o` | FR output directory |" in result.stdout
    system = engine.chats()[0].messages[0].content
    assert "into French" in system and "from its language" in system


def test_the_previous_segment_is_passed_as_context() -> None:
    engine = Translating()
    Cli(engine)("translate", "--to", "de", "--from", "en", write("a.txt", "One.\n\nTwo.\n"))
    first, second = engine.chats()
    assert [m.role for m in first.messages] == ["system", "user"]
    assert [(m.role, m.content) for m in second.messages[1:]] == [
        ("user", "One."), ("assistant", "FR One."), ("user", "Two.")]
    assert "from English into German" in second.messages[0].content


def translator(engine: FakeEngine, to: str = "fr") -> Translator:
    template = load_template("translate")
    spec = Spec(target=language(to), source=None, template=template,
                sampling=template.sampling(), model_id="fake")
    return Translator(engine, spec)


MODES = st.sampled_from(["markdown", "text", "lines"])


@settings(max_examples=150, deadline=None)
@given(any_text, MODES)
def test_a_model_that_copies_its_input_gives_the_document_back(doc: str, mode: str) -> None:
    result = translator(Translating(lambda t: t)).document(doc, mode)  # type: ignore[arg-type]
    assert result.text == doc
    assert result.warnings == []


@settings(max_examples=150, deadline=None)
@given(markdownish, MODES)
def test_kept_segments_survive_a_hostile_model_byte_for_byte(doc: str, mode: str) -> None:
    result = translator(Translating(str.upper)).document(doc, mode)  # type: ignore[arg-type]
    # a unit whose placeholders the upper-casing broke keeps its source text, marked
    out = result.text
    for mark in MARK.values():
        out = out.replace(mark, "")
    assert len(out) == len(doc)
    assert (result.left > 0) == any(m in result.text for m in MARK.values())
    pos = 0
    for seg in segment(doc, mode):  # type: ignore[arg-type]
        end = pos + len(seg.text)
        assert out[pos:end] in ((seg.text.upper(), seg.text) if seg.translatable
                                else (seg.text,)), seg
        pos = end


def test_unclosed_code_fence_is_kept_to_the_end() -> None:
    doc = "Intro.\n\n```python\ndef f():\n    return 'text'\n\nMore code words\n"
    engine = Translating(str.upper)
    result = Cli(engine)("translate", "--to", "fr", write("a.md", doc))
    assert result.stdout == "INTRO.\n\n```python\ndef f():\n    return 'text'\n\nMore code words\n"


def test_table_layout_is_kept_even_when_a_reply_has_a_pipe() -> None:
    doc = "| a b | c d |\n|:--|--:|\n| e f | 42 |\n"
    engine = Translating(lambda t: t.replace(" ", " | "))
    result = Cli(engine)("translate", "--to", "fr", write("t.md", doc))
    assert result.stdout == "| a \\| b | c \\| d |\n|:--|--:|\n| e \\| f | 42 |\n"


def test_crlf_and_bom_are_kept() -> None:
    data = b"\xef\xbb\xbfHello there.\r\nSecond line.\r\n\r\nNext.\r\n"
    write("a.txt", data)
    result = Cli(Translating())("translate", "--to", "fr", "a.txt", "-o", "out")
    assert result.exit_code == 0, result.stderr
    assert Path("out/a.fr.txt").read_bytes() == (
        b"\xef\xbb\xbfFR Hello there.\r\nSecond line.\r\n\r\nFR Next.\r\n")


def test_reply_lines_are_mapped_onto_the_paragraph_lines() -> None:
    engine = Translating(lambda t: "Un\ndeux\ntrois\n\nand then the model rambles on")
    result = Cli(engine)("translate", "--to", "fr", write("a.md", "> one\n> two\n"))
    assert result.stdout == "> Un\n> deux\n> trois\n"


def test_wrapping_quotes_and_fences_are_removed_and_empty_replies_keep_the_source() -> None:
    engine = Translating()
    engine.replies.extend(['"Bonjour."', "```\nAu revoir.\n```", "", ""])
    result = Cli(engine)("translate", "--to", "fr",
                         write("a.txt", "Hello.\n\nGoodbye.\n\nKeep me.\n"))
    assert result.stdout == "Bonjour.\n\nAu revoir.\n\n[termlm: untranslated] Keep me.\n"
    assert "segment 3 (line 5): the reply was empty (retried once); kept the source text, " \
        "marked untranslated" in result.stderr


# -- line mode and long lines ---------------------------------------------------------

def test_line_mode_keeps_the_line_count() -> None:
    text = "first line\n\nthird line\n   \nfifth line"
    engine = Translating(lambda t: f"FR\n{t}\nmore")
    result = Cli(engine)("translate", "--to", "fr", "--line-mode", write("a.txt", text))
    assert result.exit_code == 0
    assert result.stdout.split("\n") == ["FR first line more", "", "FR third line more",
                                         "   ", "FR fifth line more"]
    assert len(engine.chats()) == 3


def test_a_line_longer_than_the_context_is_split_and_nothing_is_dropped() -> None:
    words = [f"w{i}." if i % 9 == 8 else f"w{i}" for i in range(400)]
    line = " ".join(words)
    engine = Translating(lambda t: "fr: " + t, n_ctx=160)
    result = Cli(engine)("translate", "--to", "fr", write("long.txt", line + "\n"))
    assert result.exit_code == 0, result.stderr
    assert len(engine.chats()) > 3
    for request in engine.chats():  # each fits, with room for a reply twice as long
        source = engine.count_tokens(request.messages[-1].content)
        assert engine.count_prompt_tokens(request.messages) + 2 * source + 16 <= 160
    out = result.stdout
    assert out.replace("fr: ", "").split() == words
    assert out.endswith("\n")


def test_a_paragraph_too_long_for_the_context_is_packed_into_runs_of_lines() -> None:
    lines = [f"line {i} has five words" for i in range(40)]
    engine = Translating(lambda t: "FR " + t, n_ctx=160)
    result = Cli(engine)("translate", "--to", "fr", write("p.md", "\n".join(lines) + "\n"))
    assert result.exit_code == 0, result.stderr
    assert 1 < len(engine.chats()) < 20  # several lines per request
    out = result.stdout.split("\n")
    assert len(out) == 41 and out[-1] == ""  # reply lines map back onto the lines
    assert [line.removeprefix("FR ") for line in out[:-1]] == lines  # nothing dropped


def test_a_context_too_small_for_the_prompt_is_an_error() -> None:
    result = Cli(Translating(n_ctx=20))("translate", "--to", "fr", write("a.txt", "Hi.\n"))
    assert result.exit_code == 1
    assert "too small" in result.stderr


# -- glossary, cache ------------------------------------------------------------------

def test_glossary_reaches_the_prompt_for_segments_that_use_the_terms() -> None:
    write("g.yaml", "pull request: demande de fusion\nno: non\nbranch: branche\n")
    engine = Translating()
    result = Cli(engine)("translate", "--to", "fr", "--glossary", "g.yaml",
                         write("a.txt", "Open a Pull Request.\n\nNothing here.\n"))
    assert result.exit_code == 0, result.stderr
    first, second = (r.messages[0].content for r in engine.chats())
    assert "- pull request: demande de fusion" in first and "branche" not in first
    assert "- no: non" in second  # "Nothing" contains "no"; YAML "no" stays text
    assert "demande de fusion" not in second


@pytest.mark.parametrize("content", ["- a\n- b\n", "a: [1, 2]\n", "a: ''\n", "a: [\n"])
def test_a_bad_glossary_is_an_error(content: str) -> None:
    write("g.yaml", content)
    result = Cli(Translating())("translate", "--to", "fr", "--glossary", "g.yaml",
                                write("a.txt", "x\n"))
    assert result.exit_code == 1
    assert "glossary" in result.stderr


def test_rerun_after_editing_one_paragraph_translates_only_that_paragraph() -> None:
    paras = [f"Paragraph number {i} says something." for i in range(5)]
    write("a.md", "\n\n".join(paras) + "\n")
    engine = Translating()
    cli = Cli(engine)
    assert cli("translate", "--to", "fr", "a.md", "-o", "out").exit_code == 0
    assert len(engine.chats()) == 5
    first = Path("out/a.fr.md").read_text()
    engine.requests.clear()
    assert cli("translate", "--to", "fr", "a.md", "-o", "out").exit_code == 0
    assert engine.chats() == []
    assert Path("out/a.fr.md").read_text() == first
    paras[2] = "Paragraph two was edited."
    write("a.md", "\n\n".join(paras) + "\n")
    result = cli("translate", "--to", "fr", "a.md", "-o", "out")
    assert [r.messages[-1].content for r in engine.chats()] == ["Paragraph two was edited."]
    assert "a.md -> out/a.fr.md: 5 segments translated (4 cached), 0 retried, " \
        "0 left as source" in result.stderr
    engine.requests.clear()
    cli("translate", "--to", "de", "a.md", "-o", "out")  # another language: no cache hits
    assert len(engine.chats()) == 5
    engine.requests.clear()
    cli("translate", "--to", "fr", "a.md", "--no-cache")
    assert len(engine.chats()) == 5


# -- the preservation check -------------------------------------------------------------

SOURCE = "Send {name} 42 files from $HOME with %s now.\n"


def test_a_reply_that_loses_a_number_is_retried_with_the_number_named() -> None:
    engine = Translating()
    engine.replies.extend(["Envoyez {name} fichiers de $HOME avec %s.",
                           "Envoyez {name} 42 fichiers de $HOME avec %s."])
    result = Cli(engine)("translate", "--to", "fr", write("a.txt", SOURCE))
    assert result.exit_code == 0
    assert result.stdout == "Envoyez {name} 42 fichiers de $HOME avec %s.\n"
    assert "warning" not in result.stderr
    retry = engine.chats()[1].messages[0].content
    assert "Copy these exactly as written: 42" in retry


def test_a_reply_that_fails_twice_keeps_the_source_marked_with_one_warning() -> None:
    engine = Translating()
    engine.replies.extend(["Envoyez {nom} fichiers.", "Envoyez {nom} fichiers."])
    result = Cli(engine)("translate", "--to", "fr", write("a.txt", SOURCE))
    assert result.exit_code == 0
    assert result.stdout == "[termlm: untranslated] " + SOURCE
    assert result.stderr.count("warning") == 1
    assert "warning: a.txt: segment 1 (line 1): the reply lost '{name}', '42', '$HOME', " \
        "'%s' and added '{nom}' (retried once); kept the source text, marked untranslated" \
        in result.stderr
    assert "a.txt: 0 segments translated, 1 retried, 1 left as source" in result.stderr
    assert len(engine.chats()) == 2


def test_strict_makes_a_failed_segment_fail_its_file_only() -> None:
    write("good.txt", "All fine here.\n")
    write("bad.txt", SOURCE)
    engine = Translating(lambda t: t.replace("42", "quarante-deux"))
    result = Cli(engine)("translate", "--to", "fr", "--strict", "bad.txt", "good.txt",
                         "-o", "out")
    assert result.exit_code == 3
    assert "bad.txt: segment 1 (line 1): the reply lost '42' (retried once); not " \
        "translated (--strict)" in result.stderr
    assert not Path("out/bad.fr.txt").exists()
    assert Path("out/good.fr.txt").read_text() == "All fine here.\n"


# -- files and outputs --------------------------------------------------------------

def test_outputs_mirror_relative_paths_with_a_language_suffix() -> None:
    write("notes/a.md", "Hello.\n")
    write("notes/sub/b.txt", "World.\n")
    write("notes/README", "Hi.\n")
    result = Cli(Translating())("translate", "--to", "fr", "notes", "-o", "out")
    assert result.exit_code == 0, result.stderr
    assert Path("out/notes/a.fr.md").read_text() == "FR Hello.\n"
    assert Path("out/notes/sub/b.fr.txt").read_text() == "FR World.\n"
    assert Path("out/notes/README.fr").read_text() == "FR Hi.\n"
    assert "3 ok, 0 failed" in result.stderr
    assert not [p for p in Path("out").rglob("*") if p.name.startswith(".")]
    result = Cli(Translating())("translate", "--to", "fr", "notes/a.md", "--progress")
    assert "notes/a.md: 1/1 segments" in result.stderr


def test_files_under_the_output_dir_are_not_inputs_when_walking() -> None:
    write("docs/a.md", "Hello.\n")
    write("docs/fr/docs/a.fr.md", "FR Hello.\n")  # the output of an earlier run
    engine = Translating()
    result = Cli(engine)("translate", "--to", "fr", "docs", "-o", "docs/fr")
    assert result.exit_code == 0, result.stderr
    assert [r.messages[-1].content for r in engine.chats()] == ["Hello."]


def test_a_cache_that_cannot_be_written_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_CACHE_DIR", write("not-a-dir", "x"))
    engine = Translating()
    for _ in range(2):
        result = Cli(engine)("translate", "--to", "fr", write("a.txt", "Hello.\n"))
        assert (result.exit_code, result.stdout) == (0, "FR Hello.\n")
    assert len(engine.chats()) == 2


def test_input_names_with_dotdot_or_absolute_paths_stay_inside_the_output_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write("outside/secret.md", "Secret.\n")
    Path("work").mkdir()
    monkeypatch.chdir("work")
    absolute = str(tmp_path / "outside" / "secret.md")
    result = Cli(Translating())("translate", "--to", "fr", "../outside/secret.md",
                                "-o", "out")
    assert result.exit_code == 0, result.stderr
    assert Path("out/outside/secret.fr.md").read_text() == "FR Secret.\n"
    result = Cli(Translating())("translate", "--to", "fr", "../../" * 5 + absolute[1:],
                                "-o", "out2")
    assert result.exit_code == 0, result.stderr
    written = [p for p in Path("out2").rglob("*") if p.is_file()]
    assert [p.name for p in written] == ["secret.fr.md"]
    every = {p.resolve() for p in tmp_path.rglob("*.fr.md")}
    cwd = Path.cwd().resolve()
    assert all(str(p).startswith(str(cwd)) for p in every)
    # the input itself is never overwritten, and two inputs never share an output
    assert output_path(Path("out"), "../../a.md", "fr") == Path("out/a.fr.md")
    assert output_path(Path("out"), "..", "fr") == "no file name in '..'"


def test_a_symlink_out_of_the_output_dir_is_refused(tmp_path: Path) -> None:
    write("a/b.md", "Hello.\n")
    Path("out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", "out/a")
    result = Cli(Translating())("translate", "--to", "fr", "a/b.md", "-o", "out")
    assert result.exit_code == 3
    assert "is outside out" in result.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_two_inputs_that_map_to_one_output_do_not_overwrite_each_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    write("w/a.md", "One.\n")
    write("a.md", "Two.\n")
    monkeypatch.chdir("w")
    result = Cli(Translating())("translate", "--to", "fr", "../a.md", "a.md", "-o", "out")
    assert result.exit_code == 3
    assert "would overwrite ../a.md" in result.stderr
    assert Path("out/a.fr.md").read_text() == "FR Two.\n"


def test_an_output_dir_that_cannot_be_written_is_an_error() -> None:
    write("a.md", "Hello.\n")
    write("blocker", "I am a file.\n")
    cli = Cli(Translating())
    result = cli("translate", "--to", "fr", "a.md", "-o", "blocker")
    assert result.exit_code == 1
    assert "cannot write to blocker: it is a file, not a directory" in result.stderr
    result = cli("translate", "--to", "fr", "a.md", "-o", "blocker/sub")
    assert result.exit_code == 1
    assert "cannot write to output directory blocker/sub" in result.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write to a read-only directory")
def test_a_read_only_output_dir_is_an_error() -> None:  # pragma: no cover - not as root
    write("a.md", "Hello.\n")
    Path("ro").mkdir()
    Path("ro").chmod(0o500)
    try:
        result = Cli(Translating())("translate", "--to", "fr", "a.md", "-o", "ro")
    finally:
        Path("ro").chmod(0o700)
    assert result.exit_code == 1
    assert "cannot write to output directory ro" in result.stderr


def test_empty_binary_and_invalid_utf8_files_fail_alone() -> None:
    write("docs/empty.md", b"")
    write("docs/bin.md", b"\x89PNG\x00\x00binary")
    write("docs/latin1.md", "caf\xe9\n".encode("latin-1"))
    write("docs/good.md", "Good.\n")
    write("docs/img.png", b"\x00\x01\x02")
    cli = Cli(Translating())
    result = cli("translate", "--to", "fr", "docs/empty.md", "docs/bin.md", "docs/latin1.md",
                 "docs/good.md", "-o", "out")
    assert result.exit_code == 3
    assert "docs/empty.md is empty: nothing to translate" in result.stderr
    assert "docs/bin.md looks like binary data, not text" in result.stderr
    assert "docs/latin1.md is not valid UTF-8 (byte 0xe9 on line 1)" in result.stderr
    assert "1 ok, 3 failed" in result.stderr
    assert [p.name for p in Path("out").rglob("*.md")] == ["good.fr.md"]
    # a binary file found by walking a directory is skipped, not an error
    result = cli("translate", "--to", "fr", "docs", "--glob", "*.png", "-o", "out")
    assert result.exit_code == 0
    assert "skipping docs/img.png: binary data, not text" in result.stderr


def test_stdin_goes_to_stdout_and_markdown_is_detected() -> None:
    cli = Cli(Translating(str.upper))
    result = cli("translate", "--to", "fr", input="# Title\n\n```\ncode\n```\n")
    assert result.stdout == "# TITLE\n\n```\ncode\n```\n"
    result = cli("translate", "--to", "fr", "-", input="plain words\n")
    assert result.stdout == "PLAIN WORDS\n"
    result = cli("translate", "--to", "fr", "--format", "text", input="# x\n```\ny\n")
    assert result.stdout == "# X\n```\nY\n"


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["a.md", "b.md"], None, "2 input files: give -o DIR"),
    (["-", "-o", "out"], "x\n", "stdin goes to stdout"),
    ([], "", "no input on stdin"),
    (["--to", ""], "x\n", "not a language"),
])
def test_usage_errors(args: list[str], stdin: str | None, message: str) -> None:
    write("a.md", "A.\n")
    write("b.md", "B.\n")
    result = Cli(Translating())("translate", "--to", "fr", *args, input=stdin)
    assert result.exit_code == 2
    assert message in result.stderr


def test_missing_input_file_is_an_error() -> None:
    result = Cli(Translating())("translate", "--to", "fr", "nope.md")
    assert result.exit_code == 1
    assert "no such file: nope.md" in result.stderr


def test_ctrl_c_keeps_finished_files_and_exits_130() -> None:
    class Interrupted(Translating):
        def complete(self, request: ChatRequest) -> Completion:
            if len(self.requests) >= 2:
                raise KeyboardInterrupt
            return super().complete(request)

    write("a.md", "One.\n\nTwo.\n")
    write("b.md", "Three.\n")
    result = Cli(Interrupted())("translate", "--to", "fr", "a.md", "b.md", "-o", "out")
    assert result.exit_code == 130
    assert "interrupted: 1 of 2 files done" in result.stderr
    assert Path("out/a.fr.md").read_text() == "FR One.\n\nFR Two.\n"
    assert sorted(p.name for p in Path("out").iterdir()) == ["a.fr.md"]  # no temp files


@pytest.mark.parametrize(("arg", "name", "code"), [
    ("fr", "French", "fr"), ("French", "French", "fr"), ("pt_br", "Portuguese (BR)", "pt-BR"),
    ("Klingon", "Klingon", "klingon"), ("Old  Norse", "Old Norse", "old-norse"),
])
def test_language_names_and_codes(arg: str, name: str, code: str) -> None:
    assert (language(arg).name, language(arg).code) == (name, code)
