"""termlm cluster on the FakeEmbedder (bag of words) and the FakeEngine (label replies).

The real MiniLM model's tests are in
test_embed_model.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.embedding import FakeEmbedder
from termlm.engine.fake import FakeBatchingEngine, FakeEngine
from termlm.engine.types import ChatRequest, ScoreRequest
from termlm.errors import UsageError
from termlm.vectors.cluster import ClusterOptions, cluster, parse_k_range
from termlm.vectors.cluster_labels import clean_label, label_messages, label_template, unique
from termlm.vectors.cluster_report import gold_scores

from .conftest import Result

VOCAB = {
    "baking": ["bread", "dough", "oven", "flour", "yeast", "knead", "loaf", "crust"],
    "space": ["rocket", "orbit", "planet", "launch", "moon", "astronaut", "telescope", "comet"],
    "football": ["goal", "striker", "match", "referee", "penalty", "league", "stadium",
                 "keeper"],
}


def topic_texts(topic: str, count: int = 6) -> list[str]:
    words = VOCAB[topic]
    return [" ".join(words[(i + j) % len(words)] for j in range(5)) for i in range(count)]


def topic_rows(interleave: bool = False) -> list[dict[str, str]]:
    rows = [{"id": f"{topic[0]}{i}", "text": text, "topic": topic}
            for topic in VOCAB for i, text in enumerate(topic_texts(topic))]
    if interleave:  # b0 s0 f0 b1 s1 f1 ...: input order is not topic order
        rows = [rows[i + 6 * t] for i in range(6) for t in range(3)]
    return rows


class Runs:
    """The CLI with a FakeEmbedder (embedding) and a FakeEngine (labels) behind it."""

    def __init__(self, engine: FakeEngine | None = None) -> None:
        self.embedder = FakeEmbedder()
        self.engine = engine or FakeEngine()
        self.engines_opened = 0

    def __call__(self, *args: str, input: str | None = None) -> Result:
        def engine_factory(settings: Any) -> FakeEngine:
            self.engines_opened += 1
            return self.engine

        def embedder_factory(settings: Any, pooling: str | None) -> FakeEmbedder:
            return self.embedder

        result = CliRunner().invoke(app, list(args), input=input, obj=AppState(
            engine_factory=engine_factory, embedder_factory=embedder_factory))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def run() -> Runs:
    return Runs()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write_jsonl(name: str, rows: list[dict[str, Any]]) -> str:
    Path(name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return name


def parse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def chats(engine: FakeEngine) -> list[ChatRequest]:
    return [r for r in engine.requests if isinstance(r, ChatRequest)]


def by_topic(out: list[dict[str, Any]], rows: list[dict[str, str]]) -> dict[str, set[Any]]:
    topics = {r["id"]: r["topic"] for r in rows}
    found: dict[str, set[Any]] = {}
    for line in out:
        found.setdefault(topics[line["id"]], set()).add(line["cluster"])
    return found


# -- the command ---------------------------------------------------------------------


def test_separated_topics_come_out_as_separate_clusters(run: Runs) -> None:
    rows = topic_rows(interleave=True)
    result = run("cluster", write_jsonl("in.jsonl", rows), "--no-labels")
    assert result.exit_code == 0, result.stderr
    out = parse(result.stdout)
    assert [line["id"] for line in out] == [r["id"] for r in rows]  # input order
    assert all(set(line) == {"id", "cluster", "label", "distance"} for line in out)
    found = by_topic(out, rows)
    assert all(len(clusters) == 1 for clusters in found.values())  # each topic: one cluster
    assert {c for clusters in found.values() for c in clusters} == {0, 1, 2}
    assert all(0.0 <= line["distance"] < 1.0 for line in out)
    assert "3 clusters: k chosen from 2..12 by silhouette" in result.stderr


def test_k_forces_the_number_of_clusters(run: Runs) -> None:
    source = write_jsonl("in.jsonl", topic_rows())
    for k in (2, 4):
        result = run("cluster", source, "-k", str(k), "--no-labels")
        assert result.exit_code == 0, result.stderr
        assert {line["cluster"] for line in parse(result.stdout)} == set(range(k))
        assert f"{k} clusters (k given" in result.stderr


def test_a_run_repeats_and_clusters_are_numbered_by_size(run: Runs) -> None:
    rows = topic_rows()[:6] + topic_rows()[6:10] + topic_rows()[12:14]  # sizes 6, 4, 2
    source = write_jsonl("in.jsonl", rows)
    first = run("cluster", source, "-k", "3", "--no-labels")
    assert first.exit_code == 0, first.stderr
    assert first.stdout == run("cluster", source, "-k", "3", "--no-labels").stdout
    clusters = [line["cluster"] for line in parse(first.stdout)]
    assert clusters == [0] * 6 + [1] * 4 + [2] * 2


def test_density_leaves_an_outlier_unassigned(run: Runs) -> None:
    # the topics share some words, so they are nearer each other than the odd one out
    rows = [{**r, "text": r["text"] + " news today"} for r in topic_rows()]
    rows.append({"id": "odd", "text": "zebra umbrella violin harbour"})
    result = run("cluster", write_jsonl("in.jsonl", rows), "--method", "density",
                 "--min-size", "3", "--no-labels", "--summary-json", "s.json")
    assert result.exit_code == 0, result.stderr
    out = {line["id"]: line for line in parse(result.stdout)}
    assert out["odd"] == {"id": "odd", "cluster": None, "label": "(outliers)",
                          "distance": None}
    assert len({line["cluster"] for key, line in out.items() if key != "odd"}) == 3
    summary = json.loads(Path("s.json").read_text(encoding="utf-8"))
    assert summary["method"] == "density" and summary["outliers"] == 1
    assert summary["clusters"][-1]["cluster"] is None
    assert summary["clusters"][-1]["label"] == "(outliers)"


def test_labels_come_from_the_chat_model_cleaned_and_unique(run: Runs) -> None:
    run.engine.replies.extend(['Label: "Baking Bread."', "**Space travel**\nIt is about...",
                               "baking bread"])
    rows = topic_rows()
    result = run("cluster", write_jsonl("in.jsonl", rows))
    assert result.exit_code == 0, result.stderr
    labels = {line["id"][0]: line["label"] for line in parse(result.stdout)}
    assert labels == {"b": "Baking Bread", "s": "Space travel", "f": "baking bread (2)"}
    requests = chats(run.engine)
    assert len(requests) == 3 and run.engines_opened == 1
    assert all(r.sampling.temperature == 0.0 for r in requests)
    prompt = requests[0].messages[-1].content
    assert sum(text in prompt for text in topic_texts("baking")) == 5  # the 5 most central
    assert not any(text in prompt for text in topic_texts("space"))


def test_an_empty_reply_falls_back_to_the_cluster_number(run: Runs) -> None:
    run.engine.replies.extend(["food", '"..."', "  \n"])
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()))
    assert result.exit_code == 0, result.stderr
    assert [line["label"] for line in parse(result.stdout)][::6] == ["food", "cluster 1",
                                                                     "cluster 2"]


def test_labels_go_through_complete_many_together() -> None:
    engine = FakeBatchingEngine(["a", "b", "c"], parallel=4)
    runs = Runs(engine)
    result = runs("cluster", write_jsonl("in.jsonl", topic_rows()))
    assert result.exit_code == 0, result.stderr
    assert engine.max_in_flight == 3


def test_member_texts_are_data_not_template_markup(run: Runs) -> None:
    markup = " {texts} {oops {{text}} {0.__class__}"
    rows = [{**r, "text": r["text"] + markup} if r["topic"] == "baking" else r
            for r in topic_rows()]
    result = run("cluster", write_jsonl("in.jsonl", rows), "-k", "3")
    assert result.exit_code == 0, result.stderr
    prompt = chats(run.engine)[0].messages[-1].content
    assert prompt.count(markup) == 5 and prompt.count("{texts}") == 5


def _user_template(name: str, body: str) -> None:
    import os

    folder = Path(os.environ["TERMLM_CONFIG_DIR"]) / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(body, encoding="utf-8")


def test_the_label_prompt_is_the_cluster_label_template(run: Runs) -> None:
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "-k", "3")
    assert result.exit_code == 0, result.stderr
    request = chats(run.engine)[0]
    assert request.messages[0].role == "system" and "librarian" in request.messages[0].content
    assert request.messages[-1].content.startswith("Texts from one group:\n\n1. ")
    assert request.sampling.temperature == 0 and request.sampling.max_tokens == 24


def test_a_user_cluster_label_template_replaces_the_builtin(run: Runs) -> None:
    _user_template("cluster_label", "description: mine\nuser: 'Nomme le sujet : {texts}'\n"
                   "defaults: {max_tokens: 8}\n")
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "-k", "3")
    assert result.exit_code == 0, result.stderr
    request = chats(run.engine)[0]
    assert [m.role for m in request.messages] == ["user"]  # the template has no system
    assert request.messages[0].content.startswith("Nomme le sujet : 1. ")
    assert request.sampling.max_tokens == 8


def test_label_template_names_another_template(run: Runs) -> None:
    _user_template("short_names", "description: d\nsystem: One word.\nuser: '{texts}'\n")
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "-k", "3",
                 "--label-template", "short_names")
    assert result.exit_code == 0, result.stderr
    assert chats(run.engine)[0].messages[0].content == "One word."


@pytest.mark.parametrize(("body", "message"), [
    ("description: d\nuser: 'Name the topic.'\n", "has no {texts}"),
    ("description: d\nuser: '{texts} in {language}'\n", "needs {language}"),
])
def test_a_label_template_that_cannot_work_is_refused_before_any_model(
        run: Runs, body: str, message: str) -> None:
    _user_template("bad_label", body)
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "--label-template",
                 "bad_label")
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert run.engines_opened == 0


def test_an_unknown_label_template_is_one_line(run: Runs) -> None:
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "--label-template", "nope")
    assert result.exit_code == 1
    assert "no template named 'nope'" in result.stderr and run.engines_opened == 0


def test_no_labels_calls_no_chat_model(run: Runs) -> None:
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "--no-labels")
    assert result.exit_code == 0, result.stderr
    assert run.engines_opened == 0
    assert {line["label"] for line in parse(result.stdout)} == {"cluster 0", "cluster 1",
                                                                "cluster 2"}


def test_summary_on_stderr_and_summary_json(run: Runs) -> None:
    run.engine.replies.extend(["baking", "space", "football"])
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "--summary-json",
                 "topics.json", "-o", "out.jsonl")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert len(parse(Path("out.jsonl").read_text(encoding="utf-8"))) == 18
    assert "cluster   size  label" in result.stderr
    assert "baking" in result.stderr
    assert sum(text in result.stderr for text in topic_texts("space")) == 3  # 3 examples
    summary = json.loads(Path("topics.json").read_text(encoding="utf-8"))
    assert [c["label"] for c in summary["clusters"]] == ["baking", "space", "football"]
    assert [c["size"] for c in summary["clusters"]] == [6, 6, 6]
    assert [c["cluster"] for c in summary["clusters"]] == [0, 1, 2]
    assert all(len(c["examples"]) == 3 for c in summary["clusters"])
    assert summary["clusters"][0]["examples"][0] in topic_texts("baking")
    assert summary["k"] == 3 and summary["method"] == "kmeans" and summary["records"] == 18
    assert 0 < summary["silhouette"] <= 1
    assert max(summary["silhouette_by_k"], key=summary["silhouette_by_k"].get) == "3"
    assert "gold" not in summary


def test_gold_field_prints_purity_nmi_ari(run: Runs) -> None:
    rows = topic_rows(interleave=True)
    result = run("cluster", write_jsonl("in.jsonl", rows), "--no-labels", "--gold-field",
                 "topic", "--summary-json", "s.json")
    assert result.exit_code == 0, result.stderr
    assert "purity 1.000   NMI 1.000   ARI 1.000   records 18" in result.stderr
    gold = json.loads(Path("s.json").read_text(encoding="utf-8"))["gold"]
    assert gold == {"records": 18, "missing_gold": 0, "purity": 1.0, "nmi": 1.0, "ari": 1.0}
    forced = run("cluster", "in.jsonl", "--no-labels", "--gold-field", "topic", "-k", "2")
    assert "purity 0.667" in forced.stderr  # two topics share a cluster


def test_from_clusters_to_classify_labels_from(run: Runs) -> None:
    run.engine.replies.extend(["Baking", "Space", "Football"])
    source = write_jsonl("in.jsonl", topic_rows())
    assert run("cluster", source, "--summary-json", "topics.json").exit_code == 0
    result = run("classify", "--labels-from", "topics.json", input="a new telescope\n")
    assert result.exit_code == 0, result.stderr
    [score] = [r for r in run.engine.requests if isinstance(r, ScoreRequest)]
    assert score.continuations == ("Baking", "Space", "Football")


def test_a_collection_is_clustered_from_its_stored_vectors(run: Runs) -> None:
    rows = topic_rows()
    source = write_jsonl("in.jsonl", rows)
    assert run("embed", source, "-c", "notes").exit_code == 0
    calls = len(run.embedder.calls)
    run.engine.replies.extend(["baking", "space", "football"])
    result = run("cluster", "-c", "notes", "--summary-json", "s.json")
    assert result.exit_code == 0, result.stderr
    assert len(run.embedder.calls) == calls  # nothing embedded again
    out = parse(result.stdout)
    assert [line["id"] for line in out] == [r["id"] for r in rows]
    assert all(len(clusters) == 1 for clusters in by_topic(out, rows).values())
    summary = json.loads(Path("s.json").read_text(encoding="utf-8"))
    assert summary["clusters"][1]["examples"][0] in topic_texts("space")
    assert topic_texts("baking")[0] in chats(run.engine)[0].messages[-1].content


def test_a_missing_collection_is_one_line(run: Runs) -> None:
    result = run("cluster", "-c", "nope")
    assert result.exit_code == 2
    assert "termlm: error:" in result.stderr and "Traceback" not in result.stderr
    assert run("embed", write_jsonl("in.jsonl", topic_rows()), "-c", "notes").exit_code == 0
    result = run("cluster", "-c", "nope")
    assert result.exit_code == 2 and "no collection named 'nope'" in result.stderr


@pytest.mark.parametrize(("texts", "message"), [
    ([], "no records"),
    (["bread dough", "rocket moon"], "2 records to cluster: need at least 3"),
    (["same words here"] * 4, "the same vector"),
])
def test_too_few_or_identical_records(run: Runs, texts: list[str], message: str) -> None:
    result = run("cluster", "--no-labels", input="".join(t + "\n" for t in texts))
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the embed notice, the error
    assert result.stdout == ""


def test_a_malformed_record_keeps_its_place_and_exits_3(run: Runs) -> None:
    rows = topic_rows()
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, '{"id": "bad", "text": ')
    Path("in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run("cluster", "in.jsonl", "--no-labels")
    assert result.exit_code == 3, result.stderr
    out = parse(result.stdout)
    assert len(out) == 19
    assert set(out[3]) == {"id", "error"}
    assert all("cluster" in line for i, line in enumerate(out) if i != 3)
    assert "1 record could not be clustered" in result.stderr


def test_too_few_after_failures_says_why(run: Runs) -> None:
    Path("in.jsonl").write_text('{"text": "bread dough"}\n{"text": "moon orbit"}\n'
                                '{"id": 3, "text": \n', encoding="utf-8")
    result = run("cluster", "in.jsonl", "--no-labels")
    assert result.exit_code == 2
    assert "only 2 of 3 records could be embedded" in result.stderr


def test_option_mistakes_are_usage_errors(run: Runs) -> None:
    source = write_jsonl("in.jsonl", topic_rows())
    for args, message in [
        (["-k", "3", "--k-range", "2..4"], "not both"),
        (["--k-range", "5"], "--k-range must look like 2..12"),
        (["--k-range", "4..2"], "2 <= LOW <= HIGH"),
        (["--k-range", "30..40"], "more clusters than 18 records"),
        (["-k", "19"], "more clusters than the 18 distinct records"),
        (["--method", "density", "-k", "3"], "go with --method kmeans"),
        (["--method", "density", "--min-size", "40"], "more than the 18 records"),
        (["-c", "notes"], "not both"),
    ]:
        result = run("cluster", source, "--no-labels", *args)
        assert result.exit_code == 2, args
        assert message in result.stderr, (args, result.stderr)
    result = run("cluster", "-c", "notes", "--gold-field", "topic")
    assert result.exit_code == 2 and "a collection keeps no fields" in result.stderr


def test_map_goes_to_stderr_not_stdout(run: Runs) -> None:
    source = write_jsonl("in.jsonl", topic_rows())
    plain = run("cluster", source, "--no-labels")
    mapped = run("cluster", source, "--no-labels", "--map")
    assert mapped.exit_code == 0, mapped.stderr
    assert mapped.stdout == plain.stdout
    assert "2-D projection" in mapped.stderr and "2-D projection" not in mapped.stdout


def test_cluster_modules_import_nothing_heavy() -> None:
    code = ("import sys, termlm.cli, termlm.vectors.cluster_cli, termlm.vectors.cluster_report; "
            "print(sorted(m for m in ('sklearn', 'numpy', 'rich', 'plotext', 'scipy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


# -- the pieces ----------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "label"), [
    ("Baking bread", "Baking bread"),
    ('Label: "Baking Bread."', "Baking Bread"),
    ("Topic: space travel!\nBecause rockets...", "space travel"),
    ("**Football matches**", "Football matches"),
    ("1. Cooking at home", "Cooking at home"),
    ("- 'Home cooking'", "Home cooking"),
    ("The topic is: money", "money"),
    ("The topic these texts share is bread making.", "bread making"),
    ("The topic these texts share is", None),
    ("These texts are all about space exploration", "space exploration"),
    ("This text is a recipe for", "recipe"),
    ("Bread, dough and", "Bread, dough"),
    ("a scientific discussion", "scientific discussion"),
    ("The common theme is football", "football"),
    ("one two three four five six seven eight", "one two three four five six"),
    ("", None),
    ("...", None),
    ("(outliers)", None),
    ("Cluster 3", None),  # would clash with the fallback names
    ('reference to the topic of "I', "reference to the topic of I"),  # no stray quote
    ("Children's books", "Children's books"),
    ("```\nBaking\n```", "Baking"),
    ("~~~text\nSpace travel\n~~~", "Space travel"),
    ("x" * 400, "x" * 60),
    ("Problems " + "with_a_very_long_word_" * 3 + " and more", "Problems"),
])
def test_clean_label(reply: str, label: str | None) -> None:
    assert clean_label(reply) == label


def test_unique_numbers_clashes_ignoring_case() -> None:
    assert unique(["food", "Food", "food", "sport"]) == ["food", "Food (2)", "food (3)",
                                                         "sport"]


def test_label_prompt_cuts_long_texts() -> None:
    messages = label_messages(label_template(), ["word " * 200])
    assert len(messages[-1].content) < 600 and "\u2026" in messages[-1].content


def test_parse_k_range() -> None:
    assert parse_k_range("2..12") == (2, 12)
    assert parse_k_range("3-5") == (3, 5)
    with pytest.raises(UsageError):
        parse_k_range("1..4")


def test_cluster_on_a_matrix_and_gold_scores() -> None:
    rng = np.random.default_rng(1)
    centres = np.eye(8, dtype=np.float32)[:4]
    points = np.repeat(centres, 25, axis=0) + rng.normal(0, 0.05, (100, 8)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    result = cluster(points, ClusterOptions())
    assert result.k == 4 and result.tried and result.k_range == (2, 12)
    assert sorted(len(m) for m in result.members) == [25, 25, 25, 25]
    truth = [i // 25 for i in range(100)]
    assert gold_scores(truth, result.assign)["ari"] == 1.0
    density = cluster(points, ClusterOptions(method="density", min_size=10))
    assert density.k == 4


def test_silhouette_is_on_a_sample_for_many_records() -> None:
    rng = np.random.default_rng(2)
    points = rng.normal(size=(2500, 16)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    result = cluster(points, ClusterOptions(k_range=(2, 3)))
    assert result.k in (2, 3) and set(result.tried) == {2, 3}


def test_the_readme_label_template_example_makes_a_working_template() -> None:
    """The README's French label template: its shell lines run as written, and the file
    they write is a label template the cluster command accepts."""
    import os
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
                if "labels_fr" in b]
    import textwrap

    setup = "\n".join(line for line in textwrap.dedent(block).splitlines()  # as rendered
                      if not line.startswith("termlm cluster"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euc", setup], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    template = label_template("labels_fr")
    messages = label_messages(template, ["pain et levure", "four chaud"])
    assert messages[-1].content == ("Donne un nom de 2 à 5 mots au sujet commun de ces "
                                    "textes : 1. pain et levure\n2. four chaud")


def test_the_log_row_names_the_embedding_and_the_label_models(run: Runs) -> None:
    from termlm.logs import db
    from termlm.logs.switch import db_path

    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "-k", "3")
    assert result.exit_code == 0, result.stderr
    conn = db.connect(db_path(), create=False)
    assert conn is not None
    try:
        (row,) = db.search(conn, db.Query(count=10))
    finally:
        conn.close()
    assert row["model"] == "fake-embed (labels: fake)" and row["counts"]["clusters"] == 3
