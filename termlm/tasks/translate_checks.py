"""What a translated segment must not do, and how each failure is told.

A reply fails when it

- loses a URL, inline code, placeholder or number of its source, or a kept span;
- adds a URL, placeholder or number that is not in its source;
- is in another language than the target (or is its source, left untranslated);
- talks about the text instead of translating it ("I'm ready to assist you...");
- is far longer or far shorter than its source.

Numbers are compared by value, so that a translation may write them its own way
(German 1.000,5 for 1,000.5, 3,11 for 3.11, French 1 000), and are quoted as
written. :class:`Checks` gives a :class:`Verdict` for one reply.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from termlm.segment import url_end
from termlm.tasks.langid import Identifier
from termlm.tasks.languages import LETTER, Language, name_of

_TOKENS = re.compile(
    r"(?P<url>(?:https?|ftp)://[^\s<>`\"']+)"
    r"|(?P<code>`[^`\n]+`)"
    r"|(?P<ph>\{\{\s*[\w.]+\s*\}\}|\{[A-Za-z0-9_.\[\]-]*\}"
    # printf: not after a digit (50%) nor before a letter (German 100%ige)
    r"|(?<!\d)%(?:\([A-Za-z_]\w*\))?[-+#0]*\d*(?:\.\d+)?[sdifxXeEgGcr](?![A-Za-z])"
    r"|%\d+\$[sd]|\$\{[A-Za-z_]\w*\}|\$[A-Za-z_]\w*)"
    # a number with its sign (not inside a word: UTF-8 has no -8), its decimal and
    # thousands separators (a plain space only before three digits: 1 000) and exponent
    r"|(?P<num>(?:(?<!\w)[-+\u2212])?\d+(?:[.,'\u00a0\u202f\u2009]\d+| \d{3}(?!\d))*"
    r"(?:[eE][-+]?\d+(?!\w))?)"
)
_SEPARATOR = re.compile(r"[.,'\u00a0\u202f\u2009 ]")
_EXPONENT = re.compile(r"[eE]([-+]?\d+)$")


@dataclass(frozen=True)
class Token:
    kind: str  # url, code, ph or num
    written: str  # as the text has it: what messages quote
    values: frozenset[str]  # what it may stand for; tokens match when these meet


def tokens(text: str) -> list[Token]:
    """The URLs, inline code, placeholders and numbers of ``text``, in order."""
    found: list[Token] = []
    for match in _TOKENS.finditer(text):
        kind, written = match.lastgroup or "", match.group()
        if kind == "num":
            found += [Token(kind, written, frozenset(f"num:{v}" for v in values))
                      for values in number_values(written)]
        else:
            written = url_end(written) if kind == "url" else written
            found.append(Token(kind, written, frozenset({f"{kind}:{written}"})))
    return found


def number_values(written: str) -> list[set[str]]:
    """The values a written number may mean, normalised: ``1,000`` is {1000, 1} (English
    thousands or a German decimal), ``1.000,5`` is {1000.5}, ``3,11`` is {3.11}, ``-5`` is
    {-5}, ``2.5e3`` is {2500}. A run that is no one number (a version 3.11.2, a date
    05.01.2024) is its parts, one set each."""
    sign = "-" if written[0] in "-\u2212" else ""
    body = written.lstrip("+-\u2212")
    exponent = _EXPONENT.search(body)
    power = exponent.group(1) if exponent else ""
    if exponent:
        body = body[: exponent.start()]
    parts, seps = _SEPARATOR.split(body), _SEPARATOR.findall(body)
    readings: set[str] = set() if seps else {parts[0]}
    grouped = len(parts[0]) <= 3 and all(len(p) == 3 for p in parts[1:-1])
    if seps and seps[-1] in ".," and seps.count(seps[-1]) == 1 \
            and (len(seps) == 1 or (grouped and len(set(seps[:-1])) == 1)):
        readings.add("".join(parts[:-1]) + "." + parts[-1])  # the last one is a decimal point
    if seps and len(set(seps)) == 1 and grouped and len(parts[-1]) == 3:
        readings.add("".join(parts))  # thousands separators only
    if not readings:
        return [{_canonical((sign if i == 0 else "") + p)} for i, p in enumerate(parts)]
    return [{_canonical(sign + r, power) for r in readings}]


def _canonical(number: str, power: str = "") -> str:
    try:
        value = Decimal(number + (f"e{power}" if power else ""))
    except InvalidOperation:  # pragma: no cover - the pattern only gives digits
        return number
    if abs(value.adjusted()) > 40:
        return str(value.normalize())
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def _unmatched(a: list[Token], b: list[Token]) -> tuple[list[Token], list[Token]]:
    """The tokens of ``a`` and of ``b`` left over by the largest pairing of tokens that
    can stand for the same thing (a maximum bipartite matching)."""
    same = Counter(t.values for t in a) & Counter(t.values for t in b)
    rest_a: list[Token] = []
    rest_b: list[Token] = []
    for tokens_, rest in ((a, rest_a), (b, rest_b)):
        left = Counter(same)
        for t in tokens_:
            if left[t.values] > 0:
                left[t.values] -= 1
            else:
                rest.append(t)
    owner: dict[int, int] = {}  # index in rest_b -> index in rest_a

    def place(i: int, seen: set[int]) -> bool:
        for j, token in enumerate(rest_b):
            if j not in seen and rest_a[i].values & token.values:
                seen.add(j)
                if j not in owner or place(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    placed = {i for i in range(len(rest_a)) if place(i, set())}
    return ([t for i, t in enumerate(rest_a) if i not in placed],
            [t for j, t in enumerate(rest_b) if j not in owner])


def protected(text: str) -> Counter[str]:
    """The URLs, inline code, placeholders and numbers of ``text``, as written."""
    return Counter(t.written for t in tokens(text))


def missing(source: str, reply: str, kept: Sequence[str] = ()) -> list[str]:
    """What of ``source`` the reply lost: protected tokens, and kept spans."""
    lost = [t.written for t in _unmatched(tokens(source), tokens(reply))[0]]
    lost += [span for span in kept if reply.count(span) < source.count(span)]
    return list(dict.fromkeys(lost))


def added(source: str, reply: str) -> list[str]:
    """The URLs, placeholders and numbers of the reply that its source does not have
    (inline code is not counted: a translation may quote a term as code)."""
    extra = _unmatched(tokens(source), tokens(reply))[1]
    return list(dict.fromkeys(t.written for t in extra if t.kind != "code"))


# -- talk instead of a translation ---------------------------------------------------

# A small model asked to translate sometimes answers, or talks about the task, in
# English. These phrases are that talk; a reply that has one its source has not fails.
# They are English, so they are only looked for when the target is not English (a
# translation into English may well say "how can I help?").
_ASSISTANT = re.compile(
    r"\b(?:i am|i['\u2019]m) (?:ready|here|happy|glad) to (?:help|assist)"
    r"|\b(?:i['\u2019]d|i would) be (?:happy|glad) to (?:help|assist|translate)"
    r"|\bhow (?:can|may) i (?:help|assist)"
    r"|\bplease provide (?:the|a|your|some) (?:text|sentence|content|passage)"
    r"|\bas an ai\b"
    r"|\bi (?:cannot|can['\u2019]t|can not|am unable to|'m unable to) translate\b"
    r"|\bthe (?:text|sentence) you (?:provided|gave)\b",
    re.IGNORECASE)
# Talk about the translation itself, in any target: "Here is the translation:".
_META = re.compile(
    r"\bhere(?: is|['\u2019]s) (?:the|your|my|a) (?:translation|translated)"
    r"|^\W*(?:translation|translated text|übersetzung|traduction|traducción)\s*:"
    r"|\b(?:voici|voilà) (?:la|une|ma) traduction\b"
    r"|\bhier ist (?:die|eine|meine) übersetzung\b"
    r"|\baquí (?:está|tienes) (?:la|una|mi) traducción\b",
    re.IGNORECASE)


def talk(source: str, reply: str, target: Language) -> str | None:
    """The phrase by which the reply answers or comments instead of translating."""
    patterns = [_META] if target.base == "en" else [_META, _ASSISTANT]
    for pattern in patterns:
        found = pattern.search(reply)
        if found and not pattern.search(source):
            return f"answers instead of translating ({found.group().strip()!r})"
    return None


# -- length --------------------------------------------------------------------------

def weight(text: str) -> int:
    """Length in characters, spaces collapsed, where one Chinese character counts 3 and
    one kana or Hangul syllable 2: about as many Latin letters as they say."""
    total = 0
    for ch in " ".join(text.split()):
        code = ord(ch)
        if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF:
            total += 3
        elif 0x3040 <= code <= 0x30FF or 0xAC00 <= code <= 0xD7AF:
            total += 2
        else:
            total += 1
    return total


# Translations of short sentences between English, German, French, Spanish, Italian,
# Portuguese and Dutch measured 0.61 to 1.64 times their source's length (longer
# texts vary less). The bounds leave room on both sides, and the slack keeps a
# heading ("Help" -> "Hilfe und Unterstützung") from failing; what they catch is a
# reply that explains a word in a sentence, or drops half of a paragraph.
LONGEST, LONG_SLACK = 2.0, 20
SHORTEST, SHORT_SLACK = 0.5, 10


def length(source: str, reply: str) -> str | None:
    """Why the reply's length is not a translation's."""
    s, r = weight(source), weight(reply)
    if r > LONGEST * s + LONG_SLACK:
        return f"is {r / max(s, 1):.1f} times as long as the source"
    if r < SHORTEST * s - SHORT_SLACK:
        return f"is only {r / s:.0%} of the source's length"
    return None


# -- language ------------------------------------------------------------------------

# fastText's small model, on fragments of short sentences in 7 languages (520 of them
# with 15 letters or more), named no wrong language with a score of 0.5 or more from
# 15 letters on; below that, single words (Jede -> Danish, Tu -> French) go wrong. A
# false alarm costs a good translation, so the check waits for twice that: 30 letters
# of prose (about five words), a score of 0.5 for another language, and under 0.1
# for the target's own.
MIN_LETTERS = 30
CONFIDENT = 0.5
TARGET_FLOOR = 0.1
# Languages the model tells apart less well than a translator would: a reply in one
# counts as being in the others.
_KIN = [{"no", "nb", "nn", "da"}, {"hr", "sr", "bs", "sh"}, {"bg", "mk"}, {"id", "ms"},
        {"pt", "gl"}, {"nl", "af", "li", "vls"}, {"de", "lb", "als", "bar", "nds"},
        {"zh", "wuu", "yue"}, {"es", "an", "ast"}, {"ca", "oc"}, {"fa", "azb"},
        {"it", "vec", "lmo", "nap", "scn", "pms"}]
_MARKUP = re.compile(r"<[^<>\n]*>|[*_#>\[\]()|~`=^]")


def kin(code: str) -> set[str]:
    return next((group for group in _KIN if code in group), {code})


def prose(text: str) -> str:
    """The words of ``text``: without URLs, code, placeholders, numbers and markup."""
    return " ".join(_MARKUP.sub(" ", _TOKENS.sub(" ", text)).split())


def wrong_language(source: str, reply: str, target: Language,
                   identifier: Identifier | None) -> str | None:
    """Why the reply is not in the target language, when that is clear."""
    if identifier is None or not identifier.supports(target.base):
        return None
    words = prose(reply)
    if len(LETTER.findall(words)) < MIN_LETTERS:
        return None  # a name, a term, a number: too short to tell
    guesses = identifier.guess(words)
    if not guesses:
        return None
    family = kin(target.base)
    top, score = guesses[0]
    if top in family or score < CONFIDENT or \
            sum(s for code, s in guesses if code in family) >= TARGET_FLOOR:
        return None
    if " ".join(source.lower().split()) == " ".join(reply.lower().split()):
        return f"was left in {name_of(top)}"
    return f"is in {name_of(top)}, not {target.name}"


# -- all of it -----------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What is wrong with one reply (nothing, when ``ok``)."""

    lost: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    other: tuple[str, ...] = ()  # language, talk, length: each a phrase

    @property
    def ok(self) -> bool:
        return not (self.lost or self.added or self.other)

    def phrases(self) -> list[str]:
        """``lost '42'``, ``is in English, not German``: to follow "the reply"."""
        out = [f"{verb} {_quoted(items)}" for verb, items in
               (("lost", self.lost), ("added", self.added)) if items]
        return out + list(self.other)


def _quoted(items: Sequence[str]) -> str:
    shown = ", ".join(repr(x) for x in items[:5])
    return shown + (f" and {len(items) - 5} more" if len(items) > 5 else "")


@dataclass(frozen=True)
class Checks:
    target: Language
    identifier: Identifier | None = None

    def verdict(self, source: str, reply: str, kept: Sequence[str] = ()) -> Verdict:
        other = [problem for problem in (
            talk(source, reply, self.target),
            wrong_language(source, reply, self.target, self.identifier),
            length(source, reply)) if problem]
        return Verdict(tuple(missing(source, reply, kept)), tuple(added(source, reply)),
                       tuple(other))
