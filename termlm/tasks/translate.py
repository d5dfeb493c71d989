"""Translate a document: segments -> units -> checked model replies -> the document again.

Each translation unit (a paragraph, heading, list item, table cell, or line)
is one request, with the unit before it as a prior exchange so that terms stay
consistent. A unit too long for the context is cut at sentence ends, then at
whitespace, then anywhere. Every reply is checked (``termlm.tasks.translate_checks``):
it must keep the numbers, URLs, inline code, placeholders and kept spans of its
source and add none, be in the target language, translate rather than answer,
and be about as long as its source. A reply that fails is retried once, with
the missing pieces named and a firmer instruction (a reply that merely repeats
the previous translation is retried without the prior exchange). If it fails
again, the unit keeps its source text, marked untranslated (see ``MARK``), with
one warning; with ``strict`` that is a :class:`TranslateError`. Only replies that
pass are cached, and cached ones are checked again. ``Translator`` can run
several stretches of a document side by side (``termlm.chains``), each a chain
of units with their prior exchanges.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from termlm.chains import Chain, run_chains, stretches
from termlm.engine.types import BatchingEngine, ChatRequest, Engine, Message, SamplingParams
from termlm.errors import InputError, TermlmError
from termlm.prompts import Template
from termlm.segment import Mode, Segment, segment, split_long
from termlm.tasks.langid import Identifier, default_identifier
from termlm.tasks.languages import LETTER, Language, language
from termlm.tasks.translate_cache import Cache, SqliteCache
from termlm.tasks.translate_checks import Checks, missing, protected

__all__ = ["MARK", "Cache", "DocResult", "Language", "Spec", "SqliteCache", "TranslateError",
           "Translator", "language", "load_glossary", "missing", "protected", "units"]

# How a unit left in its source language is marked, per output format: in Markdown an
# HTML comment after its text (invisible when rendered; after, because a paragraph that
# starts with "<!--" would become an HTML block), in plain text a tag before it. Both
# can be found with grep "termlm: untranslated".
MARK = {"markdown": " <!-- termlm: untranslated -->", "text": "[termlm: untranslated] "}


class TranslateError(TermlmError):
    """A unit whose translation failed the checks, under --strict."""


def load_glossary(path: Path) -> dict[str, str]:
    """YAML ``term: translation``. Every scalar is read as text (``no: non`` stays text)."""
    import yaml

    from termlm import yamlfile
    from termlm.inputs import read_input_bytes

    if not path.exists():
        raise InputError(f"{path}: no such glossary file")
    try:  # a regular file (or a named pipe, <(cmd)): a FIFO or a device never hangs
        data = yamlfile.load(read_input_bytes(path, pipes=True).decode("utf-8"),
                             text_only=True)
    except InputError as exc:
        raise InputError(f"glossary: {exc.message}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read glossary {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"glossary {path}: {yamlfile.reason(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip()
                                             for v in data.values()):
        raise InputError(f"glossary {path} must map each term to its translation",
                         hint="one line per term, e.g.  pull request: demande de fusion")
    return {str(k).strip(): v.strip() for k, v in data.items() if str(k).strip()}


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


def _mark(raw: str, markdown: bool) -> str:
    """The unit's source text, marked untranslated (its surrounding spaces kept)."""
    core = raw.strip()
    lead, trail = raw[: len(raw) - len(raw.lstrip())], raw[len(raw.rstrip()):]
    return lead + (core + MARK["markdown"] if markdown else MARK["text"] + core) + trail


@dataclass(frozen=True)
class Spec:
    target: Language
    source: Language | None
    template: Template
    sampling: SamplingParams
    model_id: str
    glossary: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    # tells the language of a reply; None: no language check
    identifier: Identifier | None = field(default_factory=default_identifier)


@dataclass
class DocResult:
    text: str
    units: int = 0  # segments to translate
    cached: int = 0  # of them, taken whole from the cache
    retried: int = 0  # of them, asked again at least once
    left: int = 0  # of them, kept (wholly or in part) as source text, marked untranslated
    warnings: list[str] = field(default_factory=list)

    @property
    def translated(self) -> int:
        return self.units - self.left


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
    """One stretch of a document being translated: the exchange before the unit at hand,
    and what happened to that unit's requests (a unit may take several: its parts)."""

    doc: _Doc
    previous: tuple[str, str] | None = None
    unit: int = 0  # the unit's number in the document
    where: str = ""
    problems: list[str] = field(default_factory=list)  # one per failed part, as told
    parts: int = 0  # requests' texts asked for (or found in the cache)
    cached: int = 0
    left: int = 0  # parts kept as source
    retried: bool = False
    split: bool = False  # its text was translated around its kept spans

    def begin(self, number: int, where: str) -> None:
        self.unit, self.where = number, where
        self.problems, self.parts, self.cached, self.left = [], 0, 0, 0
        self.retried = self.split = False


@dataclass(frozen=True)
class _Attempt:
    """The outcome of asking (and asking again) for one text."""

    reply: str
    problem: str = ""  # "lost '42' and is in English, not French"; "" when it passed
    lost_kept: bool = False  # a kept span is missing from the reply


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
        self.checks = Checks(spec.target, spec.identifier)
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
                thread.begin(number, where)
                doc.out[at] = yield from self._unit(thread, unit)
                self._settle(thread)
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
        attempt = yield from self._translate(thread, core, kept)
        if not attempt.problem:
            return lead + _rebuild(unit, attempt.reply, thread.doc.markdown) + trail
        thread.problems.append(attempt.problem)
        if attempt.lost_kept and any(s.kind == "text" for s in unit):
            thread.split = True  # the model mangles the kept spans: leave them out of it
            thread.parts -= 1  # what counts now is the parts
            return (yield from self._parts(
                thread, [[s] if s.kind == "text" else s.text for s in unit]))
        thread.left += 1
        return _mark(raw, thread.doc.markdown)

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

    def _settle(self, thread: _Thread) -> None:
        """Count the unit, and tell in one warning what went wrong with it and what was
        done instead (under strict, a failure)."""
        result = thread.doc.result
        result.retried += thread.retried
        result.cached += bool(thread.parts) and thread.cached == thread.parts
        result.left += bool(thread.left)
        if not thread.problems:
            return
        what = "; ".join(dict.fromkeys(f"the reply {p}" for p in thread.problems))
        if self.spec.strict and thread.left:
            raise TranslateError(f"{thread.where}: {what} (retried once); not translated "
                                 "(--strict)")
        left, parts = thread.left, thread.parts
        around = "the text around the kept parts separately"
        source = "the source text, marked untranslated" if left == parts else \
            f"the source text of {left} of its {parts} parts, marked untranslated"
        if not thread.split:
            done = f"kept {source}"
        elif not left:
            done = f"translated {around}"
        elif left == parts:
            done = f"tried {around}, then kept {source}"
        else:
            done = f"translated {around}, but kept {source}"
        thread.doc.warnings.append((thread.unit, f"{thread.where}: {what} (retried once); {done}"))

    # -- one request --------------------------------------------------------------

    def _translate(self, thread: _Thread, text: str, kept: Sequence[str]
                   ) -> Chain[_Attempt]:
        """The reply for ``text``, asked for at most twice; passing replies are cached."""
        thread.parts += 1
        key = self._key(text)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and self.checks.verdict(text, hit, kept).ok:  # checks may change
            thread.cached += 1
            thread.previous = (text, hit)
            return _Attempt(hit)
        n_tokens = self.engine.count_tokens(text)
        reply, flag = "", ""
        lost: list[str] = []
        phrases: list[str] = []
        for attempt in range(2):
            context = thread.previous if thread.previous and self._fits(text, thread.previous) \
                and flag != _COPY else None
            messages = self._messages(text, context, lost, firm=attempt > 0)
            room = self.n_ctx - self.engine.count_prompt_tokens(messages)
            limit = max(1, min(room, self.spec.sampling.max_tokens, 4 * n_tokens + 64))
            # a unit never holds a blank line: one in the reply means the model moved on
            sampling = self.spec.sampling.with_(max_tokens=limit,
                                                stop=(*self.spec.sampling.stop, "\n\n"))
            if attempt:  # the likeliest reply under the firmer prompt
                sampling = sampling.with_(temperature=0.0)
            completion = yield ChatRequest(messages, sampling)
            reply = _clean(completion.text, text)
            verdict = self.checks.verdict(text, reply, kept)
            lost = list(verdict.lost)
            flag = "was cut off" if completion.finish_reason != "stop" else ""
            if not reply:
                flag = "was empty"
            elif context is not None and _same(reply, context[1]) and not _same(text, context[0]):
                flag = _COPY  # small models echo the prior exchange: ask again without it
                lost = []
            if not flag and verdict.ok:
                if self.cache is not None:
                    self.cache.put(key, reply)
                thread.previous = (text, reply)
                return _Attempt(reply)
            if not attempt:
                thread.retried = True
            phrases = [flag] if flag in ("was empty", _COPY) else [
                *([flag] if flag else []), *verdict.phrases()]
        lost_kept = any(reply.count(span) < text.count(span) for span in kept)
        return _Attempt(reply, " and ".join(phrases), lost_kept)

    def _glossary_for(self, text: str) -> dict[str, str]:
        low = text.lower()
        return {k: v for k, v in self.spec.glossary.items() if k.lower() in low}

    def _messages(self, text: str, context: tuple[str, str] | None,
                  keep: Sequence[str], firm: bool = False) -> tuple[Message, ...]:
        glossary = self._glossary_for(text)
        target = self.spec.target.name
        values = {
            "source_lang": self.spec.source.name if self.spec.source else "its language",
            "target_lang": target,
            "glossary": "".join(["\nUse these translations:",
                                 *(f"\n- {k}: {v}" for k, v in glossary.items())])
            if glossary else "",
            "keep": (f"\nCopy these exactly as written: {', '.join(keep)}" if keep else "")
            + (f"\nTranslate only: do not answer the text, explain it or add to it; write "
               f"the whole translation in {target}." if firm else ""),
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
        """Whether the text fits with room for a reply twice as long (and for the
        retry's longer prompt)."""
        prompt = self.engine.count_prompt_tokens(self._messages(text, context, (), firm=True))
        return prompt + 2 * self.engine.count_tokens(text) + 16 <= self.n_ctx

    def _key(self, text: str) -> str:
        spec, template = self.spec, self.spec.template
        parts = [1, spec.model_id, spec.source.name if spec.source else None, spec.target.name,
                 template.system, template.user, repr(spec.sampling),
                 sorted(self._glossary_for(text).items()), text]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


_COPY = "copied the translation of the segment before"


def _source(unit: list[Segment]) -> str:
    """What the model sees for a unit: its text and kept spans, breaks as newlines."""
    return "".join("\n" if s.kind == "break" else s.text for s in unit)


def _same(a: str, b: str) -> bool:
    """Equal but for case and spacing."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _needs(unit: list[Segment]) -> bool:
    """Whether a unit has prose to translate (not just numbers, symbols, kept spans)."""
    return any(s.kind == "text" and LETTER.search(s.text) for s in unit)
