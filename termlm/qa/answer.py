"""Answers from documents: retrieve passages, ask the model, keep only true citations.

The model sees the best passages that fit its context, each headed by its
source ``[path:start-end]``. Its reply is then checked: a citation stays only
when it names a passage the model was given (or lines inside one); any other
bracketed ``[x:1-2]`` is removed. A reply that cites nothing gets the passages
it was given as its sources. When no passage is relevant enough, the model is
not asked at all and the answer says the documents don't contain it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from termlm.engine.types import ChatRequest, Completion, Engine, Message, SamplingParams, Score
from termlm.errors import TermlmError
from termlm.prompts import Template
from termlm.qa.chunking import split_lines
from termlm.qa.index import Index
from termlm.qa.retrieval import DEFAULT_MIN_SCORE as DEFAULT_MIN_SCORE
from termlm.qa.retrieval import Mode, Ranker
from termlm.qa.retrieval import Passage as Passage  # re-exported: the answers' passages
from termlm.records.types import Record
from termlm.tasks.base import RecordError

NOT_FOUND = "The documents don't contain the answer."
DEFAULT_TOP_K = 4
SNIPPET_CHARS = 240
_CITE = re.compile(r"\[([^\[\]\n]{1,500}?):(\d{1,9})(?:\s*[-\u2013]\s*(\d{1,9}))?\]")
_NOT_FOUND_RE = re.compile(r"documents? (?:do not|don't|does not|doesn't) contain (?:the|an|any)"
                           r" answer")


@dataclass(frozen=True)
class Citation:
    path: str
    start: int
    end: int
    snippet: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "start": self.start, "end": self.end,
                "snippet": self.snippet}


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    found: bool
    citations: tuple[Citation, ...] = ()
    passages: tuple[Passage, ...] = ()  # what the model was given

    def fields(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "found": self.found,
                "citations": [c.to_dict() for c in self.citations]}

    def report(self, retrieval: Mode) -> dict[str, Any]:
        """``fields`` with the retrieval used and the scores of the passages given."""
        return {**self.fields(), "retrieval": retrieval.value,
                "passages": [p.scores() for p in self.passages]}


def not_found(question: str) -> Answer:
    return Answer(question, NOT_FOUND, False)


# -- retrieval ----------------------------------------------------------------------------

def retrieve(index: Index, question: str, *, top_k: int = DEFAULT_TOP_K,
             min_score: float = DEFAULT_MIN_SCORE, ranker: Ranker | None = None
             ) -> list[Passage]:
    """The best relevant passages, each checked against its file as it is now.

    ``ranker`` finds and orders them (default: BM25 with ``min_score``). When a file
    has changed since it was indexed and its lines no longer hold the passage, or is
    gone, it is indexed again (or dropped) and the search runs once more; a passage
    that still does not check out is left out.
    """
    ranker = ranker or Ranker(index, Mode.bm25, min_score=min_score)
    stale: set[str] = set()
    for attempt in range(2):
        out: list[Passage] = []
        files: dict[str, list[str] | str] = {}
        for passage in ranker.candidates(question):
            if len(out) >= top_k:
                break
            if passage.key in stale:
                continue
            if passage.key not in files:
                files[passage.key] = _file_now(index, passage.key)
            now = files[passage.key]
            if now == "gone" or (isinstance(now, list) and not _still_there(
                    passage.text, now, passage.start, passage.end)):
                stale.add(passage.key)
                continue
            out.append(passage)
        if not stale or attempt:
            return out
        index.refresh(stale)
        ranker.refreshed()
        stale.clear()  # refreshed: their new chunks may be searched (and are checked again)
    return out  # pragma: no cover - the loop returns


def _file_now(index: Index, key: str) -> list[str] | str:
    """"gone" (missing or unreadable), "same" (mtime and size as indexed), or its lines."""
    import os

    try:
        st = os.stat(key)
    except OSError:
        return "gone"
    if index.indexed_stat(key) == (st.st_mtime_ns, st.st_size):
        return "same"
    from termlm.errors import InputError
    from termlm.inputs import read_input_bytes

    try:
        return split_lines(read_input_bytes(key).decode("utf-8-sig"))
    except (InputError, UnicodeDecodeError):
        return "gone"


def _still_there(text: str, lines: list[str], start: int, end: int) -> bool:
    if end > len(lines):
        return False
    return " ".join(text.split()) in " ".join(" ".join(lines[start - 1 : end]).split())


# -- the prompt -------------------------------------------------------------------------

def build_messages(template: Template, question: str,
                   passages: list[Passage]) -> tuple[Message, ...]:
    context = "\n\n".join(f"[{p.label}]\n{p.text}" for p in passages) or "(no excerpts)"
    user = template.render_user({"question": question, "context": context})
    system = template.render_system({})
    return (*([Message("system", system)] if system else []), Message("user", user))


def fit(engine: Engine, template: Template, question: str, passages: list[Passage],
        reserve: int) -> list[Passage]:
    """The passages, best first, that fit the context with ``reserve`` tokens to spare."""
    budget = engine.info.n_ctx - reserve
    chosen: list[Passage] = []
    for passage in passages:
        trial = [*chosen, passage]
        if engine.count_prompt_tokens(build_messages(template, question, trial)) <= budget:
            chosen = trial
    return chosen


# -- the reply ----------------------------------------------------------------------------

def check_citations(text: str, given: list[Passage]) -> tuple[str, list[Citation]]:
    """The reply without citations to anything it was not given, and the valid ones."""
    found: list[Citation] = []

    def keep(match: re.Match[str]) -> str:
        path = match.group(1).strip().strip("`'\"").strip()
        start = int(match.group(2))
        end = int(match.group(3) or start)
        for passage in given:
            if passage.name == path and passage.start <= start <= end <= passage.end:
                citation = Citation(path, start, end, _snippet(passage, start, end))
                if citation not in found:
                    found.append(citation)
                return match.group(0)
        return ""

    cleaned = _CITE.sub(keep, text)
    if cleaned != text:
        cleaned = re.sub(r"[ \t]+([.,;:!?)])", r"\1", cleaned)
        cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)
        cleaned = re.sub(r"\(\s*\)", "", cleaned)
    return cleaned.strip(), found


def _snippet(passage: Passage, start: int, end: int) -> str:
    lines = passage.text.split("\n")
    if len(lines) == passage.end - passage.start + 1:
        lines = lines[start - passage.start : end - passage.start + 1]
    text = " ".join(" ".join(lines).split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "\u2026"


def says_not_found(text: str) -> bool:
    """Whether the reply is (essentially) the template's "not in the documents" line."""
    flat = " ".join(text.replace("\u2019", "'").lower().split())
    return bool(_NOT_FOUND_RE.search(flat)) and len(flat.split()) <= 20


def finish(question: str, reply: str, given: list[Passage]) -> Answer:
    text, citations = check_citations(reply, given)
    if says_not_found(text) and not citations:
        return not_found(question)
    if not citations:
        citations = [Citation(p.name, p.start, p.end, _snippet(p, p.start, p.end))
                     for p in given]
    return Answer(question, text, True, tuple(citations), tuple(given))


# -- the task -----------------------------------------------------------------------------

@dataclass(frozen=True)
class QaRequest(ChatRequest):
    """The model call for a question, with what its reply is checked against."""

    question: str = ""
    given: tuple[Passage, ...] = ()


@dataclass(frozen=True)
class QaTask:
    """One question per record; a ``termlm.tasks.base.BatchableTask``.

    ``messages`` is the prompt with no excerpts: the runner checks that the
    question itself fits. ``request`` retrieves, fits the passages to the context
    with the engine's own token counts, and returns the model call (or the
    not-found answer, when nothing is relevant); ``finish`` checks the reply's
    citations against the passages that call gave the model.
    """

    index: Index
    template: Template
    sampling: SamplingParams
    top_k: int = DEFAULT_TOP_K
    min_score: float = DEFAULT_MIN_SCORE
    ranker: Ranker | None = None  # how passages are found (default: BM25, min_score)
    name: str = "qa"
    kind: str = "complete"

    @property
    def retrieval(self) -> Mode:
        return self.ranker.mode if self.ranker is not None else Mode.bm25

    def messages(self, text: str, record: Record) -> tuple[Message, ...]:
        return build_messages(self.template, text.strip(), [])

    def reserve(self, engine: Engine) -> int:
        return self.sampling.max_tokens

    def retrieve(self, question: str) -> list[Passage]:
        return retrieve(self.index, question, top_k=self.top_k, min_score=self.min_score,
                        ranker=self.ranker)

    def ask(self, engine: Engine, question: str, passages: list[Passage]) -> QaRequest | Answer:
        """The model call for ``question`` over ``passages``, or the answer when there are
        none; TermlmError when not even one passage fits the context."""
        if not passages:
            return not_found(question)
        given = fit(engine, self.template, question, passages, self.reserve(engine))
        if not given:
            raise TermlmError(
                f"not even one passage fits in the context of {engine.info.n_ctx} tokens "
                f"with {self.reserve(engine)} kept for the answer",
                hint="raise --ctx, or lower --max-tokens or --chunk-words")
        return QaRequest(build_messages(self.template, question, given), self.sampling,
                         question=question, given=tuple(given))

    def answer(self, engine: Engine, question: str, passages: list[Passage]) -> Answer:
        call = self.ask(engine, question, passages)
        if isinstance(call, Answer):
            return call
        return finish(question, engine.complete(call).text, list(call.given))

    def request(self, engine: Engine, messages: tuple[Message, ...], record: Record
                ) -> QaRequest | dict[str, Any]:
        question = (record.text or "").strip()
        if not question:
            raise RecordError("empty question")
        call = self.ask(engine, question, self.retrieve(question))
        return call.fields() if isinstance(call, Answer) else call

    def finish(self, result: Completion | list[Score], record: Record,
               request: object = None) -> dict[str, Any]:
        assert isinstance(result, Completion) and isinstance(request, QaRequest)
        return finish(request.question, result.text, list(request.given)).fields()

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        call = self.request(engine, messages, record)
        return call if isinstance(call, dict) else self.finish(engine.complete(call), record, call)
