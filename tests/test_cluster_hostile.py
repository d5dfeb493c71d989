"""Hostile tests of `termlm cluster` and `termlm qa` hybrid retrieval, on the fakes only.

Each of these found a bug (a hostile review of issue 13's cluster and qa): side outputs
checked too late or not at all, density that could not return one cluster, a wrong
message, code-fenced labels, and a question that could not be embedded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.embedding import FakeEmbedder
from termlm.engine.fake import FakeEngine
from termlm.errors import EngineError
from termlm.vectors.cluster_labels import clean_label

from .conftest import Result
from .test_qa_cli import Q, make_docs  # the same small docs folder

VOCAB = {
    "baking": ["bread", "dough", "oven", "flour", "yeast", "knead", "loaf", "crust"],
    "space": ["rocket", "orbit", "planet", "launch", "moon", "astronaut", "telescope", "comet"],
    "football": ["goal", "striker", "match", "referee", "penalty", "league", "stadium",
                 "keeper"],
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond conftest's isolated dirs: a private cache dir (the qa index), and the cwd."""
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


class Runs:
    """The CLI with a FakeEmbedder and a FakeEngine behind it."""

    def __init__(self, engine: FakeEngine | None = None,
                 embedder: FakeEmbedder | None = None) -> None:
        self.embedder = embedder or FakeEmbedder()
        self.engine = engine or FakeEngine()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        result = CliRunner().invoke(app, list(args), input=input, obj=AppState(
            engine_factory=lambda settings: self.engine,
            embedder_factory=lambda settings, pooling: self.embedder))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)


def topic_texts(topic: str, count: int = 6) -> list[str]:
    words = VOCAB[topic]
    return [" ".join(words[(i + j) % len(words)] for j in range(5)) for i in range(count)]


def topic_rows() -> list[dict[str, str]]:
    return [{"id": f"{topic[0]}{i}", "text": text, "topic": topic}
            for topic in VOCAB for i, text in enumerate(topic_texts(topic))]


def write_jsonl(name: str, rows: list[dict[str, Any]]) -> str:
    Path(name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return name


def parse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- cluster: outputs ----------------------------------------------------------------------


def test_summary_json_on_the_output_path_does_not_silently_replace_the_jsonl() -> None:
    run = Runs()
    source = write_jsonl("in.jsonl", topic_rows())
    result = run("cluster", source, "--no-labels", "-o", "out.json", "--summary-json",
                 "out.json")
    # either refused up front, or both kept: never the JSONL replaced by the summary
    if result.exit_code == 0:
        assert len(parse(Path("out.json").read_text(encoding="utf-8"))) == 18
    else:
        assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_summary_json_on_an_input_path_never_destroys_the_input() -> None:
    run = Runs()
    source = write_jsonl("in.jsonl", topic_rows())
    before = Path(source).read_text(encoding="utf-8")
    result = run("cluster", source, "--no-labels", "--summary-json", source)
    assert Path(source).read_text(encoding="utf-8") == before  # as -o in.jsonl is refused
    assert result.exit_code == 2
    assert "also an input" in result.stderr


def test_an_unwritable_summary_json_is_refused_before_any_model() -> None:
    run = Runs()
    source = write_jsonl("in.jsonl", topic_rows())
    Path("adir").mkdir()
    result = run("cluster", source, "--summary-json", "adir", "-o", "out.jsonl")
    assert result.exit_code != 0
    assert run.embedder.calls == [] and run.engine.requests == []  # checked as -o is
    assert not Path("out.jsonl").exists()


# -- cluster: density ----------------------------------------------------------------------


def test_density_finds_one_dense_topic_among_outliers() -> None:
    run = Runs()
    rows = [{"id": f"b{i}", "text": t + " news today"}
            for i, t in enumerate(topic_texts("baking", 8))]
    rows += [{"id": "odd1", "text": "zebra umbrella violin harbour"},
             {"id": "odd2", "text": "quantum lizard tuba"}]
    result = run("cluster", write_jsonl("in.jsonl", rows), "--method", "density",
                 "--min-size", "3", "--no-labels")
    assert result.exit_code == 0, result.stderr
    out = {line["id"]: line for line in parse(result.stdout)}
    # the baking records are one dense region: not 10 outliers and 0 clusters
    # (HDBSCAN may still leave a baking record or two at the edge as an outlier)
    assert sum(out[f"b{i}"]["cluster"] == 0 for i in range(8)) >= 6, out
    assert out["odd1"]["cluster"] is None and out["odd2"]["cluster"] is None
    assert "1 cluster by density" in result.stderr


def test_density_on_too_few_records_does_not_blame_an_option_not_given() -> None:
    run = Runs()
    result = run("cluster", "--no-labels", "--method", "density",
                 input="bread dough\nrocket moon\ngoal striker\n")
    assert result.exit_code == 2
    assert "--min-size 5" not in result.stderr  # the user gave no --min-size


# -- cluster: the summary line and labels --------------------------------------------------


def test_one_cluster_is_singular_in_the_choice_line() -> None:
    run = Runs()
    result = run("cluster", "--no-labels", "-k", "1",
                 input="bread dough\nrocket moon\ngoal striker\n")
    assert result.exit_code == 0, result.stderr
    assert "1 clusters" not in result.stderr
    assert "1 cluster (k given" in result.stderr


def test_a_code_fenced_label_reply_keeps_its_label() -> None:
    assert clean_label("```\nBaking bread\n```") == "Baking bread"


def test_a_code_fenced_label_reply_is_used_by_the_command() -> None:
    engine = FakeEngine(["```\nBaking\n```", "Space", "Football"])
    run = Runs(engine)
    result = run("cluster", write_jsonl("in.jsonl", topic_rows()), "-k", "3")
    assert result.exit_code == 0, result.stderr
    assert [line["label"] for line in parse(result.stdout)][::6] == ["Baking", "Space",
                                                                     "Football"]


# -- qa hybrid -----------------------------------------------------------------------------


class QueryFails(FakeEmbedder):
    """Embeds documents; fails on the question (a server that broke since the last run)."""

    def __init__(self) -> None:
        super().__init__(n_ctx=512)
        self.fail = False

    def embed_pieces(self, pieces: Sequence[str]) -> list[Any]:
        if self.fail:
            raise EngineError("the embedding server answered 500")
        return super().embed_pieces(pieces)


def test_default_retrieval_falls_back_to_bm25_when_the_question_cannot_be_embedded() -> None:
    make_docs()
    embedder = QueryFails()
    engine = FakeEngine(["1987 [docs/sub/reactor.md:3-7]"] * 2)
    run = Runs(engine, embedder)
    assert run("qa", "--docs", "docs", "--json", Q).exit_code == 0  # vectors stored
    embedder.fail = True  # every passage has its vector: only the question is embedded now
    result = run("qa", "--docs", "docs", "--json", Q)
    # as when the passages cannot be embedded: a notice, and BM25 (no --retrieval given)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["retrieval"] == "bm25" and out["found"] is True
    assert "BM25 only" in result.stderr
    assert os.path.exists("cache/qa/index.sqlite")
