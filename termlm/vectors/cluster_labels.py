"""A short label for each cluster, written by the chat model from its central members.

One prompt per cluster holds its members nearest the centre (each cut to
``TEXT_CHARS``), numbered, as the ``{texts}`` of the template ``cluster_label``
(prompts/cluster_label.yaml, or the user's own of that name, or another named
by ``--label-template``); all the prompts go to the engine together
(``complete_many``: a batching engine runs them at once), sampled as the
template's defaults say (greedy, so a run repeats). The member texts are data:
they are substituted once and never read as template markup. A reply is
cleaned to one short line; an empty or failed one gives the cluster the
fallback name ``cluster N``. Labels are unique (a clash gets `` (2)``,
`` (3)``...), so they can be a label set for ``termlm classify --labels-from``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from termlm.engine.types import ChatRequest, Engine, Message, SamplingParams
from termlm.errors import UsageError

if TYPE_CHECKING:
    from termlm.prompts import Template

TEMPLATE = "cluster_label"
MEMBERS = 5  # texts per cluster shown to the model
TEXT_CHARS = 300  # of each text
MAX_WORDS = 6
MAX_CHARS = 60
MAX_TOKENS = 24  # unless the template's defaults say otherwise
OUTLIERS = "(outliers)"
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
_FENCE = re.compile(r"(?:`{3,}|~{3,})[\w+-]*")  # a Markdown code fence line: ```text
_QUOTES = re.compile("[\"\u201c\u201d\u00ab\u00bb]")  # double quotes (apostrophes stay)
_FALLBACK = re.compile(r"cluster\s*\d+", re.I)
_LIST_MARK = re.compile(r"^(?:[-*\u2022]\s+|\d+[.)]\s+)")
_MARKUP = re.compile(r"[*_`#]+")
_EDGES = " \t\"'\u201c\u201d\u2018\u2019`.,;:!?-\u2013\u2014()[]{}<>"


def fallback(cluster: int) -> str:
    return f"cluster {cluster}"


def flat(text: str, chars: int = TEXT_CHARS) -> str:
    """``text`` on one line, cut to ``chars`` characters."""
    one = " ".join(text.split())
    return one if len(one) <= chars else one[: chars - 1].rstrip() + "\u2026"


def label_template(name: str = TEMPLATE) -> Template:
    """The label prompt (a usage error, before any model loads, if it cannot show the
    texts: it must have ``{texts}`` and no other variable)."""
    from termlm.prompts import load_template, variables_in

    template = load_template(name)
    names = set(template.variables)
    if template.system:
        names |= set(variables_in(template.system, name))
    if "texts" not in names:
        raise UsageError(f"template {name!r} has no {{texts}}: the cluster's texts would not "
                         "be in the prompt", hint="put {texts} in its user prompt")
    other = sorted(names - {"texts"})
    if other:
        raise UsageError(f"template {name!r} needs {{{other[0]}}}, which cluster labels do "
                         "not give", hint="a label template gets {texts} only")
    return template


def label_messages(template: Template, texts: Sequence[str],
                   chars: int = TEXT_CHARS) -> tuple[Message, ...]:
    listing = "\n".join(f"{i}. {flat(t, chars)}" for i, t in enumerate(texts, 1))
    values = {"texts": listing}  # substituted once: nothing in the texts is interpreted
    system = template.render_system(values)
    user = Message("user", template.render_user(values))
    return (Message("system", system), user) if system else (user,)


def _fitting(engine: Engine, template: Template, texts: Sequence[str],
             reply_tokens: int) -> tuple[Message, ...]:
    """The prompt for ``texts``, with fewer or shorter texts until it fits the context."""
    limit = engine.info.n_ctx - reply_tokens
    shown = list(texts[:MEMBERS])
    chars = TEXT_CHARS
    messages = label_messages(template, shown, chars)
    while engine.count_prompt_tokens(messages) > limit:
        if len(shown) > 1:
            shown.pop()
        elif chars > 60:
            chars //= 2
        else:
            break  # the engine says what is wrong; the cluster keeps its fallback name
        messages = label_messages(template, shown, chars)
    return messages


def clean_label(reply: str) -> str | None:
    """The label in a model's reply: its first line (past a code fence), without quotes,
    list marks, "Label:" and trailing punctuation, at most ``MAX_WORDS`` words and
    ``MAX_CHARS`` characters; None if nothing is left, or only a fallback-like name."""
    line = next((ln.strip() for ln in reply.splitlines()
                 if ln.strip() and not _FENCE.fullmatch(ln.strip())), "")
    line = _MARKUP.sub("", line).strip()
    line = _LIST_MARK.sub("", line)
    line = _PREFIX.sub("", line.strip(_EDGES + "*")).strip(_EDGES)
    line = _PREAMBLE.sub("", line).strip(_EDGES)
    words = line.split()[:MAX_WORDS]
    while words and words[-1].casefold().strip(_EDGES) in _DANGLING:  # cut mid-phrase
        words.pop()
    if len(words) > 1 and words[0].casefold() in ("a", "an"):
        words.pop(0)
    label = _QUOTES.sub("", " ".join(words)).strip(_EDGES)  # "the topic of "I": no stray "
    if len(label) > MAX_CHARS:
        label = label[:MAX_CHARS].rsplit(" ", 1)[0] if " " in label[:MAX_CHARS] \
            else label[:MAX_CHARS]
    if not re.search(r"\w", label) or label.casefold() == OUTLIERS.strip("()") or \
            _FALLBACK.fullmatch(label):  # "cluster 3" would clash with the fallback names
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
                   template: Template | None = None, seed: int | None = None,
                   warn: Callable[[str], None] | None = None) -> list[str]:
    """One label per group of central texts (nearest the centre first)."""
    from termlm.engine.types import complete_many

    template = template or label_template()
    sampling = template.sampling(SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                                seed=seed))
    reply_tokens = sampling.max_tokens
    requests = [ChatRequest(_fitting(engine, template, texts, reply_tokens), sampling)
                for texts in groups]
    labels: list[str] = []
    for i, result in enumerate(complete_many(engine, requests)):
        if isinstance(result, Exception):
            if warn is not None:
                warn(f"cluster {i}: no label ({' '.join(str(result).split())})")
            labels.append(fallback(i))
            continue
        labels.append(clean_label(result.text) or fallback(i))
    return unique(labels)
