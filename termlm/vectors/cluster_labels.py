"""A short label for each cluster, written by the chat model from its central members.

One prompt per cluster holds its members nearest the centre (each cut to
``TEXT_CHARS``); all the prompts go to the engine together (``complete_many``:
a batching engine runs them at once), sampled greedily so a run repeats. The
member texts are data: they are joined into the prompt as plain strings and
never read as template markup. A reply is cleaned to one short line; an empty
or failed one gives the cluster the fallback name ``cluster N``. Labels are
unique (a clash gets `` (2)``, `` (3)``...), so they can be a label set for
``termlm classify --labels-from``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from termlm.engine.types import ChatRequest, Engine, Message, SamplingParams

MEMBERS = 5  # texts per cluster shown to the model
TEXT_CHARS = 300  # of each text
MAX_WORDS = 6
MAX_TOKENS = 24
OUTLIERS = "(outliers)"

SYSTEM = ("You name the common topic of a group of texts: a short name of 2 to 5 words, "
          "as a librarian would write on a shelf, not a list of keywords. Reply with the "
          "name only.")
_ASK = ("Texts from one group:\n\n{texts}\n\nWhat is the topic these texts share? "
        "Reply with a name of 2 to 5 words only.")
_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:topic|label|category|theme|group|cluster)"
                     r"(?:\s+(?:label|name))?\s*(?:is\s*)?[:=\-\u2013\u2014]\s*)+", re.I)
_PREAMBLE = re.compile(  # "The topic these texts share is ...", "These texts are about ..."
    r"^(?:(?:the|their|a|one)\s+)?(?:(?:common|shared|main)\s+)?(?:topic|theme|subject|name)"
    r"\b[^:]{0,40}?\b(?:is|are|would be|could be)\b\s*:?\s*"
    r"|^(?:these|the|this|all|both)\s+(?:\w+\s+)?(?:texts?|group|sentences?)\s+(?:\w+\s+)?"
    r"(?:is|are|share|shares|discuss|discusses|describe|describes)\s+"
    r"(?:(?:all\s+)?(?:about|on|related\s+to|a|an|the)\s+)*", re.I)
_DANGLING = frozenset(["a", "an", "and", "the", "of", "for", "to", "in", "on", "with", "about",
                       "or", "by"])
_LIST_MARK = re.compile(r"^(?:[-*\u2022]\s+|\d+[.)]\s+)")
_MARKUP = re.compile(r"[*_`#]+")
_EDGES = " \t\"'\u201c\u201d\u2018\u2019`.,;:!?-\u2013\u2014()[]{}<>"


def fallback(cluster: int) -> str:
    return f"cluster {cluster}"


def flat(text: str, chars: int = TEXT_CHARS) -> str:
    """``text`` on one line, cut to ``chars`` characters."""
    one = " ".join(text.split())
    return one if len(one) <= chars else one[: chars - 1].rstrip() + "\u2026"


def label_messages(texts: Sequence[str], chars: int = TEXT_CHARS) -> tuple[Message, ...]:
    listing = "\n".join(f"{i}. {flat(t, chars)}" for i, t in enumerate(texts, 1))
    # str.replace, not a template: nothing in the texts is ever interpreted
    return (Message("system", SYSTEM), Message("user", _ASK.replace("{texts}", listing)))


def _fitting(engine: Engine, texts: Sequence[str]) -> tuple[Message, ...]:
    """The prompt for ``texts``, with fewer or shorter texts until it fits the context."""
    limit = engine.info.n_ctx - MAX_TOKENS
    shown = list(texts[:MEMBERS])
    chars = TEXT_CHARS
    messages = label_messages(shown, chars)
    while engine.count_prompt_tokens(messages) > limit:
        if len(shown) > 1:
            shown.pop()
        elif chars > 60:
            chars //= 2
        else:
            break  # the engine says what is wrong; the cluster keeps its fallback name
        messages = label_messages(shown, chars)
    return messages


def clean_label(reply: str) -> str | None:
    """The label in a model's reply: its first line, without quotes, list marks,
    "Label:" and trailing punctuation, at most ``MAX_WORDS`` words; None if nothing is left."""
    line = next((ln.strip() for ln in reply.splitlines() if ln.strip()), "")
    line = _MARKUP.sub("", line).strip()
    line = _LIST_MARK.sub("", line)
    line = _PREFIX.sub("", line.strip(_EDGES + "*")).strip(_EDGES)
    line = _PREAMBLE.sub("", line).strip(_EDGES)
    words = line.split()[:MAX_WORDS]
    while words and words[-1].casefold().strip(_EDGES) in _DANGLING:  # cut mid-phrase
        words.pop()
    if len(words) > 1 and words[0].casefold() in ("a", "an"):
        words.pop(0)
    label = " ".join(words).strip(_EDGES)
    if not re.search(r"\w", label) or label.casefold() == OUTLIERS.strip("()"):
        return None
    return label


def unique(labels: Sequence[str]) -> list[str]:
    """``labels`` with a clash (ignoring case) numbered: "food", "food (2)"."""
    seen: set[str] = set()
    out: list[str] = []
    for label in labels:
        name, n = label, 2
        while name.casefold() in seen:
            name, n = f"{label} ({n})", n + 1
        seen.add(name.casefold())
        out.append(name)
    return out


def label_clusters(engine: Engine, groups: Sequence[Sequence[str]], *,
                   seed: int | None = None,
                   warn: Callable[[str], None] | None = None) -> list[str]:
    """One label per group of central texts (nearest the centre first)."""
    from termlm.engine.types import complete_many

    sampling = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, seed=seed)
    requests = [ChatRequest(_fitting(engine, texts), sampling) for texts in groups]
    labels: list[str] = []
    for i, result in enumerate(complete_many(engine, requests)):
        if isinstance(result, Exception):
            if warn is not None:
                warn(f"cluster {i}: no label ({' '.join(str(result).split())})")
            labels.append(fallback(i))
            continue
        labels.append(clean_label(result.text) or fallback(i))
    return unique(labels)
