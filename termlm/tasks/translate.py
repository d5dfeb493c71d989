"""Translate a document: segments -> units -> checked model replies -> the document again.

Each translation unit (a paragraph, heading, list item, table cell, or line)
is one request, with the unit before it as a prior exchange so that terms stay
consistent. A unit too long for the context is cut at sentence ends, then at
whitespace, then anywhere. Every reply is checked: numbers, URLs, inline code
and placeholders of the source must come back, and so must kept spans. A reply
that fails is retried once with the missing pieces named (a reply that merely
repeats the previous translation is retried without the prior exchange); then
it is a warning (or, with ``strict``, a :class:`TranslateError`). Replies that
pass are cached. ``Translator`` can run several stretches of a document side by
side (``termlm.chains``), each a chain of units with their prior exchanges.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from termlm.chains import Chain, run_chains, stretches
from termlm.engine.types import BatchingEngine, ChatRequest, Engine, Message, SamplingParams
from termlm.errors import InputError, TermlmError, UsageError
from termlm.prompts import Template
from termlm.segment import Mode, Segment, segment, split_long, url_end

_LANGUAGES = {
    "ar": "Arabic", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian",
    "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak",
    "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "th": "Thai", "tr": "Turkish",
    "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}
_LETTER = re.compile(r"[^\W\d_]")
_TOKENS = re.compile(
    r"(?P<url>(?:https?|ftp)://[^\s<>`\"']+)"
    r"|(?P<code>`[^`\n]+`)"
    r"|(?P<ph>\{[A-Za-z0-9_.\[\]-]*\}|%(?:\([A-Za-z_]\w*\))?[-+#0]*\d*(?:\.\d+)?[sdifxXeEgGcr]"
    r"|%\d+\$[sd]|\$\{[A-Za-z_]\w*\}|\$[A-Za-z_]\w*)"
    r"|(?P<num>\d+(?:[.,]\d+)*)"
)


class TranslateError(TermlmError):
    """A unit whose translation failed the checks, under --strict."""


@dataclass(frozen=True)
class Language:
    name: str  # what the prompt says: "French"
    code: str  # what file names get: "fr"


def language(arg: str) -> Language:
    """``fr``, ``French``, ``pt-BR`` or any other language name."""
    text = " ".join(arg.split())
    if not text or len(text) > 40 or not _LETTER.match(text) or not re.fullmatch(r"[\w ()-]+",
                                                                                 text):
        raise UsageError(f"not a language: {arg!r}", hint="for example --to fr or --to French")
    low = text.lower().replace("_", "-")
    code = re.fullmatch(r"([a-z]{2,3})(?:-([a-z0-9]{2,8}))?", low)
    if code and code.group(1) in _LANGUAGES:
        region = code.group(2)
        name = _LANGUAGES[code.group(1)] + (f" ({region.upper()})" if region else "")
        return Language(name, code.group(1) + (f"-{region.upper()}" if region else ""))
    for short, name in _LANGUAGES.items():
        if name.lower() == low:
            return Language(name, short)
    return Language(text, re.sub(r"[^a-z0-9]+", "-", low).strip("-"))


def load_glossary(path: Path) -> dict[str, str]:
    """YAML ``term: translation``. Every scalar is read as text (``no: non`` stays text)."""
    import yaml

    from termlm.inputs import read_input_bytes

    if not path.exists():
        raise InputError(f"{path}: no such glossary file")
    try:  # a regular file (or a named pipe, <(cmd)): a FIFO or a device never hangs
        data = yaml.load(read_input_bytes(path, pipes=True).decode("utf-8"),
                         Loader=yaml.BaseLoader)
    except InputError as exc:
        raise InputError(f"glossary: {exc.message}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read glossary {path}: {exc}") from None
    except yaml.YAMLError:
        raise InputError(f"glossary {path} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip()
                                             for v in data.values()):
        raise InputError(f"glossary {path} must map each term to its translation",
                         hint="one line per term, e.g.  pull request: demande de fusion")
    return {str(k).strip(): v.strip() for k, v in data.items() if str(k).strip()}


class Cache(Protocol):
    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...


class SqliteCache:
    """Checked translations by key, in one SQLite file; a broken cache is just a miss."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.broken = False

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None and not self.broken:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=10)
                self._db.execute("CREATE TABLE IF NOT EXISTS units "
                                 "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            except (OSError, sqlite3.Error):
                self.close()
                self.broken = True
        return self._db

    def get(self, key: str) -> str | None:
        db = self._conn()
        try:
            row = db.execute("SELECT value FROM units WHERE key = ?", (key,)).fetchone() \
                if db else None
        except sqlite3.Error:
            return None
        return str(row[0]) if row else None

    def put(self, key: str, value: str) -> None:
        db = self._conn()
        try:
            if db is not None:
                with db:
                    db.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (key, value))
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def protected(text: str) -> Counter[str]:
    """URLs, inline code, placeholders and numbers (digits only: 1,000 == 1.000) in text."""
    found: Counter[str] = Counter()
    for match in _TOKENS.finditer(text):
        kind, token = match.lastgroup, match.group()
        if kind == "url":
            token = url_end(token)
        elif kind == "num":
            token = re.sub(r"[.,]", "", token)
        found[token] += 1
    return found


def missing(source: str, reply: str, kept: Sequence[str] = ()) -> list[str]:
    """What of ``source`` the reply lost: protected tokens, and kept spans."""
    lost = list((protected(source) - protected(reply)).elements())
    lost += [span for span in kept if reply.count(span) < source.count(span)]
    return list(dict.fromkeys(lost))


def _clean(reply: str, source: str) -> str:
    """The reply without wrapping a small model likes to add: a code fence, quotes."""
    text = reply.strip()
    fence = re.fullmatch(r"```[^\n`]*\n(.*?)\n?```", text, re.DOTALL)
    if fence and not source.lstrip().startswith("```"):
        text = fence.group(1).strip()
    for left, right in ('""', "“”", "«»", "''"):
        if (len(text) > 1 and text[0] == left and text[-1] == right
                and not source.startswith(left)):
            text = text[1:-1].strip()
    return text


def _rebuild(unit: list[Segment], reply: str, markdown: bool) -> str:
    """The reply laid out like the unit: its newlines become the unit's breaks."""
    breaks = [s.text for s in unit if s.kind == "break"]
    lines = [line.strip() for line in reply.split("\n") if line.strip()]
    out = lines[0]
    for index, line in enumerate(lines[1:]):
        out += breaks[index] if index < len(breaks) else (breaks[-1] if breaks else " ")
        out += line
    source = "".join(s.text for s in unit)
    if markdown and "|" in out and "|" not in source:  # would split a table cell
        out = re.sub(r"(?<!\\)\|", r"\\|", out)
    return out


@dataclass(frozen=True)
class Spec:
    target: Language
    source: Language | None
    template: Template
    sampling: SamplingParams
    model_id: str
    glossary: dict[str, str] = field(default_factory=dict)
    strict: bool = False


@dataclass
class DocResult:
    text: str
    units: int = 0
    cached: int = 0
    warnings: list[str] = field(default_factory=list)


def units(segments: list[Segment]) -> Iterator[str | list[Segment]]:
    """Kept text as strings, and each translation unit as its list of segments."""
    group: list[Segment] = []
    for seg in segments:
        if group and (seg.unit != group[0].unit or seg.kind == "keep"):
            yield group
            group = []
        if seg.kind == "keep":
            yield seg.text
        else:
            group.append(seg)
    if group:
        yield group


@dataclass
class _Doc:
    """A document being translated: its pieces as they get done, and what went wrong."""

    out: list[str]
    markdown: bool
    result: DocResult = field(default_factory=lambda: DocResult(""))
    warnings: list[tuple[int, str]] = field(default_factory=list)  # (unit number, text)
    finished: int = 0

    def done(self) -> DocResult:
        self.result.warnings = [w for _n, w in sorted(self.warnings, key=lambda w: w[0])]
        self.result.text = "".join(self.out)
        return self.result


@dataclass
class _Thread:
    """One stretch of a document being translated: the exchange before the unit at hand."""

    doc: _Doc
    previous: tuple[str, str] | None = None
    unit: int = 0  # the unit's number in the document
    where: str = ""


class Translator:
    """Translates documents unit by unit; ``parallel`` stretches of a document at once.

    Each unit is sent with the unit before it (and its translation) as a prior
    exchange, so a stretch is a chain of dependent calls. With ``parallel`` > 1
    (default: the engine's slots) a document is cut into that many consecutive
    stretches of about equal length, translated side by side; only the first unit
    of each stretch goes without the exchange before it. ``plan`` gives a
    document's stretches as chains, so that a caller can run several documents'
    chains at once (``termlm.chains.run_groups``).
    """

    def __init__(self, engine: Engine, spec: Spec, cache: Cache | None = None,
                 parallel: int | None = None) -> None:
        self.engine = engine
        self.spec = spec
        self.cache = cache
        self.n_ctx = engine.info.n_ctx
        slots = engine.parallel if isinstance(engine, BatchingEngine) else 1
        self.parallel = max(1, parallel or slots)
        if not self._fits("x"):
            raise TermlmError(f"the context window of {self.n_ctx} tokens is too small for "
                              "the translation prompt", hint="raise --ctx")

    def document(self, text: str, mode: Mode,
                 progress: Callable[[int, int], None] | None = None) -> DocResult:
        """Translate ``text``; raises TranslateError on a failed unit when strict."""
        chains, finish = self.plan(text, mode, progress)
        run_chains(self.engine, chains)
        return finish()

    def plan(self, text: str, mode: Mode, progress: Callable[[int, int], None] | None = None
             ) -> tuple[list[Chain[None]], Callable[[], DocResult]]:
        """The document's stretches as chains, and what gives its result once they ran.

        ``progress(done, total)`` is called as each unit is done.
        """
        doc = _Doc([], mode == "markdown")
        todo: list[tuple[int, list[Segment], str]] = []  # (place in out, unit, where)
        line = 1
        for part in units(segment(text, mode)):
            raw = part if isinstance(part, str) else "".join(s.text for s in part)
            if not isinstance(part, str) and _needs(part):
                todo.append((len(doc.out), part, f"segment {len(todo) + 1} (line {line})"))
            doc.out.append(raw)
            line += raw.count("\n")
        doc.result.units = len(todo)

        def stretch(first: int, run: list[tuple[int, list[Segment], str]]) -> Chain[None]:
            thread = _Thread(doc)
            for number, (at, unit, where) in enumerate(run, first):
                thread.unit, thread.where = number, where
                doc.out[at] = yield from self._unit(thread, unit)
                doc.finished += 1
                if progress is not None:
                    progress(doc.finished, len(todo))

        runs = stretches(todo, self.parallel, lambda job: len(_source(job[1])))
        starts = [sum(len(r) for r in runs[:i]) for i in range(len(runs))]
        return [stretch(s, r) for s, r in zip(starts, runs, strict=True)], doc.done

    # -- one unit ---------------------------------------------------------------

    def _unit(self, thread: _Thread, unit: list[Segment]) -> Chain[str]:
        raw = "".join(s.text for s in unit)
        if not _needs(unit):
            return raw
        source = _source(unit)
        if not self._fits(source):
            return (yield from self._parts(thread, self._pack(unit)))
        lead, trail = source[: len(source) - len(source.lstrip())], source[len(source.rstrip()):]
        core = source.strip()
        kept = [s.text for s in unit if s.kind == "inline"]
        reply, lost, usable = yield from self._translate(thread, core, kept)
        if lost:
            if any(reply.count(span) < core.count(span) for span in kept):
                self._problem(thread, lost, "translated the text around the kept parts instead")
                return (yield from self._parts(
                    thread, [[s] if s.kind == "text" else s.text for s in unit]))
            if not usable:
                self._problem(thread, lost, "kept the original text")
                return raw
            self._problem(thread, lost, "kept the translation")
        return lead + _rebuild(unit, reply, thread.doc.markdown) + trail

    def _parts(self, thread: _Thread, parts: list[str | list[Segment]]) -> Chain[str]:
        """Kept strings as they are, and each list of segments translated as a unit."""
        out: list[str] = []
        for part in parts:
            out.append(part if isinstance(part, str) else (yield from self._unit(thread, part)))
        return "".join(out)

    def _pack(self, unit: list[Segment]) -> list[str | list[Segment]]:
        """Runs of consecutive segments that each fit the context, and breaks between
        them; a text segment too long on its own is cut at sentence ends, then at
        whitespace, then anywhere."""
        parts: list[str | list[Segment]] = []
        run: list[Segment] = []

        def flush() -> None:
            tail: list[str] = []
            while run and run[-1].kind == "break":
                tail.insert(0, run.pop().text)
            if run:
                parts.append(list(run))
            parts.extend(tail)
            run.clear()

        for seg in unit:
            if run and self._fits(_source([*run, seg])):
                run.append(seg)
                continue
            flush()
            if seg.kind == "break":
                parts.append(seg.text)
            elif seg.kind == "text" and not self._fits(seg.text):
                parts.extend([Segment(p, "text", seg.unit)]
                             for p in split_long(seg.text, self._fits))
            else:
                run.append(seg)
        flush()
        return parts

    def _problem(self, thread: _Thread, lost: list[str], outcome: str) -> None:
        shown = ", ".join(x if x.startswith("(") else repr(x) for x in lost[:5])
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        message = f"{thread.where}: the translation lost {shown}{more}"
        if self.spec.strict:
            raise TranslateError(message + " (--strict)")
        thread.doc.warnings.append((thread.unit, f"{message}; {outcome}"))

    # -- one request --------------------------------------------------------------

    def _translate(self, thread: _Thread, text: str, kept: Sequence[str]
                   ) -> Chain[tuple[str, list[str], bool]]:
        """(reply, what it lost, whether it is usable at all); passing replies are cached."""
        key = self._key(text)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            thread.doc.result.cached += 1
            thread.previous = (text, hit)
            return hit, [], True
        reply = ""
        lost: list[str] = []
        flags: list[str] = []
        n_tokens = self.engine.count_tokens(text)
        for _attempt in range(2):
            context = thread.previous if thread.previous and self._fits(text, thread.previous) \
                and "(a copy of the previous translation)" not in flags else None
            messages = self._messages(text, context, lost)
            room = self.n_ctx - self.engine.count_prompt_tokens(messages)
            limit = max(1, min(room, self.spec.sampling.max_tokens, 4 * n_tokens + 64))
            # a unit never holds a blank line: one in the reply means the model moved on
            stop = (*self.spec.sampling.stop, "\n\n")
            completion = yield ChatRequest(
                messages, self.spec.sampling.with_(max_tokens=limit, stop=stop))
            reply = _clean(completion.text, text)
            lost = missing(text, reply, kept)
            flags = ["(the reply was cut off)"] if completion.finish_reason != "stop" else []
            if not reply:
                flags = ["(an empty reply)"]
            elif context is not None and _same(reply, context[1]) and not _same(text, context[0]):
                flags = ["(a copy of the previous translation)"]  # small models echo the
                lost = []  # prior exchange: ask again without it
            if not lost and not flags:
                if self.cache is not None:
                    self.cache.put(key, reply)
                thread.previous = (text, reply)
                return reply, [], True
        return reply, [*lost, *flags], not flags

    def _glossary_for(self, text: str) -> dict[str, str]:
        low = text.lower()
        return {k: v for k, v in self.spec.glossary.items() if k.lower() in low}

    def _messages(self, text: str, context: tuple[str, str] | None,
                  keep: Sequence[str]) -> tuple[Message, ...]:
        glossary = self._glossary_for(text)
        values = {
            "source_lang": self.spec.source.name if self.spec.source else "its language",
            "target_lang": self.spec.target.name,
            "glossary": "".join(["\nUse these translations:",
                                 *(f"\n- {k}: {v}" for k, v in glossary.items())])
            if glossary else "",
            "keep": f"\nCopy these exactly as written: {', '.join(keep)}" if keep else "",
            "text": text,
        }
        template = self.spec.template
        system = template.render_system(values)
        messages = [Message("system", system)] if system else []
        if context is not None:
            messages += [Message("user", template.render_user({**values, "text": context[0]})),
                         Message("assistant", context[1])]
        return (*messages, Message("user", template.render_user(values)))

    def _fits(self, text: str, context: tuple[str, str] | None = None) -> bool:
        prompt = self.engine.count_prompt_tokens(self._messages(text, context, ()))
        return prompt + 2 * self.engine.count_tokens(text) + 16 <= self.n_ctx

    def _key(self, text: str) -> str:
        spec, template = self.spec, self.spec.template
        parts = [1, spec.model_id, spec.source.name if spec.source else None, spec.target.name,
                 template.system, template.user, repr(spec.sampling),
                 sorted(self._glossary_for(text).items()), text]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def _source(unit: list[Segment]) -> str:
    """What the model sees for a unit: its text and kept spans, breaks as newlines."""
    return "".join("\n" if s.kind == "break" else s.text for s in unit)


def _same(a: str, b: str) -> bool:
    """Equal but for case and spacing."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _needs(unit: list[Segment]) -> bool:
    """Whether a unit has prose to translate (not just numbers, symbols, kept spans)."""
    return any(s.kind == "text" and _LETTER.search(s.text) for s in unit)
