"""termlm embed and termlm similar on the FakeEmbedder (the real model: test_embed_model.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.embedding import FakeEmbedder, embed_texts
from termlm.errors import EngineError

from .conftest import Result

TEXTS = [
    "the cat sat on the warm mat",
    "a cat and a dog sat together on a mat",
    "stock prices fell sharply on the market today",
    "the market closed lower as stock prices fell",
]


class Embeds:
    """Runs the CLI with one FakeEmbedder (or a given one) behind it."""

    def __init__(self, embedder: Any = None) -> None:
        self.embedder = embedder or FakeEmbedder()
        self.opened: list[tuple[str, str | None]] = []

    def __call__(self, *args: str, input: str | None = None) -> Result:
        def factory(settings: Any, pooling: str | None) -> Any:
            self.opened.append((settings.embed_model, pooling))
            return self.embedder

        result = CliRunner().invoke(app, list(args), input=input,
                                    obj=AppState(embedder_factory=factory))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def run() -> Embeds:
    return Embeds()


def lines(text: str) -> str:
    return "".join(t + "\n" for t in text.splitlines())


def write(path: Path, texts: Sequence[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def test_vectors_are_unit_length_and_similar_texts_score_higher() -> None:
    embedder = FakeEmbedder()
    a, b, c, _ = (e.vector for e in embed_texts(embedder, TEXTS))
    assert np.isclose(np.linalg.norm(a), 1.0)
    assert float(a @ b) > float(a @ c)


def test_embed_to_stdout_is_jsonl(run: Embeds, tmp_path: Path) -> None:
    result = run("embed", str(write(tmp_path / "t.txt", TEXTS)))
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
    assert all(len(r["embedding"]) == 256 and r["chunks"] == 1 for r in rows)
    assert "4 embedded, 0 unchanged, 0 failed" in result.stderr


def test_a_collection_resumes_by_content(run: Embeds, tmp_path: Path) -> None:
    source = write(tmp_path / "t.txt", TEXTS)
    first = run("embed", str(source), "-c", "notes")
    assert first.exit_code == 0, first.stderr
    assert "collection 'notes': 4 records" in first.stderr
    again = run("embed", str(source), "-c", "notes")
    assert "0 embedded, 4 unchanged" in again.stderr
    write(source, [*TEXTS[:3], "an edited fourth line about the market"])
    edited = run("embed", str(source), "-c", "notes")
    assert "1 embedded, 3 unchanged" in edited.stderr
    assert run.embedder.calls[-1] == ["an edited fourth line about the market"]
    listed = [json.loads(x) for x in run("embed", "--list", "--json").stdout.splitlines()]
    assert listed[0]["name"] == "notes" and listed[0]["records"] == 4
    assert listed[0]["model"] == "fake-embed" and listed[0]["dims"] == 256
    dropped = run("embed", "--drop", "notes")
    assert dropped.exit_code == 0 and "dropped collection 'notes' (4 records)" in dropped.stderr
    assert run("embed", "--list", "--json").stdout == ""


def test_a_collection_refuses_another_model(tmp_path: Path) -> None:
    source = write(tmp_path / "t.txt", TEXTS)
    Embeds(FakeEmbedder(name="model-a"))("embed", str(source), "-c", "mixed")
    result = Embeds(FakeEmbedder(name="model-b", dims=32))(
        "embed", str(source), "-c", "mixed", "-m", "model-b")
    assert result.exit_code == 2
    assert "was embedded with model-a (256 dimensions), not model-b (32)" in result.stderr


def test_a_collection_keeps_its_model(run: Embeds, tmp_path: Path) -> None:
    source = write(tmp_path / "t.txt", TEXTS)
    run("embed", str(source), "-c", "kept", "-m", "some-model")
    run("embed", str(source), "-c", "kept")
    assert [m for m, _ in run.opened] == ["some-model", "fake-embed"]


def test_long_texts_are_split_and_averaged_never_cut(tmp_path: Path) -> None:
    long = " ".join(f"word{i}" for i in range(50))
    source = write(tmp_path / "t.txt", ["short one", long])
    run = Embeds(FakeEmbedder(n_ctx=16))
    rows = [json.loads(x) for x in run("embed", str(source)).stdout.splitlines()]
    assert [r["chunks"] for r in rows] == [1, 4]
    assert sum(len(p.split()) for p in run.embedder.calls[-1][1:]) == 50  # every word
    assert np.isclose(np.linalg.norm(rows[1]["embedding"]), 1.0, atol=1e-5)
    failed = Embeds(FakeEmbedder(n_ctx=16))("embed", str(source), "--on-overflow", "error")
    assert failed.exit_code == 3
    rows = [json.loads(x) for x in failed.stdout.splitlines()]
    assert "more than the model's context of 16" in rows[1]["error"]
    cut = Embeds(FakeEmbedder(n_ctx=16))("embed", str(source), "--on-overflow", "truncate")
    rows = [json.loads(x) for x in cut.stdout.splitlines()]
    assert rows[1]["chunks"] == 1 and rows[1]["truncated"] is True


def test_npy_output_with_its_ids(run: Embeds, tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    result = run("embed", str(write(tmp_path / "t.txt", TEXTS)), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    matrix = np.load(out)
    assert matrix.shape == (4, 256) and matrix.dtype == np.float32
    assert (tmp_path / "vectors.npy.ids.txt").read_text() == "1\n2\n3\n4\n"


def test_bad_records_fail_alone(run: Embeds, tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    source.write_bytes(b'{"id": "a", "text": "fine"}\n{broken\n{"id": "c", "text": ""}\n'
                       b'{"id": "d", "text": "also fine"}\n')
    result = run("embed", str(source), "-c", "mixed")
    assert result.exit_code == 3
    assert "2 embedded, 0 unchanged, 2 failed" in result.stderr
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02")
    assert run("embed", str(binary)).exit_code in (1, 3)


class Interrupting(FakeEmbedder):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def embed_pieces(self, pieces: Sequence[str]) -> list[Any]:
        if len(self.calls) >= self.after:
            raise KeyboardInterrupt
        return super().embed_pieces(pieces)


def test_ctrl_c_keeps_the_batches_done_and_a_rerun_finishes(tmp_path: Path) -> None:
    source = write(tmp_path / "t.txt", [f"line number {i}" for i in range(80)])
    stopped = Embeds(Interrupting(after=1))("embed", str(source), "-c", "big")
    assert stopped.exit_code == 130
    assert "interrupted: 32 texts embedded this run" in stopped.stderr
    finish = Embeds()
    done = finish("embed", str(source), "-c", "big")
    assert "48 embedded, 32 unchanged" in done.stderr
    listed = json.loads(finish("embed", "--list", "--json").stdout)
    assert listed["records"] == 80


def test_similar_finds_the_nearest(run: Embeds, tmp_path: Path) -> None:
    run("embed", str(write(tmp_path / "t.txt", TEXTS)), "-c", "notes")
    result = run("similar", "notes", "cat on a mat", "-n", "2")
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header == "score\tid\ttext"
    assert [r.split("\t")[1] for r in rows] == ["1", "2"]
    matches = [json.loads(x) for x in run("similar", "notes", "--id", "3", "--json").stdout
               .splitlines()]
    assert matches[0]["id"] == "4" and "3" not in [m["id"] for m in matches]
    assert matches[0]["text"] == TEXTS[3] and -1.0 <= matches[0]["score"] <= 1.0


def test_similar_mistakes_are_one_line(run: Embeds, tmp_path: Path) -> None:
    assert "there are no collections yet" in run("similar", "none", "x").stderr
    run("embed", str(write(tmp_path / "t.txt", TEXTS)), "-c", "notes")
    missing = run("similar", "nope", "x")
    assert missing.exit_code == 2 and "no collection named 'nope' (collections: notes)" in \
        missing.stderr
    assert "no record 'zz'" in run("similar", "notes", "--id", "zz").stderr
    assert "give TEXT or --id ID" in run("similar", "notes").stderr
    assert run("embed", str(tmp_path / "t.txt"), "-c", "../x").exit_code == 2


def test_the_query_gets_the_models_query_prefix(tmp_path: Path) -> None:
    run = Embeds(FakeEmbedder(query_prefix="search_query: ",
                              document_prefix="search_document: "))
    run("embed", str(write(tmp_path / "t.txt", TEXTS[:1])), "-c", "p")
    run("similar", "p", "cats")
    assert run.embedder.calls == [["search_document: " + TEXTS[0]], ["search_query: cats"]]


def test_an_engine_failure_fails_only_its_record(tmp_path: Path) -> None:
    class Picky(FakeEmbedder):
        def embed_pieces(self, pieces: Sequence[str]) -> list[Any]:
            if any("poison" in p for p in pieces):
                raise EngineError("llama.cpp failed to embed a batch")
            return super().embed_pieces(pieces)

    result = Embeds(Picky())("embed", str(write(tmp_path / "t.txt",
                                                ["good", "poison pill", "fine"])))
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert [("error" in r) for r in rows] == [False, True, False]
    assert result.exit_code == 3


def test_the_matrix_cache_follows_every_change(tmp_path: Path) -> None:
    from termlm.vectors.store import Item, Store

    path = tmp_path / "v.sqlite"
    vec = np.eye(4, dtype=np.float32)
    with Store.open(path) as store:
        store.ensure("c", "m", 4, "mean")
        store.put("c", [Item("a", "h1", "first", 1, vec[0]), Item("b", "h2", "second", 1,
                                                                   vec[1])])
        ids, matrix = store.matrix("c")  # builds the cache
        assert ids == ["a", "b"] and np.array_equal(matrix, vec[:2])
        assert list((tmp_path / "v.cache").glob("c+*.npy"))
    with Store.open(path) as store:
        ids, matrix = store.matrix("c")  # from the cache
        assert ids == ["a", "b"] and np.array_equal(matrix, vec[:2])
        store.put("c", [Item("b", "h3", "changed", 1, vec[2])])
        ids, matrix = store.matrix("c")
        assert ids == ["a", "b"] and np.array_equal(matrix[1], vec[2])
        assert len(list((tmp_path / "v.cache").glob("c+*.npy"))) == 1  # the stale one went
        store.drop("c")
        assert not list((tmp_path / "v.cache").glob("c+*"))
