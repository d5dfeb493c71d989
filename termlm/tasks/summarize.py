"""`summarize`: one summary per record, map-reduce when the text outgrows the context.

A text whose prompt fits the context (with room for the answer) is
summarized in one request. A longer one is split with ``termlm.chunking``
into parts that each fit (map: one short summary per part), then the part
summaries are combined (reduce). When even the part summaries do not fit in
one prompt, they are combined in groups first, round after round, until one
prompt holds them all. Every round at least halves their number: a part
summary is asked to be at most half the room a reduce prompt has for them.
The final summary gets ``sampling.max_tokens`` (from --length or
--max-tokens), capped at a third of the context.

Two templates: ``summarize`` (one text, or one part of it) and
``summarize_reduce`` (summaries of consecutive parts). Both get ``{text}``,
``{length}`` (an instruction such as "in one to three sentences") and
``{format}`` (prose or "- " bullets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from termlm.chunking import BudgetTooSmall, pack, split_text
from termlm.engine.types import ChatRequest, Engine, Message, SamplingParams, complete_many
from termlm.errors import TemplateError
from termlm.records.types import Record
from termlm.tasks.base import RecordError

if TYPE_CHECKING:
    from termlm.prompts import Template


class Length(str, Enum):
    short = "short"
    medium = "medium"
    long = "long"


class Format(str, Enum):
    paragraph = "paragraph"
    bullets = "bullets"


# --length: the most tokens of the answer, and the instruction for each --format
MAX_TOKENS = {Length.short: 120, Length.medium: 250, Length.long: 600}
_LENGTH_TEXT = {
    Format.paragraph: {Length.short: "in one to three sentences",
                       Length.medium: "in one paragraph",
                       Length.long: "in about three paragraphs"},
    Format.bullets: {Length.short: "in at most three bullet points",
                     Length.medium: "in about five bullet points",
                     Length.long: "in about ten bullet points"},
}
_FORMAT_TEXT = {
    Format.paragraph: "Write plain prose, with no title, no list and no preamble.",
    Format.bullets: 'Write a list with one point per line, each line starting with "- ", '
                    "with no title and no preamble. Like this:\n- First point.\n- Second point.",
}
# part summaries, and groups of them combined in intermediate rounds
_NOTE_LENGTH = "in a few sentences, keeping the key facts, names and numbers"
_NOTE_MAX_TOKENS = 200
_SEPARATOR = "\n\n"
VARIABLES = ("text", "length", "format")

# A copy: at least half the summary's words sit in runs of COPY_RUN or more words that
# the source has in the same order. Eight words in a row rarely repeat by chance (names
# and set phrases are shorter); a summary that quotes one sentence stays far below half.
COPY_RUN = 8
COPY_SHARE = 0.5
COPY_MIN_WORDS = 12  # a summary shorter than this is not judged
# --length's answer may run past its nominal size by this factor before it is cut: room
# to finish the sentence it asked for, not a licence to ramble (--max-tokens is exact).
HEADROOM = 1.5
_OWN_WORDS = ("Write the summary in your own words: do not copy sentences or passages "
              "from the text.")

Progress = Callable[[str], None]
FinalWriter = Callable[[ChatRequest], tuple[str, str | None]]
"""Runs the last request; (text, finish reason). The CLI streams it to stdout."""


@dataclass(frozen=True)
class Summary:
    text: str
    chunks: int  # parts the text was split into (1: it fit in one prompt)
    rounds: int  # reduce rounds (0 for a single pass)
    cut_off: bool = False  # the answer reached its token limit
    copied: float | None = None  # share of it copied from the text, when that is most


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"\w+(?:[.'\u2019-]\w+)*", text.lower())


def copied_share(summary: str, source: str, run: int = COPY_RUN) -> float:
    """The share of ``summary``'s words inside runs of ``run`` or more consecutive words
    that ``source`` also has, in that order (0.0 to 1.0)."""
    words = _words(summary)
    if len(words) < run:
        return 0.0
    source_words = _words(source)
    grams = {tuple(source_words[i:i + run]) for i in range(len(source_words) - run + 1)}
    covered = [False] * len(words)
    for i in range(len(words) - run + 1):
        if tuple(words[i:i + run]) in grams:
            for j in range(i, i + run):
                covered[j] = True
    return sum(covered) / len(words)


def is_copy(summary: str, source: str) -> float | None:
    """The copied share when ``summary`` is mostly a copy of ``source``, else None."""
    if len(_words(summary)) < COPY_MIN_WORDS:
        return None
    share = copied_share(summary, source)
    return share if share >= COPY_SHARE else None


@dataclass(frozen=True)
class _Sizes:
    answer: int  # most tokens of the final summary
    note: int  # most tokens of a part summary or an intermediate one


def check_template(template: Template) -> None:
    """A summarize template must use {text}, and may use only {text}, {length}, {format}."""
    from termlm.prompts import variables_in

    names = list(template.variables)
    if template.system:
        names += variables_in(template.system, template.name)
    unknown = [n for n in names if n not in VARIABLES]
    if unknown:
        raise TemplateError(f"template {template.name!r} uses {{{unknown[0]}}}; a summarize "
                            f"template knows only {{text}}, {{length}} and {{format}}")
    if "text" not in names:
        raise TemplateError(f"template {template.name!r} must use {{text}}")


@dataclass(frozen=True)
class SummarizeTask:
    template: Template  # one text, or one part of a long one
    reduce_template: Template  # summaries of consecutive parts
    length: Length = Length.medium
    fmt: Format = Format.paragraph
    sampling: SamplingParams = field(default_factory=SamplingParams)  # max_tokens: the answer
    progress: Progress | None = None
    warn: Progress | None = None  # a warning about one summary (cut off, copied): stderr
    name: str = "summarize"
    handles_long_input: bool = True  # the runner skips its context check: run() splits

    def __post_init__(self) -> None:
        check_template(self.template)
        check_template(self.reduce_template)

    # -- the Task protocol -----------------------------------------------------

    def messages(self, text: str, record: Record) -> tuple[Message, ...]:
        """The one-pass prompt for the whole text (what --dry-run shows)."""
        if not text.strip():
            raise RecordError(f"{record.id} is empty: nothing to summarize")
        return self._messages(self.template, text, final=True)

    def reserve(self, engine: Engine) -> int:
        return self._sizes(engine).answer

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        result = self.summarize(engine, record.text or "", record.id)
        fields: dict[str, Any] = {"summary": result.text, "chunks": result.chunks}
        if result.cut_off:
            fields["cut_off"] = True
        if result.copied is not None:
            fields["copied"] = round(result.copied, 2)
        return fields

    # -- the work --------------------------------------------------------------

    def summarize(self, engine: Engine, text: str, label: str,
                  final: FinalWriter | None = None) -> Summary:
        """Summarize ``text`` (``label`` names it in progress lines and errors)."""
        if not text.strip():
            raise RecordError(f"{label} is empty: nothing to summarize")
        sizes = self._sizes(engine)
        n_ctx = engine.info.n_ctx
        whole = self._messages(self.template, text, final=True)
        if engine.count_prompt_tokens(whole) + sizes.answer <= n_ctx:
            return self._finished(engine, text, label, whole, sizes, final, 1, 0)
        self._reduce_room(engine, sizes)  # fail before any work when parts cannot be combined
        chunks = self._chunks(engine, text, sizes)
        if self.progress is not None:  # counting a long text is not free
            self._say(f"{label}: {engine.count_tokens(text)} tokens do not fit the context "
                      f"({n_ctx}) at once: summarizing {len(chunks)} parts, then combining "
                      "them")
        notes = self._notes(engine, [self._messages(self.template, c, final=False)
                                     for c in chunks], sizes, f"{label}: part")
        rounds = 0
        while True:
            rounds += 1
            groups = self._groups(engine, notes, sizes)
            if len(groups) == 1:
                self._say(f"{label}: combining {len(notes)} part summaries")
                reduce = self._messages(self.reduce_template, groups[0], final=True)
                return self._finished(engine, text, label, reduce, sizes, final, len(chunks),
                                      rounds)
            if len(groups) >= len(notes):
                raise RecordError(f"{label}: the part summaries do not get shorter; "
                                  "raise --ctx")
            self._say(f"{label}: combining {len(notes)} part summaries in {len(groups)} "
                      f"groups (round {rounds})")
            notes = self._notes(engine, [self._messages(self.reduce_template, g, final=False)
                                         for g in groups], sizes, f"{label}: group")

    def _finished(self, engine: Engine, source: str, label: str,
                  messages: tuple[Message, ...], sizes: _Sizes, final: FinalWriter | None,
                  chunks: int, rounds: int) -> Summary:
        """The final request, checked: cut off at its limit, or a copy of the text. A copy
        is asked for once more, firmly, unless it was streamed (the reader has it)."""
        text, reason = self._final(engine, messages, sizes, final)
        copied = is_copy(text, source)
        if copied is not None and final is None:
            firmer = (*messages[:-1], Message("user", messages[-1].content + "\n\n"
                                              + _OWN_WORDS))
            again, again_reason = self._final(engine, firmer, sizes, None)
            again_copied = is_copy(again, source)
            if again_copied is None or again_copied < copied:
                text, reason, copied = again, again_reason, again_copied
        cut = reason == "length"
        if cut:
            self._warn(f"{label}: the summary reached its limit of {sizes.answer} tokens and "
                       "may end mid-sentence (raise --max-tokens or use a longer --length)")
        if copied is not None:
            self._warn(f"{label}: the summary copies the text: {copied:.0%} of its words are "
                       f"passages of {COPY_RUN} or more words from it (try a larger model)")
        return Summary(text, chunks, rounds, cut_off=cut, copied=copied)

    def _sizes(self, engine: Engine) -> _Sizes:
        n_ctx = engine.info.n_ctx
        answer = max(1, min(self.sampling.max_tokens, n_ctx // 3))
        note = max(16, min(_NOTE_MAX_TOKENS, n_ctx // 8))
        return _Sizes(answer=answer, note=note)

    def _room(self, engine: Engine, template: Template, reserve: int) -> int:
        """Tokens left for {text} in a prompt from ``template`` that keeps ``reserve`` free."""
        empty = engine.count_prompt_tokens(self._messages(template, "", final=True))
        margin = 4 + engine.info.n_ctx // 64  # a tokenizer may count joined text differently
        return engine.info.n_ctx - empty - reserve - margin

    def _chunks(self, engine: Engine, text: str, sizes: _Sizes) -> list[str]:
        """Parts of ``text`` whose map prompts each fit, with room for a part summary."""
        budget = self._room(engine, self.template, sizes.note)
        limit = engine.info.n_ctx - sizes.note
        for _ in range(4):
            if budget < 32:
                break
            try:
                chunks = split_text(text, budget, engine.count_tokens)
            except BudgetTooSmall:
                break
            if all(engine.count_prompt_tokens(self._messages(self.template, c, final=False))
                   <= limit for c in chunks):
                return chunks
            budget = budget * 3 // 4
        raise RecordError(f"the context ({engine.info.n_ctx} tokens) is too small to "
                          "summarize in parts; raise --ctx")

    def _reduce_room(self, engine: Engine, sizes: _Sizes) -> int:
        """Tokens for part summaries in a reduce prompt; at least two must fit."""
        room = self._room(engine, self.reduce_template, max(sizes.answer, sizes.note))
        if room < 2 * sizes.note:
            raise RecordError(f"the context ({engine.info.n_ctx} tokens) is too small to "
                              "combine part summaries; raise --ctx or use a shorter --length")
        return room

    def _groups(self, engine: Engine, notes: list[str], sizes: _Sizes) -> list[str]:
        """Notes joined into as few reduce inputs as fit one prompt each."""
        reserve = max(sizes.answer, sizes.note)
        room = self._reduce_room(engine, sizes)
        units: list[str] = []
        for note in notes:  # a note longer than asked for is cut at sentences first
            units.extend(p.strip() for p in split_text(note, room, engine.count_tokens)
                         if p.strip())
        limit = engine.info.n_ctx - reserve

        def prompt_tokens(joined: str) -> int:
            return engine.count_prompt_tokens(
                self._messages(self.reduce_template, joined, final=True))

        return pack(units, limit, prompt_tokens, sep=_SEPARATOR)

    def _notes(self, engine: Engine, prompts: list[tuple[Message, ...]], sizes: _Sizes,
               what: str) -> list[str]:
        """Part (or group) summaries, in order; run at once when the engine batches."""
        sampling = self.sampling.with_(max_tokens=sizes.note)
        results = complete_many(engine, (ChatRequest(m, sampling) for m in prompts))
        notes: list[str] = []
        try:
            for result in results:
                if isinstance(result, Exception):
                    raise result
                notes.append(result.text.strip())
                self._say(f"{what} {len(notes)}/{len(prompts)} summarized")
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        return notes

    def _final(self, engine: Engine, messages: tuple[Message, ...], sizes: _Sizes,
               final: FinalWriter | None) -> tuple[str, str | None]:
        request = ChatRequest(messages, self.sampling.with_(max_tokens=sizes.answer))
        if final is not None:
            text, reason = final(request)
        else:
            done = engine.complete(request)
            text, reason = done.text, done.finish_reason
        if not text.strip():
            raise RecordError("the model returned an empty summary")
        return text.strip(), reason

    def _messages(self, template: Template, text: str, *, final: bool) -> tuple[Message, ...]:
        values = {
            "text": text,
            "length": _LENGTH_TEXT[self.fmt][self.length] if final else _NOTE_LENGTH,
            "format": _FORMAT_TEXT[self.fmt] if final else _FORMAT_TEXT[Format.paragraph],
        }
        system = template.render_system(values)
        user = template.render_user(values)
        return (*([Message("system", system)] if system else []), Message("user", user))

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def _warn(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)
