"""termlm eval without a model: scoring, the table, variants, bad input, failing runs."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from termlm.evaluate import runs, scoring
from termlm.evaluate.report import markdown_table, summarize
from termlm.evaluate.runs import RunResult, load_variants

from .conftest import Cli


def test_normalize_folds_case_punctuation_and_space() -> None:
    assert scoring.normalize("  Lyon,  FRANCE. ") == "lyon france"
    assert scoring.normalize(None) == ""
    assert scoring.normalize("\uff30\uff41\uff52\uff49\uff53") == "paris"  # NFKC: fullwidth


def test_classify_scores() -> None:
    outs = [{"label": "a"}, {"label": "b"}, {"label": "a"}, {"error": "x"}]
    got = scoring.score_classify(outs, ["a", "a", "a", "b"], ["a", "b"])
    assert got["accuracy"] == 0.5
    assert got["valid_labels"] == 0.75
    assert 0 < got["macro_f1"] < 1


def test_extract_scores_fields_exact_and_normalised() -> None:
    schema = {"type": "object", "properties": {"name": {"type": ["string", "null"]},
                                               "city": {"type": ["string", "null"]}},
              "required": ["name", "city"]}
    outs = [{"data": {"name": "Alice Martin", "city": "lyon"}},
            {"data": {"name": "Bob", "city": None}},
            {"error": "model error"}]
    golds = [{"name": "Alice Martin", "city": "Lyon"}, {"name": "Bob Stone", "city": None},
             {"name": "Carl", "city": "Oslo"}]
    got = scoring.score_extract(outs, golds, schema)
    assert got["exact_match"] == round(2 / 6, 4)  # Alice, the null city
    assert got["field_match"] == 0.5  # and lyon == Lyon
    assert got["schema_valid"] == round(2 / 3, 4)
    assert got["match:city"] == round(2 / 3, 4) and got["match:name"] == round(1 / 3, 4)


def test_translate_uses_sacrebleu_chrf() -> None:
    same = scoring.score_translate(["Le chat dort."], ["Le chat dort."])
    assert same["chrf"] == 100.0
    worse = scoring.score_translate(["Le chien mange."], ["Le chat dort."])
    assert 0 < worse["chrf"] < 60
    assert scoring.score_translate([""], ["Bonjour"])["nonempty"] == 0.0


def test_qa_scores_answers_citations_and_not_found() -> None:
    golds = [{"answer": "42 metres", "source": "docs/a.md"},
             {"answer": "blue", "source": "b.md"},
             {"answer": None, "source": None},
             {"answer": None, "source": None}]
    outs = [{"answer": "It is 42 metres tall [a.md:3-4].", "found": True,
             "citations": [{"path": "a.md"}]},
            {"answer": "I could not find that.", "found": False, "citations": []},
            {"answer": "not found", "found": False},
            {"answer": "Red.", "found": True, "citations": [{"path": "b.md"}]}]
    got = scoring.score_qa(outs, golds)
    assert got["answer_match"] == 0.5
    assert got["citation_correct"] == 1.0  # of the answers given with a gold source
    assert got["not_found_when_unanswerable"] == 0.5
    assert got["not_found_when_answerable"] == 0.5
    assert got["qa_score"] == 0.5  # q1 right, q3 right


def test_pareto_front() -> None:
    assert scoring.pareto([(0.9, 1.0), (0.5, 5.0), (0.4, 4.0), (0.9, 1.0)]) == [
        True, True, False, True]


def _result(model: str, accuracy: float, rps: float, ok: bool = True) -> RunResult:
    return RunResult(model, "default", ok, None if ok else "llama.cpp crashed (SIGSEGV)",
                     {"accuracy": accuracy} if ok else {},
                     {"records": 10, "run_s": 10 / rps, "tokens_evaluated": 100,
                      "load_s": 0.5, "file_size": 10**8, "quant": "Q4_K_M"},
                     wall_s=1.0, peak_rss=300 * 2**20)


def test_table_marks_the_best_and_the_front() -> None:
    results = [_result("small", 0.6, 20.0), _result("big", 0.9, 5.0),
               _result("worse", 0.5, 4.0), _result("broken", 0, 1, ok=False)]
    info = summarize("classify", results)
    assert info["best"]["q:accuracy"] == [1]
    assert info["best"]["records_per_s"] == [0]
    assert info["front"] == {0, 1}
    table = markdown_table("classify", results, 1)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| small |") and rows[1].rstrip().endswith("| * |")
    assert "**0.900**" in rows[2]
    assert rows[3].rstrip().endswith("|  |")
    assert "failed: llama.cpp crashed (SIGSEGV)" in rows[4]


def test_variants_file(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("plain:\ncalibrated:\n  args: [--calibrate]\nterse:\n  template: mine\n")
    variants = load_variants(path)
    assert [(v.name, v.cli_args()) for v in variants] == [
        ("plain", []), ("calibrated", ["--calibrate"]), ("terse", ["--template", "mine"])]
    for text, problem in (("a: {model: x}\n", "template and args only"),
                          ("a: {args: [-m, other]}\n", "eval's to set"),
                          ("[1, 2]\n", "must map variant names"),
                          ("a: [\n", "not valid YAML")):
        path.write_text(text)
        with pytest.raises(Exception, match=problem):
            load_variants(path)


@pytest.mark.parametrize(("content", "message"), [
    ('{"id": "1", "text": "a", "label": "x"}\n{"id": 2, "text": \n', "line 2: not valid JSON"),
    ('["not", "an", "object"]\n', "line 1: a record must be a JSON object"),
    ('{"id": "1", "text": "a", "label": "x"}\n{"id": "1", "text": "b", "label": "y"}\n',
     "id '1' appears twice"),
    ('{"id": "1", "label": "x"}\n', "has no 'text' field"),
    ('{"id": "1", "text": "a"}\n', "has no 'label' field"),
    ("", "no records"),
])
def test_bad_data_is_one_line(cli: Cli, tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    result = cli("eval", "classify", str(data), "-l", "x,y", "-m", "smollm2")
    assert result.exit_code in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_binary_missing_and_special_files(cli: Cli, tmp_path: Path) -> None:
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x00\x01\x02")
    assert "binary data" in cli("eval", "classify", str(binary), "-l", "x,y").stderr
    assert "no such file" in cli("eval", "classify", str(tmp_path / "nope.jsonl"),
                                 "-l", "x,y").stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = cli("eval", "classify", str(fifo), "-l", "x,y")
    assert result.exit_code == 1 and "not a regular file" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["classify", "-m", "x"], "needs --labels"),
    (["extract", "-m", "x"], "needs --fields"),
    (["translate", "-m", "x"], "needs --to"),
    (["qa", "-m", "x"], "needs --docs"),
])
def test_each_task_names_what_it_needs(cli: Cli, tmp_path: Path, args: list[str],
                                       message: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "text": "a", "question": "q", "label": "x", "gold": {}, '
                    '"reference": "r", "answer": "a"}\n')
    task, *rest = args
    result = cli("eval", task, str(data), *rest)
    assert result.exit_code == 2 and message in result.stderr


FAKE_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    args = sys.argv[1:]
    model = args[args.index("-m") + 1]
    if model == "crashes":
        os.kill(os.getpid(), signal.SIGSEGV)
    if model == "refuses":
        sys.stderr.write("termlm: error: unknown model 'refuses'\\n")
        sys.exit(1)
    data, out = args[1], args[args.index("-o") + 1]
    rows = [json.loads(line) for line in open(data)]
    with open(out, "w") as fh:
        for row in rows:  # "good" answers positive always; the gold is in the text
            label = "positive" if model == "good" or "neg" not in row["text"] else "negative"
            fh.write(json.dumps({"id": row["id"], "label": "positive"
                                 if model == "good" else label}) + "\\n")
    with open(os.environ["TERMLM_RUN_STATS"], "w") as fh:
        json.dump({"records": len(rows), "run_s": 2.0, "tokens_evaluated": 50,
                   "load_s": 0.1, "quant": "Q8_0", "file_size": 1000}, fh)
    """)


def test_failing_runs_are_reported_and_the_rest_still_run(cli: Cli, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    child = tmp_path / "child.py"
    child.write_text(FAKE_CHILD)
    monkeypatch.setattr(runs, "CHILD", [sys.executable, str(child)])
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "text": "neg one", "label": "negative"}\n'
                    '{"id": "2", "text": "pos two", "label": "positive"}\n')
    result = cli("eval", "classify", str(data), "-l", "positive,negative", "-m", "reads",
                 "-m", "crashes", "-m", "refuses", "--json")
    assert result.exit_code == 3, result.stderr
    rows = {r["model"]: r for r in json.loads(result.stdout)["results"]}
    assert rows["reads"]["ok"] and rows["reads"]["quality"]["accuracy"] == 1.0
    assert rows["reads"]["speed"]["records_per_s"] == 1.0
    assert rows["reads"]["file"]["quant"] == "Q8_0"
    assert rows["crashes"]["error"] == "llama.cpp crashed (SIGSEGV)"
    assert rows["refuses"]["error"] == "termlm: error: unknown model 'refuses'"
    assert "eval 2/3: crashes" in result.stderr


def test_every_run_failing_is_exit_1(cli: Cli, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    child = tmp_path / "child.py"
    child.write_text(FAKE_CHILD)
    monkeypatch.setattr(runs, "CHILD", [sys.executable, str(child)])
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "text": "x", "label": "positive"}\n')
    report = tmp_path / "r.json"
    result = cli("eval", "classify", str(data), "-l", "positive,negative", "-m", "crashes",
                 "--report", str(report))
    assert result.exit_code == 1
    assert "failed: llama.cpp crashed (SIGSEGV)" in result.stdout
    assert json.loads(report.read_text())["results"][0]["ok"] is False


def test_calibrate_scores_content_free_inputs_first(tmp_path: Path) -> None:
    from termlm.engine.fake import FakeEngine
    from termlm.tasks.classify import CONTENT_FREE

    from .conftest import Cli as RealCli

    engine = FakeEngine(scores={"yes": -0.1, "no": -3.0})
    cli = RealCli(engine)
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "text": "anything"}\n')
    plain = cli("classify", "-l", "yes,no", str(data))
    assert json.loads(plain.stdout)["label"] == "yes"
    assert json.loads(plain.stdout)["confidence"] > 0.9
    engine.requests.clear()
    calibrated = cli("classify", "-l", "yes,no", "--calibrate", str(data))
    assert calibrated.exit_code == 0, calibrated.stderr
    assert "calibrated: prior yes 0.948, no 0.052" in calibrated.stderr
    out = json.loads(calibrated.stdout)
    # the fake scores every text alike, so after dividing by the prior nothing is left
    assert out["scores"] == {"yes": 0.5, "no": 0.5}
    firsts = [r.messages[-1].content for r in engine.requests[:3]]
    assert all(cf in text for cf, text in zip(CONTENT_FREE, firsts, strict=True))
    assert "anything" in engine.requests[3].messages[-1].content
