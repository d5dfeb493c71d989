"""The pure parts of the tasks: metrics, softmax, labels, schemas, prompt fitting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from termlm.engine.fake import FakeEngine
from termlm.engine.types import SamplingParams
from termlm.errors import TermlmError, UsageError
from termlm.records.types import Record
from termlm.runner import fit_text, prepare
from termlm.tasks.base import RecordError, record_values
from termlm.tasks.classify import Label, load_labels_file, parse_labels, softmax
from termlm.tasks.generate import GenerateTask
from termlm.tasks.metrics import GoldReport, render_report
from termlm.tasks.schema import check_schema, schema_from_fields, validate_instance

# -- metrics ------------------------------------------------------------------------

PAIRS = [  # (gold, predicted)
    ("pos", "pos"), ("pos", "pos"), ("pos", "pos"), ("pos", "neg"),
    ("neg", "neg"), ("neg", "pos"), ("neg", "pos"),
]


def _report(pairs: list[tuple[str, str]], labels: list[str]) -> GoldReport:
    report = GoldReport(labels)
    for gold, predicted in pairs:
        report.add(gold, predicted)
    return report


def test_gold_report_hand_computed() -> None:
    data = _report(PAIRS, ["pos", "neg", "neutral"]).to_dict()
    assert data["records"] == 7
    assert data["accuracy"] == round(4 / 7, 4)
    # pos: tp 3, fp 2, fn 1; neg: tp 1, fp 1, fn 2; neutral: never seen, not averaged
    assert data["per_label"]["pos"] == {"precision": 0.6, "recall": 0.75,
                                        "f1": round(2 / 3, 4), "support": 4}
    assert data["per_label"]["neg"] == {"precision": 0.5, "recall": round(1 / 3, 4),
                                        "f1": 0.4, "support": 3}
    assert data["per_label"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                            "support": 0}
    assert data["macro_f1"] == round((2 / 3 + 0.4) / 2, 4)
    assert data["confusion"] == {
        "pos": {"pos": 3, "neg": 1, "neutral": 0},
        "neg": {"pos": 2, "neg": 1, "neutral": 0},
        "neutral": {"pos": 0, "neg": 0, "neutral": 0},
    }


def test_gold_report_perfect_and_empty() -> None:
    perfect = _report([("a", "a"), ("b", "b"), ("b", "b")], ["a", "b"]).to_dict()
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    empty = GoldReport(["a", "b"]).to_dict()
    assert empty["records"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0


def test_gold_report_missing_and_unknown_gold() -> None:
    report = GoldReport(["a", "b"])
    report.add(None, "a")
    report.add("  ", "b")
    report.add(" a ", "a")  # stripped
    report.add("c", "a")  # a gold label outside the label set still counts (as a miss)
    data = report.to_dict()
    assert data["missing_gold"] == 2
    assert data["records"] == 2
    assert data["accuracy"] == 0.5
    assert data["confusion"]["c"] == {"a": 1, "b": 0, "c": 0}
    assert data["per_label"]["c"]["support"] == 1
    # a: p 1/2, r 1, f1 2/3; c: f1 0; b: unseen, left out of the average
    assert data["macro_f1"] == round((2 / 3 + 0.0) / 2, 4)


def test_render_report_shows_the_numbers() -> None:
    text = render_report(_report(PAIRS, ["pos", "neg"]).to_dict())
    assert "accuracy 0.571" in text
    assert "macro-F1 0.533" in text
    assert "confusion (rows: gold, columns: predicted)" in text
    pos_row = next(line for line in text.splitlines()
                   if line.startswith("pos") and "0.600" in line)
    assert pos_row.split() == ["pos", "0.600", "0.750", "0.667", "4"]


# -- softmax --------------------------------------------------------------------------

def test_softmax_normalises_and_keeps_order() -> None:
    probs = softmax([math.log(0.2), math.log(0.6), math.log(0.2)])
    assert probs == pytest.approx([0.2, 0.6, 0.2])
    assert math.isclose(sum(probs), 1.0)


def test_softmax_is_stable_for_extreme_scores() -> None:
    probs = softmax([-1000.0, -1001.0])
    assert probs == pytest.approx([1 / (1 + math.exp(-1)), 1 - 1 / (1 + math.exp(-1))])
    assert softmax([800.0, 0.0]) == pytest.approx([1.0, 0.0])
    assert softmax([-math.inf, -3.0]) == [0.0, 1.0]


def test_softmax_all_impossible_is_uniform_not_nan() -> None:
    assert softmax([-math.inf, -math.inf]) == [0.5, 0.5]


def test_softmax_of_one() -> None:
    assert softmax([-7.0]) == [1.0]


# -- labels -------------------------------------------------------------------------

def test_parse_labels_strips_and_drops_empty_pieces() -> None:
    labels = parse_labels(" pos , neg,,neutral ,")
    assert [label.name for label in labels] == ["pos", "neg", "neutral"]
    assert all(label.description == "" and label.examples == () for label in labels)


@pytest.mark.parametrize("text", ["", "one", ",,", "a,A", "x,y,x"])
def test_parse_labels_rejects_too_few_or_duplicates(text: str) -> None:
    with pytest.raises(UsageError):
        parse_labels(text)


def test_load_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.yaml"
    path.write_text("bug:\n  description: broken\n  examples: [it crashes, error 500]\n"
                    "docs: a documentation change\nother:\n", encoding="utf-8")
    assert load_labels_file(path) == [
        Label("bug", "broken", ("it crashes", "error 500")),
        Label("docs", "a documentation change"),
        Label("other", ""),
    ]


def test_load_labels_file_keeps_yaml_scalars_as_text(tmp_path: Path) -> None:
    path = tmp_path / "labels.yaml"
    path.write_text("yes: agrees\nno: false\n010: a code\n", encoding="utf-8")
    assert load_labels_file(path) == [Label("yes", "agrees"), Label("no", "false"),
                                      Label("010", "a code")]


# -- schemas ------------------------------------------------------------------------

def test_schema_from_fields() -> None:
    schema = schema_from_fields([" name", "date ", ""])
    assert schema == {
        "type": "object",
        "properties": {"name": {"type": ["string", "null"]},
                       "date": {"type": ["string", "null"]}},
        "required": ["name", "date"],
        "additionalProperties": False,
    }
    check_schema(schema, "fields")
    validate_instance({"name": "Ann", "date": None}, schema)
    for bad in ({"name": "Ann"}, {"name": 1, "date": None}, {"name": "A", "date": None, "x": 1}):
        with pytest.raises(RecordError):
            validate_instance(bad, schema)


@pytest.mark.parametrize("names", [[], [" ", ""], ["a", "b", "a"]])
def test_schema_from_fields_rejects_empty_and_duplicates(names: list[str]) -> None:
    with pytest.raises(UsageError):
        schema_from_fields(names)


def test_check_schema_rejects_invalid_schemas() -> None:
    with pytest.raises(UsageError, match="not a valid JSON schema at type"):
        check_schema({"type": 5}, "s.json")
    with pytest.raises(UsageError, match="must be an object"):
        check_schema([], "s.json")


# -- record values ----------------------------------------------------------------

def test_record_values_are_text() -> None:
    record = Record("r1", "body", {"n": 3, "tags": ["a"], "none": None, "s": "x",
                                   "text": "field text", "id": "field id"})
    values = record_values("the text", record)
    assert values == {"n": "3", "tags": '["a"]', "none": "", "s": "x", "text": "the text",
                      "id": "r1"}


# -- fitting a record into the context ------------------------------------------------

def _task(max_tokens: int = 10) -> GenerateTask:
    return GenerateTask(user="Q: {text}", system=None,
                        sampling=SamplingParams(max_tokens=max_tokens))


def _fits(engine: FakeEngine, task: GenerateTask, record: Record, text: str,
          budget: int) -> bool:
    return engine.count_prompt_tokens(task.messages(text, record)) <= budget


@pytest.mark.parametrize("budget", [7, 8, 9, 12, 20, 200])
def test_fit_text_finds_the_longest_prefix_that_fits(budget: int) -> None:
    engine = FakeEngine()
    task = _task()
    text = "alpha beta  gamma delta epsilon zeta eta theta iota kappa lambda"
    record = Record("1", text)
    cut, n_tokens = fit_text(engine, task, record, text, budget)
    assert text.startswith(cut)
    longest = max((n for n in range(len(text) + 1)
                   if _fits(engine, task, record, text[:n], budget)), default=0)
    assert len(cut) == longest
    assert n_tokens == engine.count_prompt_tokens(task.messages(cut, record))
    assert n_tokens <= budget or cut == ""


def test_prepare_passes_errors_or_truncates() -> None:
    engine = FakeEngine(n_ctx=30)
    task = _task(max_tokens=10)  # budget 20: "Q:" + words + 4 + 2 -> 13 words fit
    short = Record("s", "a few words")
    messages, n_tokens, truncated = prepare(engine, task, short, "error")
    assert (n_tokens, truncated) == (1 + 3 + 4 + 2, False)
    assert messages[-1].content == "Q: a few words"
    long = Record("l", " ".join(f"w{i}" for i in range(40)))
    with pytest.raises(TermlmError, match="record is 47 tokens, more than the limit of 20"):
        prepare(engine, task, long, "error")
    messages, n_tokens, truncated = prepare(engine, task, long, "truncate")
    assert truncated and n_tokens == 20
    assert messages[-1].content.split()[1:] == [f"w{i}" for i in range(13)]


def test_prepare_when_nothing_fits() -> None:
    engine = FakeEngine(n_ctx=12)
    with pytest.raises(TermlmError, match="even an empty record"):
        prepare(engine, _task(max_tokens=10), Record("x", "some text"), "truncate")
