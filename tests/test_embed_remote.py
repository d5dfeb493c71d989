"""--engine openai embeddings: POST /v1/embeddings, checked, with retries and concurrency."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from termlm.engine.embed_remote import RemoteEmbedder
from termlm.engine.embedding import embed_texts
from termlm.engine.remote import RemoteEngine
from termlm.errors import EngineError

from .test_remote_units import FakeServer, Handler, Reply, serve  # noqa: F401


def vectors_for(texts: list[str]) -> list[list[float]]:
    return [[float(len(t)), 1.0, 0.0] for t in texts]


def embeddings(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
    if path.endswith("/embeddings"):
        data = [{"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(vectors_for(body["input"]))]
        return Reply(body={"object": "list", "data": data, "model": body["model"]})
    return Reply(status=404)


def embedder_for(server: FakeServer, **options: Any) -> RemoteEmbedder:
    engine = RemoteEngine(server.url, backoff_s=0.01, notify=lambda _m: None, **options)
    return RemoteEmbedder(engine)


def test_vectors_come_back_normalised_and_in_order(
        serve: Callable[[Handler], FakeServer]) -> None:  # noqa: F811
    server = serve(embeddings)
    embedder = embedder_for(server)
    out = embed_texts(embedder, ["a", "bbb", "cc"])
    assert embedder.info.dims == 3 and embedder.info.name == "fake-model"
    for text, result in zip(["a", "bbb", "cc"], out, strict=True):
        expected = np.array([len(text), 1.0, 0.0]) / math.hypot(len(text), 1.0)
        assert np.allclose(result.vector, expected, atol=1e-6)
    sent = [b for p, b, _ in server.requests if p.endswith("/embeddings")]
    assert sent[-1]["input"] == ["a", "bbb", "cc"] and sent[-1]["model"] == "fake-model"


def test_out_of_order_indexes_are_put_back_in_order(
        serve: Callable[[Handler], FakeServer]) -> None:  # noqa: F811
    def reversed_reply(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/embeddings"):
            return Reply(status=404)
        data = [{"index": i, "embedding": v} for i, v in enumerate(vectors_for(body["input"]))]
        return Reply(body={"data": data[::-1]})

    out = embed_texts(embedder_for(serve(reversed_reply)), ["a", "bbbb"])
    assert out[0].vector[0] < out[1].vector[0]


@pytest.mark.parametrize(("body", "message"), [
    ({"data": "nope"}, "'data' is"),
    ({"data": []}, "0 embeddings for 1 texts"),
    ({"data": [{"index": 0, "embedding": [1.0, "x"]}]}, "other than finite numbers"),
    ({"data": [{"index": 0, "embedding": [1.0, float("nan")]}]}, "finite numbers"),
    ({"data": [{"index": 5, "embedding": [1.0]}]}, "bad or repeated index"),
    ({"data": [{"index": 0, "embedding": []}]}, "not a list of numbers"),
    ({"data": [{"index": 0, "embedding": [0.0, 0.0, 0.0]}]}, "empty (zero) embedding"),
    ({"data": [{"index": 0, "embedding": [1.0, 2.0]}]}, "2 numbers for a 3-dimension"),
])
def test_a_malformed_reply_is_one_clear_error(serve: Callable[[Handler], FakeServer],  # noqa: F811
                                              body: dict[str, Any], message: str) -> None:
    def bad(path: str, request: dict[str, Any], headers: dict[str, str]) -> Reply:
        if path.endswith("/embeddings"):
            if request["input"] == ["dimensions"]:
                return embeddings(path, request, headers)
            return Reply(body=body) if "nan" not in message else Reply(
                body=b'{"data": [{"index": 0, "embedding": [1.0, NaN]}]}')
        return Reply(status=404)

    embedder = embedder_for(serve(bad))
    with pytest.raises(EngineError) as caught:
        embed_texts(embedder, ["hello"])
    assert message in caught.value.message or "not valid" in caught.value.message


def test_a_busy_server_is_retried(serve: Callable[[Handler], FakeServer]) -> None:  # noqa: F811
    calls = {"n": 0}

    def flaky(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if path.endswith("/embeddings") and body["input"] != ["dimensions"]:
            calls["n"] += 1
            if calls["n"] < 3:
                return Reply(status=503)
        return embeddings(path, body, headers)

    out = embed_texts(embedder_for(serve(flaky)), ["retry me"])
    assert calls["n"] == 3 and len(out) == 1


def test_many_texts_go_out_concurrently(serve: Callable[[Handler], FakeServer]) -> None:  # noqa: F811
    def slow(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        reply = embeddings(path, body, headers)
        reply.delay_s = 0.05
        return reply

    server = serve(slow)
    embedder = embedder_for(server, concurrency=4)
    texts = [f"text {i}" for i in range(200)]
    out = embed_texts(embedder, texts)
    assert len(out) == 200
    assert server.max_in_flight >= 2


def test_termlm_embed_with_engine_openai(serve: Callable[[Handler], FakeServer],  # noqa: F811
                                          tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from termlm.cli import app

    server = serve(embeddings)
    source = tmp_path / "t.txt"
    source.write_text("first text\nsecond\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["--engine", "openai", "--base-url", server.url, "embed",
                                      str(source), "-c", "remote"])
    assert result.exit_code == 0, result.output
    assert "2 embedded" in result.stderr
    listed = CliRunner().invoke(app, ["embed", "--list", "--json"])
    info = json.loads(listed.stdout)
    assert info["model"] == "fake-model" and info["dims"] == 3 and info["records"] == 2
    found = CliRunner().invoke(app, ["--engine", "openai", "--base-url", server.url, "similar",
                                     "remote", "first text", "--json", "-n", "1"])
    assert json.loads(found.stdout)["id"] == "1"
