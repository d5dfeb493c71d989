"""Quality scores for `termlm eval`: the outputs of a real command against gold data.

Pure functions over records (dicts): no model, no files. Each returns a flat mapping
of metric -> value in [0, 1] (chrF in [0, 100]), and names its headline metric in
:data:`PRIMARY`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PRIMARY = {"classify": "accuracy", "extract": "field_match", "translate": "chrf",
           "qa": "qa_score"}

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize(value: Any) -> str:
    """Case, accents' composition, punctuation and spacing folded: "  Lyon, France." ->
    "lyon france"."""
    text = unicodedata.normalize("NFKC", "" if value is None else str(value)).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def _share(hits: int, total: int) -> float:
    return round(hits / total, 4) if total else 0.0


def score_classify(outputs: Sequence[Mapping[str, Any]], golds: Sequence[Any],
                   labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro-F1 and the share of valid labels (classify's output is always one)."""
    from termlm.tasks.metrics import GoldReport

    report = GoldReport(list(labels))
    valid = 0
    for out, gold in zip(outputs, golds, strict=True):
        label = out.get("label")
        valid += label in labels
        report.add(gold, str(label) if label in labels else "(no label)")
    data = report.to_dict()
    return {"accuracy": data["accuracy"], "macro_f1": data["macro_f1"],
            "valid_labels": _share(valid, len(outputs))}


def score_extract(outputs: Sequence[Mapping[str, Any]], golds: Sequence[Mapping[str, Any]],
                  schema: Mapping[str, Any]) -> dict[str, float]:
    """Per field: exact and normalised match against the gold JSON; schema validity.

    A record that failed (no ``data``) counts as wrong on every gold field.
    """
    import jsonschema

    exact = normal = fields = valid = 0
    per_field: dict[str, list[int]] = {}
    for out, gold in zip(outputs, golds, strict=True):
        data = out.get("data")
        if isinstance(data, dict):
            try:
                jsonschema.validate(data, schema)
                valid += 1
            except jsonschema.ValidationError:
                pass
        got = data if isinstance(data, dict) else {}
        for key, want in gold.items():
            fields += 1
            value = got.get(key)
            is_exact = value == want or (value in (None, "") and want in (None, ""))
            is_normal = is_exact or (want is not None and normalize(value) == normalize(want))
            exact += is_exact
            normal += is_normal
            per_field.setdefault(key, []).append(int(is_normal))
    result = {"field_match": _share(normal, fields), "exact_match": _share(exact, fields),
              "schema_valid": _share(valid, len(outputs))}
    for key, hits in per_field.items():
        result[f"match:{key}"] = _share(sum(hits), len(hits))
    return result


def score_translate(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """chrF (sacrebleu's corpus chrF, 0-100) and the share of lines translated at all."""
    import sacrebleu

    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score
    changed = sum(1 for h in hypotheses if h.strip())
    return {"chrf": round(float(chrf), 2), "nonempty": _share(changed, len(hypotheses))}


def _cites(citations: Iterable[Mapping[str, Any]], source: str) -> bool:
    want = source.replace("\\", "/").rsplit("/", 1)[-1]
    return any(str(c.get("path", "")).replace("\\", "/").rsplit("/", 1)[-1] == want
               for c in citations)


def score_qa(outputs: Sequence[Mapping[str, Any]], golds: Sequence[Mapping[str, Any]]
             ) -> dict[str, float]:
    """Answer match (the gold answer, normalised, inside the answer), citation correctness
    (the gold source among the citations) and "not found" on unanswerable questions.

    ``qa_score`` is the share of questions handled right: answered with the gold answer,
    or (unanswerable) reported as not found.
    """
    answered = matched = cited_total = cited = unanswerable = declined = wrongly_declined = 0
    for out, gold in zip(outputs, golds, strict=True):
        want, source = gold.get("answer"), gold.get("source")
        found = bool(out.get("found")) and "error" not in out
        if want in (None, ""):
            unanswerable += 1
            declined += not found
            continue
        answered += 1
        if not found:
            wrongly_declined += 1
            continue
        matched += normalize(want) in normalize(out.get("answer", ""))
        if source:
            cited_total += 1
            cited += _cites(out.get("citations") or [], str(source))
    total = answered + unanswerable
    return {"qa_score": _share(matched + declined, total),
            "answer_match": _share(matched, answered),
            "citation_correct": _share(cited, cited_total),
            "not_found_when_unanswerable": _share(declined, unanswerable),
            "not_found_when_answerable": _share(wrongly_declined, answered)}


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (quality, speed) points no other point beats on both (higher is better)."""
    front = []
    for i, (q, s) in enumerate(points):
        dominated = any((q2 >= q and s2 >= s) and (q2 > q or s2 > s)
                        for j, (q2, s2) in enumerate(points) if j != i)
        front.append(not dominated)
    return front
