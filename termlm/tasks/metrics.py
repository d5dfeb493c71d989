"""Accuracy, macro-F1, per-label precision/recall and a confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GoldReport:
    labels: list[str]
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (gold, predicted)
    missing_gold: int = 0

    def add(self, gold: Any, predicted: str) -> None:
        if gold is None or str(gold).strip() == "":
            self.missing_gold += 1
            return
        text = str(gold).strip()
        by_case = {name.casefold(): name for name in self.labels}
        self.pairs.append((by_case.get(text.casefold(), text), predicted))

    def to_dict(self) -> dict[str, Any]:
        names = list(self.labels)
        for pair in self.pairs:
            for name in pair:  # a gold label outside the label set still counts, and so
                if name not in names:  # does a failed prediction (eval's "(no label)")
                    names.append(name)
        matrix = {g: {p: 0 for p in names} for g in names}
        for gold, predicted in self.pairs:
            matrix[gold][predicted] += 1
        per_label: dict[str, dict[str, float | int]] = {}
        f1s = []
        for name in names:
            tp = matrix[name][name]
            fp = sum(matrix[g][name] for g in names if g != name)
            fn = sum(matrix[name][p] for p in names if p != name)
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_label[name] = {"precision": round(precision, 4), "recall": round(recall, 4),
                               "f1": round(f1, 4), "support": tp + fn}
            if tp + fn or tp + fp:
                f1s.append(f1)
        correct = sum(1 for g, p in self.pairs if g == p)
        total = len(self.pairs)
        return {
            "records": total,
            "missing_gold": self.missing_gold,
            "accuracy": round(correct / total, 4) if total else 0.0,
            "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0,
            "per_label": per_label,
            "confusion": matrix,
        }


def render_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables, for stderr."""
    names = list(report["per_label"])
    width = max([len(n) for n in names] + [5])
    lines = [f"accuracy {report['accuracy']:.3f}   macro-F1 {report['macro_f1']:.3f}   "
             f"records {report['records']}"
             + (f"   without gold {report['missing_gold']}" if report["missing_gold"] else ""),
             "", f"{'label':<{width}}  precision  recall  f1     support"]
    for name in names:
        row = report["per_label"][name]
        lines.append(f"{name:<{width}}  {row['precision']:<9.3f}  {row['recall']:<6.3f}  "
                     f"{row['f1']:<5.3f}  {row['support']}")
    lines += ["", "confusion (rows: gold, columns: predicted)",
              " " * width + "  " + "  ".join(f"{n:>{max(len(n), 4)}}" for n in names)]
    for gold in names:
        cells = "  ".join(f"{report['confusion'][gold][p]:>{max(len(p), 4)}}" for p in names)
        lines.append(f"{gold:<{width}}  {cells}")
    return "\n".join(lines)
