"""Hostile tests of termlm embed / termlm similar on the FakeEmbedder.

Each of these found a bug (a hostile review of issue 13's embed and similar): a lone
surrogate in JSONL, duplicate ids in a collection, a stale matrix cache, pooling not
kept, a damaged collections file, line breaks in .npy ids, a late .npy write error.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.embedding import FakeEmbedder

from .conftest import Result


class Embeds:
    """Runs the CLI with one FakeEmbedder (or a given one) behind it (as in test_embed.py)."""

    def __init__(self, embedder: Any = None, make: Any = None) -> None:
        self.embedder = embedder or FakeEmbedder()
        self.make = make  # make(pooling) -> embedder, to mimic the loader's --pooling
        self.opened: list[tuple[str, str | None]] = []

    def __call__(self, *args: str, input: str | None = None) -> Result:
        def factory(settings: Any, pooling: str | None) -> Any:
            self.opened.append((settings.embed_model, pooling))
            return self.make(pooling) if self.make else self.embedder

        result = CliRunner().invoke(app, list(args), input=input,
                                    obj=AppState(embedder_factory=factory))
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)


def write(path: Path, texts: Sequence[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "vectors.sqlite"


# 1. A JSON string may hold a lone surrogate ("\ud800"): valid JSON, not encodable UTF-8.

def test_a_lone_surrogate_in_a_jsonl_text_fails_only_its_record(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    source.write_text('{"id": "a", "text": "hello \\ud800 world"}\n'
                      '{"id": "b", "text": "fine"}\n', encoding="utf-8")
    run = Embeds()
    result = run("embed", str(source), "-c", "s")
    assert result.exit_code == 3
    assert "1 embedded, 0 unchanged, 1 failed" in result.stderr


def test_a_lone_surrogate_in_a_jsonl_id_fails_only_its_record(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    source.write_text('{"id": "\\udc00", "text": "hello"}\n'
                      '{"id": "b", "text": "fine"}\n', encoding="utf-8")
    result = Embeds()("embed", str(source))
    assert result.exit_code == 3, result.stderr
    first, second = (json.loads(x) for x in result.stdout.splitlines())
    assert "invalid Unicode on line 1 of" in first["error"] and "lone surrogate" in \
        first["error"]
    assert second["id"] == "b" and "embedding" in second
    mended = Embeds()("embed", str(source), "--encoding-errors", "replace")
    assert mended.exit_code == 0, mended.stderr
    assert [json.loads(x)["id"] for x in mended.stdout.splitlines()] == ["\ufffd", "b"]


def test_a_lone_surrogate_fails_only_its_record_in_every_record_task(tmp_path: Path) -> None:
    from termlm.engine.fake import FakeEngine

    source = tmp_path / "t.jsonl"
    source.write_text('{"id": "a", "text": "x \\ud800"}\n{"id": "b", "text": "fine"}\n'
                      '{"id": "c", "text": "ok", "note": "\\udfff"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["batch", "-p", "{text}", str(source), "--keep-fields"],
                                obj=AppState(engine_factory=lambda s: FakeEngine()))
    assert result.exit_code == 3, result.stderr
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert ["error" in r for r in rows] == [True, False, True], rows


# 2. Duplicate ids: the collection flips between the two texts on every identical run.

def test_duplicate_ids_give_the_same_collection_on_every_run(tmp_path: Path) -> None:
    """One vector per id: the first record keeps it, a later one with that id fails (so
    a rerun changes nothing and embeds nothing)."""
    source = tmp_path / "d.jsonl"
    source.write_text('{"id": "a", "text": "first version cat"}\n'
                      '{"id": "a", "text": "second version dog"}\n', encoding="utf-8")
    run = Embeds()
    stored = []
    for attempt in range(3):
        result = run("embed", str(source), "-c", "dup")
        assert result.exit_code == 3, result.stderr
        assert "duplicate id 'a': collection 'dup' keeps one vector per id" in result.stderr
        assert (f"{1 - min(attempt, 1)} embedded, {min(attempt, 1)} unchanged, 1 failed"
                in result.stderr), result.stderr
        with sqlite3.connect(db_path(tmp_path)) as db:
            stored.append(db.execute("SELECT text FROM items WHERE id = 'a'").fetchone()[0])
    assert stored == ["first version cat"] * 3, stored


# 3. The matrix cache (vectors.cache/NAME+VERSION) outlives the database it came from.

def test_a_new_collections_file_does_not_reuse_the_old_matrix_cache(tmp_path: Path) -> None:
    run = Embeds()
    run("embed", str(write(tmp_path / "t.txt", ["alpha cat", "beta dog"])), "-c", "notes")
    assert run("similar", "notes", "cat").exit_code == 0  # writes the cache
    db = db_path(tmp_path)
    for suffix in ("", "-wal", "-shm"):  # as the error hint says: mv FILE FILE.bad
        old = Path(f"{db}{suffix}")
        if old.exists():
            old.rename(f"{old}.bad")
    source = tmp_path / "n.jsonl"
    source.write_text('{"id": "x", "text": "gamma fish"}\n'
                      '{"id": "y", "text": "delta bird"}\n', encoding="utf-8")
    assert run("embed", str(source), "-c", "notes").exit_code == 0
    result = run("similar", "notes", "fish", "--json")
    matches = [json.loads(x) for x in result.stdout.splitlines()]
    assert {m["id"] for m in matches} == {"x", "y"}
    assert matches[0]["id"] == "x" and matches[0]["text"] == "gamma fish"


# 4. Pooling: the collection records it, but neither embed nor similar honours it.

class Pooled(FakeEmbedder):
    """Like the llama.cpp loader: the model declares mean, --pooling overrides it."""

    def __init__(self, pooling: str | None) -> None:
        super().__init__()
        self._info = replace(self._info, pooling=pooling or "mean")


def test_a_collection_keeps_its_pooling_and_refuses_another(tmp_path: Path) -> None:
    run = Embeds(make=Pooled)
    source = write(tmp_path / "t.txt", ["alpha cat", "beta dog"])
    assert run("embed", str(source), "-c", "p", "--pooling", "cls").exit_code == 0
    write(source, ["alpha cat", "beta dog", "gamma fish"])
    again = run("embed", str(source), "-c", "p")  # no --pooling: the collection's
    assert again.exit_code == 0, again.stderr
    assert run.opened[-1] == ("fake-embed", "cls") and "1 embedded, 2 unchanged" in again.stderr
    other = run("embed", str(source), "-c", "p", "--pooling", "mean")
    assert other.exit_code == 2, other.stderr
    assert "was embedded with cls pooling, not mean" in other.stderr
    listed = json.loads(run("embed", "--list", "--json").stdout)
    assert listed["pooling"] == "cls" and listed["records"] == 3


def test_similar_embeds_the_query_with_the_collections_pooling(tmp_path: Path) -> None:
    run = Embeds(make=Pooled)
    run("embed", str(write(tmp_path / "t.txt", ["alpha cat", "beta dog"])), "-c", "p",
        "--pooling", "last")
    assert run("similar", "p", "cat").exit_code == 0
    assert run.opened[-1] == ("fake-embed", "last")


# 5. A collections file that opens but is damaged inside: a traceback, not one line.

def test_a_damaged_collections_file_is_a_one_line_error(tmp_path: Path) -> None:
    long = " ".join(["word"] * 300)
    source = write(tmp_path / "t.txt", [f"line number {i} {long}" for i in range(200)])
    run = Embeds()
    assert run("embed", str(source), "-c", "big").exit_code == 0
    db = db_path(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    for at in range(8192, len(data) - 4096, 3 * 4096):  # page 1 stays whole
        data[at:at + 2000] = b"\xff" * 2000
    db.write_bytes(bytes(data))
    for args in (["embed", "--list"], ["similar", "big", "line"], ["embed", "--drop", "big"]):
        result = run(*args)
        assert result.exit_code == 1
        assert "collections file" in result.stderr


# 6. .npy ids file: "one per line", but an id holding a newline takes two lines.

def test_npy_ids_file_has_one_line_per_row(tmp_path: Path) -> None:
    source = tmp_path / "i.jsonl"
    source.write_text(json.dumps({"id": "a\nb", "text": "first cat"}) + "\n"
                      + json.dumps({"id": "c", "text": "second dog"}) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    result = Embeds()("embed", str(source), "-o", str(out))
    matrix = np.load(out) if out.exists() else None
    ids = Path(f"{out}.ids.txt").read_text(encoding="utf-8").splitlines() \
        if Path(f"{out}.ids.txt").exists() else []
    assert result.exit_code == 3 and "an id with a line break cannot go in" in result.stderr
    assert matrix is not None and matrix.shape[0] == 1 and ids == ["c"]


# 7. -o DIR/x.npy into a folder that does not exist: every text is embedded, then it fails.

def test_npy_output_that_cannot_be_written_fails_before_embedding(tmp_path: Path) -> None:
    run = Embeds()
    source = write(tmp_path / "t.txt", ["alpha cat", "beta dog"])
    result = run("embed", str(source), "-o", str(tmp_path / "nodir" / "x.npy"))
    assert result.exit_code == 1 and "cannot write" in result.stderr
    assert run.embedder.calls == []  # JSONL (-o nodir/x.jsonl) fails up front; .npy does not
