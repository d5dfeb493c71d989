"""`classify`: pick labels by scoring each one under the model, never by parsing free text.

Each label's full token sequence (plus the end of the reply, so labels that
share a prefix differ) is scored as the assistant's answer; the scores are
normalised over the label set into probabilities. Whatever the record says,
the answer is one of the labels. The instructions, label list and examples
form the system message, a prefix shared by every record, which the engine
keeps in its cache instead of evaluating it again for each record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from termlm.engine.types import Completion, Engine, Message, Score, ScoreRequest
from termlm.errors import UsageError
from termlm.inputs import read_text_input
from termlm.prompts import Template
from termlm.records.types import Record
from termlm.tasks.base import record_values


@dataclass(frozen=True)
class Label:
    name: str
    description: str = ""
    examples: tuple[str, ...] = ()


def parse_labels(text: str) -> list[Label]:
    names = [part.strip() for part in text.split(",")]
    return _checked([Label(n) for n in names if n])


def load_labels_file(path: Path) -> list[Label]:
    import yaml

    from termlm import yamlfile

    try:
        # text only: every scalar is text, so labels such as yes/no/on/1.0 stay as written
        data = yamlfile.load(read_text_input(path), text_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"labels file {path}: {yamlfile.reason(exc)}") from None
    if isinstance(data, list):
        if not all(isinstance(item, str) for item in data):
            raise UsageError(f"labels file {path}: every label must be text (a list of "
                             "strings, or a mapping of label to description)")
        return _checked([Label(item.strip()) for item in data])
    if not isinstance(data, dict):
        raise UsageError(f"labels file {path} must map each label to a description")
    labels = []
    for name, spec in data.items():
        if spec is None or isinstance(spec, str):
            labels.append(Label(str(name).strip(), (spec or "").strip()))
        elif isinstance(spec, dict):
            unknown = set(spec) - {"description", "examples"}
            if unknown:
                raise UsageError(f"labels file {path}: label {name!r} has unknown key "
                                 f"{sorted(unknown)[0]!r} (use description, examples)")
            examples = spec.get("examples") or []
            description = spec.get("description") or ""
            if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
                raise UsageError(f"labels file {path}: examples of {name!r} must be a list "
                                 "of texts")
            if not isinstance(description, str):
                raise UsageError(f"labels file {path}: the description of {name!r} must be "
                                 "text")
            labels.append(Label(str(name).strip(), description.strip(), tuple(examples)))
        else:
            raise UsageError(f"labels file {path}: label {name!r} needs a description or a "
                             "mapping with description/examples")
    return _checked(labels)


def load_labels_json(path: Path) -> list[Label]:
    """Labels from JSON: a list of strings, or ``termlm cluster --summary-json``'s file
    (its clusters' labels, in order; the outliers entry, ``cluster: null``, left out)."""
    import json

    try:
        data = json.loads(read_text_input(path))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"labels file {path} is not valid JSON (line {exc.lineno}: "
                         f"{exc.msg})") from None
    shape = f"labels file {path} must be a JSON list of labels or termlm cluster's " \
        "--summary-json"
    if isinstance(data, dict):
        clusters = data.get("clusters")
        if not isinstance(clusters, list) or not all(isinstance(c, dict) for c in clusters):
            raise UsageError(shape)
        names = [c.get("label") for c in clusters if c.get("cluster") is not None]
    elif isinstance(data, list):
        names = data
    else:
        raise UsageError(shape)
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise UsageError(f"labels file {path}: every label must be non-empty text")
    if len(names) < 2:
        raise UsageError(f"labels file {path} has {len(names)} label"
                         f"{'' if len(names) == 1 else 's'}: give at least two")
    return _checked([Label(name.strip()) for name in names])


def _checked(labels: list[Label]) -> list[Label]:
    names = [label.name for label in labels]
    if len(names) < 2 or any(not n for n in names):
        raise UsageError("give at least two non-empty labels",
                         hint="--labels positive,negative or --labels-file labels.yaml")
    seen: set[str] = set()
    for name in names:
        if name.casefold() in seen:
            raise UsageError(f"label {name!r} is listed twice")
        seen.add(name.casefold())
    return labels


CONTENT_FREE = ("N/A", "", "[MASK]")  # the content-free inputs of Zhao et al. (2021)


def softmax(logprobs: list[float]) -> list[float]:
    top = max(logprobs)
    if top == -math.inf:  # no label is possible at all: no preference (not NaN)
        return [1.0 / len(logprobs)] * len(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True)
class ClassifyTask:
    labels: tuple[Label, ...]
    template: Template
    multi_label: bool = False
    threshold: float = 0.5
    name: str = "classify"
    calibrate: bool = False
    _system: list[str] = field(default_factory=list, compare=False)
    _prior: list[float] = field(default_factory=list, compare=False)  # set by calibrate_on

    def system_text(self) -> str:
        if not self._system:
            details = ""
            if any(label.description for label in self.labels):
                details = "\n\nLabels:\n" + "\n".join(
                    f"- {label.name}" + (f": {label.description}" if label.description else "")
                    for label in self.labels)
            examples = [f'Text: "{ex}"\nLabel: {label.name}'
                        for label in self.labels for ex in label.examples]
            values = {"label_names": ", ".join(label.name for label in self.labels),
                      "labels": "\n".join(f"- {label.name}" for label in self.labels),
                      "details": details,
                      "examples": ("\n\nExamples:\n" + "\n\n".join(examples))
                      if examples else ""}
            self._system.append((self.template.render_system(values) or "").strip())
        return self._system[0]

    @property
    def needs_end(self) -> bool:
        """Score the end of the reply too when one label starts another ("hot", "hotter").

        Otherwise a label's own tokens decide, which small models get right more often
        than a label followed by the end-of-turn token.
        """
        names = [label.name.casefold() for label in self.labels]
        return any(a != b and b.startswith(a) for a in names for b in names)

    def messages(self, text: str, record: Record) -> tuple[Message, ...]:
        user = self.template.render_user(record_values(text, record))
        return (Message("system", self.system_text()), Message("user", user))

    def reserve(self, engine: Engine) -> int:
        return max(engine.count_tokens(label.name) for label in self.labels) + 2

    @property
    def kind(self) -> str:
        return "score"

    def request(self, engine: Engine, messages: tuple[Message, ...], record: Record | None
                ) -> ScoreRequest:
        names = tuple(label.name for label in self.labels)
        return ScoreRequest(messages, names, terminate=self.needs_end)

    def calibrate_on(self, engine: Engine) -> list[float]:
        """Score the labels on content-free inputs once: the model's prior over them.

        "Calibrate Before Use" (Zhao et al., 2021): the average label distribution for
        "N/A", "" and "[MASK]"; each record's scores are then divided by it, so a label
        the model favours whatever the text stops winning by default.
        """
        from termlm.engine.types import score_many
        from termlm.errors import EngineError

        requests = [self.request(engine, self.messages(text, Record(id="calibration",
                                                                      text=text)), None)
                    for text in CONTENT_FREE]
        dists = []
        for result in score_many(engine, requests):
            if isinstance(result, Exception):
                raise EngineError(f"cannot calibrate the labels: {result}")
            dists.append(softmax([s.logprob for s in result]))
        prior = [sum(d[i] for d in dists) / len(dists) for i in range(len(self.labels))]
        self._prior[:] = prior
        return prior

    def probabilities(self, result: list[Score]) -> list[float]:
        logprobs = [s.logprob for s in result]
        if self._prior:
            logprobs = [lp - math.log(max(p, 1e-12)) for lp, p in
                        zip(logprobs, self._prior, strict=True)]
        return softmax(logprobs)

    def finish(self, result: Completion | list[Score], record: Record,
               request: object = None) -> dict[str, Any]:
        assert isinstance(result, list)
        names = tuple(label.name for label in self.labels)
        probs = self.probabilities(result)
        table = {name: round(p, 6) for name, p in zip(names, probs, strict=True)}
        best = max(range(len(names)), key=lambda i: probs[i])
        out: dict[str, Any] = {"label": names[best], "confidence": round(probs[best], 6)}
        if self.multi_label:
            out["labels"] = [n for n, p in zip(names, probs, strict=True) if p >= self.threshold]
        out["scores"] = table
        return out

    def run(self, engine: Engine, messages: tuple[Message, ...],
            record: Record) -> dict[str, Any]:
        return self.finish(engine.score(self.request(engine, messages, record)), record)
