"""`termlm qa` with chunk vectors: storage in the index, fusion, the cut-off, fallbacks.

On the FakeEmbedder (a bag of hashed words) and a ``Thesaurus`` variant that
knows a few synonyms, standing in for a model that paraphrases; the real model
(minilm) is in the tests marked ``model`` at the end.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from termlm import paths
from termlm.engine.embedding import FakeEmbedder
from termlm.engine.fake import FakeEngine
from termlm.engine.types import ChatRequest
from termlm.qa import index as index_mod
from termlm.qa.fusion import rrf

from .conftest import Cli as PlainCli
from .conftest import model_env
from .test_qa_cli import FACT, Cli, Q, make_docs

INDEX = Path("cache") / "qa" / "index.sqlite"
SHARED_MODELS = paths.models_dir()  # before the tests move the cache: pulled models stay
CONFIG = "Change HTTPIE_CONFIG_DIR to move where the configuration directory lives."
PARAPHRASE = "Where does the tool keep its settings folder?"
HTTPIE_DOCS = {
    "config.md": CONFIG,
    "sessions.md": "The tool can keep a session between requests.",
    "download.md": "With --download the tool saves the body in the current folder.",
    "colors.md": "Output is coloured on a terminal; --pretty none keeps it plain.",
}


@pytest.fixture
def cli(fake_engine: FakeEngine) -> Cli:
    return Cli(fake_engine)  # with no embedding model to be had


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERMLM_CACHE_DIR", str(tmp_path / "cache"))


class Thesaurus(FakeEmbedder):
    """Embeds synonyms alike, as a real model would (BM25 cannot)."""

    SAME: ClassVar[dict[str, str]] = {"settings": "configuration", "folder": "directory",
                                      "config": "configuration"}

    def embed_pieces(self, pieces: Sequence[str]) -> list[Any]:
        return super().embed_pieces([re.sub(r"\w+", self._same, p.lower()) for p in pieces])

    def _same(self, word: re.Match[str]) -> str:
        return self.SAME.get(word.group(), word.group())


class Counting(FakeEmbedder):
    """Records each document text embedded (queries apart)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(n_ctx=512, **kwargs)
        self.documents: list[str] = []
        self.queries: list[str] = []

    def embed_pieces(self, pieces: Sequence[str]) -> list[Any]:
        self.queries.extend(p for p in pieces if p.endswith("?"))
        self.documents.extend(p for p in pieces if not p.endswith("?"))
        return super().embed_pieces(pieces)


def with_embedder(embedder: FakeEmbedder, engine: FakeEngine | None = None) -> Cli:
    return Cli(engine or FakeEngine(), lambda settings, pooling: embedder)


def write_docs(docs: dict[str, str]) -> Path:
    root = Path("docs")
    root.mkdir(exist_ok=True)
    for name, text in docs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def given(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.stderr
    passages: list[dict[str, Any]] = json.loads(result.stdout)["passages"]
    return passages


# -- fusion -------------------------------------------------------------------------------

def test_rrf_prefers_what_both_rankers_place_high() -> None:
    bm25 = ["a", "b", "c", "d"]
    vector = ["b", "e", "a", "f"]
    fused = [item for item, _ in rrf([bm25, vector])]
    assert fused[:2] == ["b", "a"]  # high in both beat first in one
    assert set(fused) == {"a", "b", "c", "d", "e", "f"}
    scores = dict(rrf([bm25, vector]))
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)


def test_rrf_lets_one_rankers_best_in_and_counts_only_the_depth() -> None:
    bm25 = ["a", "b", "c"]
    vector = ["only-vector", "a", "d"]
    fused = [item for item, _ in rrf([bm25, vector])]
    assert fused[:3] == ["a", "only-vector", "b"]  # one ranker's best beats its second
    assert [i for i, _ in rrf([["x", "y", "z"]], depth=2)] == ["x", "y"]
    assert rrf([[], []]) == []


# -- vectors in the index -----------------------------------------------------------------

def test_vectors_are_stored_in_the_index_file_and_reused() -> None:
    make_docs()
    embedder = Counting()
    run = with_embedder(embedder)
    run.engine.replies.append("1987 [docs/sub/reactor.md:3-7]")
    first = run("qa", "--docs", "docs", "--json", Q)
    assert first.exit_code == 0, first.stderr
    assert "vectors: 4 passages embedded with fake-embed" in first.stderr
    conn = sqlite3.connect(INDEX)
    chunks = conn.execute("SELECT count(DISTINCT hash) FROM chunks").fetchone()[0]
    rows = conn.execute("SELECT model, dims, length(vector) FROM chunk_vectors").fetchall()
    assert chunks == len(rows) == len(embedder.documents) == 4
    assert {r[1:] for r in rows} == {(256, 256 * 4)}
    assert rows[0][0].startswith("fake-embed|mean|256")
    assert sorted(p.name for p in INDEX.parent.iterdir() if not p.name.endswith(
        ("-wal", "-shm"))) == ["index.sqlite"]
    run.engine.replies.append("1987 [docs/sub/reactor.md:3-7]")
    again = run("qa", "--docs", "docs", "--json", Q)
    assert again.exit_code == 0, again.stderr
    assert len(embedder.documents) == 4 and embedder.queries == [Q, Q]  # nothing re-embedded
    assert "vectors:" not in again.stderr


def test_a_changed_file_re_embeds_only_its_chunks() -> None:
    root = make_docs()
    embedder = Counting()
    run = with_embedder(embedder)
    assert run("qa", "--docs", "docs", "--json", "What about swallows?").exit_code == 0
    before = len(embedder.documents)
    edited = "The plant sits by the fjord.\n\nIt was rebuilt in 2001 after a storm.\n"
    (root / "sub" / "reactor.md").write_text(edited)
    assert run("qa", "--docs", "docs", "--json", "What about swallows?").exit_code == 0
    assert embedder.documents[before:] == ["The plant sits by the fjord.\n\n"
                                           "It was rebuilt in 2001 after a storm."]
    conn = sqlite3.connect(INDEX)
    orphans = conn.execute("SELECT count(*) FROM chunk_vectors WHERE hash NOT IN "
                           "(SELECT hash FROM chunks)").fetchone()[0]
    assert orphans == 0  # the old text's vector went with it


def test_another_embedding_model_keeps_its_own_rows() -> None:
    make_docs()
    first, second = Counting(name="model-a"), Counting(name="model-b", dims=64)
    assert with_embedder(first)("qa", "--docs", "docs", "What about swallows?").exit_code == 0
    assert with_embedder(second)("qa", "--docs", "docs", "What about swallows?").exit_code == 0
    back = Counting(name="model-a")
    assert with_embedder(back)("qa", "--docs", "docs", "What about swallows?").exit_code == 0
    assert len(second.documents) == 4 and back.documents == []
    models = sqlite3.connect(INDEX).execute(
        "SELECT model, count(*) FROM chunk_vectors GROUP BY model").fetchall()
    assert [(m.split("|")[0], n) for m, n in models] == [("model-a", 4), ("model-b", 4)]


def test_an_old_index_is_migrated_and_its_vectors_made() -> None:
    make_docs()
    plain = Cli(FakeEngine())
    assert plain("qa", "--docs", "docs", "--retrieval", "bm25", "What about swallows?"
                 ).exit_code == 0
    conn = sqlite3.connect(INDEX)  # back to schema 1: no hash column, no vectors
    conn.executescript("DROP INDEX chunks_hash; DROP TABLE chunk_vectors; "
                       "ALTER TABLE chunks DROP COLUMN hash; "
                       "UPDATE meta SET value = '1' WHERE key = 'schema';")
    conn.close()
    embedder = Counting()
    engine = FakeEngine(["1987 [docs/sub/reactor.md:3-7]"])
    result = with_embedder(embedder, engine)("qa", "--docs", "docs", "--json", Q)
    assert result.exit_code == 0, result.stderr
    assert "index:" not in result.stderr  # the files and chunks were kept, not read again
    assert len(embedder.documents) == 4
    conn = sqlite3.connect(INDEX)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == \
        index_mod.SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM chunks WHERE hash IS NULL").fetchone()[0] == 0
    assert json.loads(result.stdout)["found"] is True


class Interrupting(Counting):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.batches = 0

    def embed_pieces(self, pieces: Sequence[str]) -> list[Any]:
        if self.batches >= self.after:
            raise KeyboardInterrupt
        self.batches += 1
        return super().embed_pieces(pieces)


def test_ctrl_c_while_embedding_keeps_the_batches_done() -> None:
    write_docs({f"note{i}.md": f"Note {i} is about topic{i} and nothing else."
                for i in range(40)})
    stopped = with_embedder(Interrupting(after=1))("qa", "--docs", "docs", "topic3?")
    assert stopped.exit_code == 130
    kept = sqlite3.connect(INDEX).execute("SELECT count(*) FROM chunk_vectors").fetchone()[0]
    assert kept == 32  # the first batch
    rest = Counting()
    done = with_embedder(rest)("qa", "--docs", "docs", "--json", "What is topic3?")
    assert done.exit_code == 0, done.stderr
    assert len(rest.documents) == 8 and "vectors: 8 passages embedded" in done.stderr


# -- retrieval ----------------------------------------------------------------------------

def test_a_file_edited_after_indexing_is_embedded_again_before_it_is_cited() -> None:
    from termlm.qa.answer import retrieve
    from termlm.qa.index import Index
    from termlm.qa.retrieval import Mode, Ranker
    from termlm.qa.vectors import ChunkVectors
    from termlm.records.types import Source

    root = make_docs()
    reactor = root / "sub" / "reactor.md"
    index = Index.open()
    try:
        index.sync([Source(str(reactor), str(reactor))])
        embedder = Counting()
        vectors = ChunkVectors(index, embedder)
        assert vectors.update() == 1 and vectors.missing() == 0
        reactor.write_text("New first line.\n" + FACT + "\n")  # after indexing
        passages = retrieve(index, Q, ranker=Ranker(index, Mode.hybrid, vectors))
        assert [(p.start, p.end) for p in passages] == [(1, 2)]
        assert embedder.documents[-1] == "New first line.\n" + FACT
        assert passages[0].cosine is not None and passages[0].cosine >= 0.29
    finally:
        index.close()


def test_bm25_never_opens_the_embedder(cli: Cli, fake_engine: FakeEngine) -> None:
    make_docs()
    fake_engine.replies.append("1987 [docs/sub/reactor.md:3-7]")
    result = cli("qa", "--docs", "docs", "--retrieval", "bm25", "--json", Q)
    assert result.exit_code == 0, result.stderr
    assert cli.embedders_opened == 0 and "embedding model" not in result.stderr
    assert json.loads(result.stdout)["retrieval"] == "bm25"


def test_a_paraphrase_only_vectors_can_find_enters_the_fusion() -> None:
    write_docs(HTTPIE_DOCS)
    run = with_embedder(Thesaurus(n_ctx=512))
    run.engine.replies.extend(["Change HTTPIE_CONFIG_DIR [docs/config.md:1-1]."] * 3)
    bm25 = given(run("qa", "--docs", "docs", "--json", "--retrieval", "bm25", PARAPHRASE))
    assert "docs/config.md" not in [p["path"] for p in bm25]  # no word in common
    vector = given(run("qa", "--docs", "docs", "--json", "--retrieval", "vector", PARAPHRASE))
    assert vector[0]["path"] == "docs/config.md" and vector[0]["bm25_rank"] is None
    result = run("qa", "--docs", "docs", "--json", PARAPHRASE)  # hybrid: the default
    assert json.loads(result.stdout)["retrieval"] == "hybrid"
    hybrid = given(result)
    config = next(p for p in hybrid if p["path"] == "docs/config.md")
    assert config["bm25_rank"] is None and config["cosine"] >= 0.29 and config["fused"] > 0
    both = [p for p in hybrid if p["bm25_rank"] is not None]
    assert all(p["cosine"] is not None and p["fused"] > 0 for p in both)
    assert [p["fused"] for p in hybrid] == sorted((p["fused"] for p in hybrid), reverse=True)
    request = run.engine.requests[-1]
    assert isinstance(request, ChatRequest)
    assert "HTTPIE_CONFIG_DIR" in "\n".join(m.content for m in request.messages)


def test_under_hybrid_the_similarity_cut_off_decides_not_found() -> None:
    # one shared rare word: every one of the question's words is in the passage (BM25
    # finds it), but the passage is about something else (its cosine is low)
    write_docs({"shed.md": "Shears, rakes, spades, hoes, forks, trowels, gloves, twine, pots "
                           "and seed trays hang in the shed behind the greenhouse."})
    engine = FakeEngine(["They hang in the shed [docs/shed.md:1-1]."])
    run = with_embedder(FakeEmbedder(n_ctx=512), engine)
    assert json.loads(run("qa", "--docs", "docs", "--json", "--retrieval", "bm25",
                          "shears?").stdout)["found"] is True
    result = run("qa", "--docs", "docs", "--json", "--min-similarity", "0.5", "shears?")
    out = json.loads(result.stdout)
    assert (out["found"], out["retrieval"], out["passages"]) == (False, "hybrid", [])
    assert len(engine.requests) == 1  # not asked: nothing was similar enough
    lower = json.loads(run("qa", "--docs", "docs", "--json", "--min-similarity", "0.1",
                           "shears?").stdout)
    assert lower["found"] is True and 0.1 <= lower["passages"][0]["cosine"] < 0.5


def test_unrelated_question_is_not_found_by_similarity() -> None:
    make_docs()
    run = with_embedder(FakeEmbedder(n_ctx=512))
    out = json.loads(run("qa", "--docs", "docs", "--json",
                         "What is the airspeed of an unladen swallow?").stdout)
    assert out["found"] is False and run.engine.requests == []


# -- when there is no embedding model -----------------------------------------------------

def test_offline_without_the_embedding_model_falls_back_to_bm25(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TERMLM_MODELS_DIR", str(tmp_path / "no-models"))
    make_docs()
    engine = FakeEngine(["1987 [docs/sub/reactor.md:3-7]"])
    run = PlainCli(engine)  # the real embedding-model resolver
    result = run("--offline", "qa", "--docs", "docs", "--json", Q)
    assert result.exit_code == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "embedding model" in line]
    assert len(notices) == 1 and "BM25 only" in notices[0] and "offline" in notices[0]
    assert json.loads(result.stdout)["retrieval"] == "bm25"
    asked = run("--offline", "qa", "--docs", "docs", "--retrieval", "hybrid", Q)
    assert asked.exit_code != 0
    assert "--retrieval hybrid needs an embedding model" in asked.stderr
    assert len([line for line in asked.stderr.splitlines() if "error" in line]) == 1


def test_explicit_vector_retrieval_without_a_model_is_one_error(cli: Cli) -> None:
    make_docs()
    result = cli("qa", "--docs", "docs", "--retrieval", "vector", Q)
    assert result.exit_code == 1
    assert "--retrieval vector needs an embedding model: model 'minilm' is not downloaded" \
        in result.stderr
    assert "Traceback" not in result.stderr


# -- the real model -----------------------------------------------------------------------

REAL_PARAPHRASE = "How can I make the tool keep its settings folder somewhere else?"


def calibration() -> Any:
    """scripts/calibrate_qa_cutoff.py: its labelled set (the documents are reused here)."""
    import importlib.util

    path = Path(__file__).parent.parent / "scripts" / "calibrate_qa_cutoff.py"
    spec = importlib.util.spec_from_file_location("calibrate_qa_cutoff", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_real(*args: str, cwd: Path) -> dict[str, Any]:
    env = {**model_env(), "TERMLM_CACHE_DIR": str(cwd / "cache"),  # a fresh index
           "TERMLM_MODELS_DIR": str(SHARED_MODELS)}
    proc = subprocess.run([sys.executable, "-m", "termlm", "qa", "--docs", "docs", "--json",
                           *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.mark.model
def test_minilm_finds_the_paraphrased_passage_bm25_misses(tmp_path: Path) -> None:
    write_docs(calibration().DOCS)
    assert REAL_PARAPHRASE in dict(calibration().ANSWERABLE)
    bm25 = run_real("--retrieval", "bm25", "--top-k", "2", REAL_PARAPHRASE, cwd=tmp_path)
    assert "docs/httpie/config.md" not in [p["path"] for p in bm25["passages"]]
    hybrid = run_real("--top-k", "2", REAL_PARAPHRASE, cwd=tmp_path)
    assert hybrid["retrieval"] == "hybrid"
    assert "docs/httpie/config.md" in [p["path"] for p in hybrid["passages"]], hybrid["passages"]


@pytest.mark.model
def test_minilm_cut_off_says_an_unrelated_question_is_not_in_the_documents(
        tmp_path: Path) -> None:
    write_docs(calibration().DOCS)
    out = run_real("What is the boiling point of water on Mars?", cwd=tmp_path)
    assert (out["retrieval"], out["found"], out["passages"]) == ("hybrid", False, [])


@pytest.mark.model
def test_the_default_cut_off_is_the_calibrated_one(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from termlm.qa.retrieval import DEFAULT_MIN_SIMILARITY

    monkeypatch.setenv("TERMLM_MODELS_DIR", str(SHARED_MODELS))
    assert calibration().main(["--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["errors"] <= 2, measured
    assert abs(measured["cut_off"] - DEFAULT_MIN_SIMILARITY) <= 0.03, measured
