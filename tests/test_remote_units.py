"""RemoteEngine against a tiny fake OpenAI-compatible server (http.server in a thread).

SSE parsing, retries and backoff, ordering under concurrency, auth, the
json_schema fallback, token counting and label scoring, and the CLI's exit codes
when the server fails. No model needed.
"""

from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.config import Settings
from termlm.engine.remote import RemoteEngine
from termlm.engine.remote_http import normalize_base_url, sse_data
from termlm.engine.types import (
    BatchingEngine,
    ChatRequest,
    Completion,
    Delta,
    Engine,
    Message,
    SamplingParams,
    ScoreRequest,
)
from termlm.errors import ConfigError, EngineError


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a JSON value, or raw bytes
    events: list[str] | None = None  # SSE data lines, sent one by one
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Handler = Callable[[str, dict[str, Any], dict[str, str]], Reply]


def chat_reply(text: str, finish: str = "stop", usage: bool = True) -> Reply:
    body: dict[str, Any] = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                 "content": text},
                                         "finish_reason": finish}]}
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3}
    return Reply(body=body)


def sse_reply(pieces: list[str], finish: str | None = "stop",
              usage: dict[str, int] | None = None) -> Reply:
    events = [json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    events += [json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]})
               for p in pieces]
    if finish:
        events.append(json.dumps({"choices": [{"index": 0, "delta": {},
                                               "finish_reason": finish}]}))
    if usage:
        events.append(json.dumps({"choices": [], "usage": usage}))
    return Reply(events=[*events, "[DONE]"])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # a client that hung up (an abandoned batch, a killed stream)


class FakeServer:
    """Answers every request with ``handler(path, body, headers)``; records requests.

    GET /v1/models lists one model unless the handler answers it.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                self._serve({})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                self._serve(json.loads(raw))

            def _serve(self, body: dict[str, Any]) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append((self.path, body, headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.handler(self.path, body, headers)
                    if self.path.endswith("/models") and reply.status in (200, 404) and \
                            not (isinstance(reply.body, dict) and "data" in reply.body):
                        reply = Reply(body={"data": [{"id": "fake-model"}]})
                    time.sleep(reply.delay_s)
                finally:
                    # counted out before the reply goes: once the client has it, it may send
                    # its next request, which must not find this one still counted
                    with server._lock:
                        server.in_flight -= 1
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.events is not None:
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self.wfile.write(b": ping\n\n")
                    for data in reply.events:
                        self.wfile.write(f"data: {data}\n\n".encode())
                        self.wfile.flush()
                    return
                payload = reply.body if isinstance(reply.body, bytes) else \
                    json.dumps(reply.body if reply.body is not None else
                               {"detail": "Not Found"}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = _QuietServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def paths(self, suffix: str = "") -> list[str]:
        return [p for p, _, _ in self.requests if p.endswith(suffix)]

    def chats(self) -> list[dict[str, Any]]:
        return [b for p, b, _ in self.requests if p.endswith("/chat/completions")]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def not_found(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
    return Reply(status=404)


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        servers.append(FakeServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def notes() -> list[str]:
    return []


def engine_for(server: FakeServer, notes: list[str], **options: Any) -> RemoteEngine:
    options.setdefault("backoff_s", 0.01)
    return RemoteEngine(server.url, notify=notes.append, **options)


def ask(text: str, **sampling: Any) -> ChatRequest:
    return ChatRequest((Message("user", text),), SamplingParams(**sampling))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- pure helpers -------------------------------------------------------------
def test_sse_data_skips_comments_and_joins_multiline_data() -> None:
    lines = [": ping", "", "data: {\"a\": 1}", "", "event: x", "data:first", "data: second",
             "", "id: 3", "data: [DONE]"]
    assert list(sse_data(lines)) == ['{"a": 1}', "first\nsecond", "[DONE]"]


def test_base_url_is_normalised() -> None:
    assert normalize_base_url(" http://h:8080/ ") == "http://h:8080/v1"
    assert normalize_base_url("http://h:8080/v1/") == "http://h:8080/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == \
        "https://api.example.com/openai/v1"
    with pytest.raises(ConfigError):
        normalize_base_url("localhost:8080")


# -- the protocol ---------------------------------------------------------------
def test_engine_implements_both_protocols(serve: Callable[[Handler], FakeServer],
                                          notes: list[str]) -> None:
    server = serve(not_found)
    engine = engine_for(server, notes, concurrency=3, n_ctx=1234)
    try:
        assert isinstance(engine, Engine) and isinstance(engine, BatchingEngine)
        assert engine.parallel == 3
        assert engine.info.name == "fake-model" and engine.info.n_ctx == 1234
        assert engine.load_s > 0
    finally:
        engine.close()


def test_model_is_the_first_listed_unless_named(serve: Callable[[Handler], FakeServer],
                                                notes: list[str]) -> None:
    models = {"data": [{"id": "a", "max_model_len": 1000}, {"id": "b"}]}
    server = serve(lambda p, b, h: Reply(body=models) if p.endswith("/models")
                   else chat_reply("ok"))
    engine = engine_for(server, notes, n_ctx=4096)
    try:
        assert engine.info.name == "a" and engine.info.n_ctx == 1000  # vLLM's max_model_len
        assert notes == ["the server has 2 models; using a (choose another with -m)"]
        engine.complete(ask("hi"))
        assert server.chats()[-1]["model"] == "a"
    finally:
        engine.close()
    named = engine_for(server, notes, model="b")
    try:
        assert named.info.name == "b" and named.info.n_ctx == 4096
    finally:
        named.close()


def test_stream_parses_events_and_takes_usage_from_the_server(
        serve: Callable[[Handler], FakeServer], notes: list[str]) -> None:
    server = serve(lambda p, b, h: sse_reply(["Par", "is", "."], usage={
        "prompt_tokens": 21, "completion_tokens": 3}) if p.endswith("/chat/completions")
        else Reply(status=404))
    engine = engine_for(server, notes)
    try:
        events = list(engine.stream(ask("capital?", temperature=0.0, max_tokens=5, seed=7,
                                        stop=("\n",))))
    finally:
        engine.close()
    assert [e.text for e in events if isinstance(e, Delta)] == ["Par", "is", "."]
    done = events[-1]
    assert isinstance(done, Completion)
    assert done.text == "Paris." and done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (21, 3)
    body = server.chats()[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5 and body["seed"] == 7
    assert body["stop"] == ["\n"] and body["top_k"] == 40 and body["top_p"] == 0.95
    assert body["messages"] == [{"role": "user", "content": "capital?"}]


def test_stream_without_usage_counts_and_says_it_estimates(
        serve: Callable[[Handler], FakeServer], notes: list[str]) -> None:
    server = serve(lambda p, b, h: sse_reply(["a", "b"], finish="length")
                   if p.endswith("/chat/completions") else Reply(status=404))
    engine = engine_for(server, notes)
    try:
        done = list(engine.stream(ask("x" * 40)))[-1]
        assert engine.count_tokens("y" * 9) == 3
    finally:
        engine.close()
    assert isinstance(done, Completion) and done.finish_reason == "length"
    assert done.usage.completion_tokens == 2  # one event per token
    assert done.usage.prompt_tokens == 10 + 5 + 3  # ~4 chars/token, plus the template
    assert [n for n in notes if "estimated" in n] == [
        "the server has no tokenize endpoint: token counts are estimated at ~4 characters "
        "per token"]


def test_stream_cut_short_is_an_error(serve: Callable[[Handler], FakeServer],
                                      notes: list[str]) -> None:
    server = serve(lambda p, b, h: sse_reply(["partial"], finish=None)
                   if p.endswith("/chat/completions") else Reply(status=404))
    engine = engine_for(server, notes)
    try:
        with pytest.raises(EngineError, match="ended the reply before it was finished"):
            list(engine.stream(ask("hi")))
    finally:
        engine.close()


def test_complete_asks_for_the_whole_reply(serve: Callable[[Handler], FakeServer],
                                           notes: list[str]) -> None:
    server = serve(lambda p, b, h: chat_reply("Paris", finish="length"))
    engine = engine_for(server, notes)
    try:
        done = engine.complete(ask("capital?"))
    finally:
        engine.close()
    assert done.text == "Paris" and done.finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (11, 3)
    assert server.chats()[0]["stream"] is False


# -- retries ----------------------------------------------------------------------
def flaky(failures: int, status: int = 503, headers: dict[str, str] | None = None) -> Handler:
    count = {"chat": 0}

    def handler(path: str, body: dict[str, Any], hdrs: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        count["chat"] += 1
        if count["chat"] <= failures:
            return Reply(status=status, body={"error": {"message": "busy"}},
                         headers=headers or {})
        return chat_reply("fine")
    return handler


def test_retries_503_then_succeeds(serve: Callable[[Handler], FakeServer],
                                   notes: list[str]) -> None:
    server = serve(flaky(2))
    engine = engine_for(server, notes)
    try:
        assert engine.complete(ask("hi")).text == "fine"
    finally:
        engine.close()
    assert len(server.chats()) == 3


def test_retry_after_is_honoured(serve: Callable[[Handler], FakeServer],
                                 notes: list[str]) -> None:
    server = serve(flaky(1, status=429, headers={"Retry-After": "0.3"}))
    engine = engine_for(server, notes, backoff_s=30.0)  # Retry-After wins over the backoff
    try:
        started = time.perf_counter()
        assert engine.complete(ask("hi")).text == "fine"
        assert 0.25 < time.perf_counter() - started < 5
    finally:
        engine.close()


def test_gives_up_after_four_tries_with_one_clear_line(
        serve: Callable[[Handler], FakeServer], notes: list[str]) -> None:
    server = serve(flaky(99, status=503))
    engine = engine_for(server, notes)
    try:
        with pytest.raises(EngineError) as info:
            engine.complete(ask("hi"))
    finally:
        engine.close()
    assert str(info.value) == f"server {server.url} failed after 4 tries: 503 Service Unavailable"
    assert len(server.chats()) == 4


def test_unreachable_server_fails_at_open() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match=r"failed after 2 tries: cannot connect"):
        RemoteEngine(url, tries=2, backoff_s=0.01)


def test_client_errors_are_not_retried(serve: Callable[[Handler], FakeServer],
                                       notes: list[str]) -> None:
    server = serve(lambda p, b, h: Reply(status=400, body={"error": {
        "message": "This model's maximum context length is 2048 tokens."}})
        if p.endswith("/chat/completions") else Reply(status=404))
    engine = engine_for(server, notes)
    try:
        with pytest.raises(EngineError, match="400 Bad Request: This model's maximum context"):
            engine.complete(ask("hi"))
    finally:
        engine.close()
    assert len(server.chats()) == 1


# -- auth -------------------------------------------------------------------------
def test_api_key_from_the_named_variable(serve: Callable[[Handler], FakeServer],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if headers.get("authorization") != "Bearer s3cret":
            return Reply(status=401, body={"error": {"message": "Invalid API key"}})
        return Reply(status=404) if not path.endswith("/chat/completions") \
            else chat_reply("hello")

    server = serve(handler)
    settings = Settings(engine="openai", base_url=server.url, api_key_env="MY_KEY")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="--api-key-env names MY_KEY, which is not set"):
        RemoteEngine.from_settings(settings)
    monkeypatch.setenv("MY_KEY", "wrong")
    with pytest.raises(EngineError, match="401 Unauthorized") as info:
        RemoteEngine.from_settings(settings)
    assert info.value.hint and "--api-key-env" in info.value.hint
    monkeypatch.setenv("MY_KEY", "s3cret")
    engine = RemoteEngine.from_settings(settings)
    try:
        assert engine.complete(ask("hi")).text == "hello"
    finally:
        engine.close()
    assert all(h["authorization"] == "Bearer s3cret" for _, _, h in server.requests[-2:])


def test_no_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs --base-url"):
        RemoteEngine.from_settings(Settings(engine="openai"))


# -- adapting to the server ---------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize("status", [422, 500])  # llama-cpp-python's server says 500
def test_json_schema_falls_back_to_json_object_once(
        serve: Callable[[Handler], FakeServer], notes: list[str], status: int) -> None:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            return Reply(status=status, body={"error": {"message": "1 validation error: "
                                                        "('body', 'response_format', 'type')"}})
        assert fmt == {"type": "json_object", "schema": SCHEMA}
        return chat_reply('{"n": 3}')

    server = serve(handler)
    engine = engine_for(server, notes)
    try:
        request = ChatRequest((Message("user", "a number"),), json_schema=SCHEMA)
        assert engine.complete(request).text == '{"n": 3}'
        assert engine.complete(request).text == '{"n": 3}'
    finally:
        engine.close()
    kinds = [b["response_format"]["type"] for b in server.chats()]
    assert kinds == ["json_schema", "json_object", "json_object"]


def test_json_schema_is_sent_as_json_schema(serve: Callable[[Handler], FakeServer],
                                            notes: list[str]) -> None:
    server = serve(lambda p, b, h: chat_reply('{"n": 1}'))
    engine = engine_for(server, notes)
    try:
        engine.complete(ChatRequest((Message("user", "x"),), json_schema=SCHEMA))
    finally:
        engine.close()
    assert server.chats()[0]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}


def test_top_k_is_dropped_when_refused(serve: Callable[[Handler], FakeServer],
                                       notes: list[str]) -> None:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if "top_k" in body:
            return Reply(status=400, body={"error": {"message": "Unrecognized request "
                                                     "argument supplied: top_k"}})
        return Reply(status=404) if not path.endswith("/chat/completions") \
            else chat_reply("ok")

    server = serve(handler)
    engine = engine_for(server, notes)
    try:
        assert engine.complete(ask("a")).text == "ok"
        assert engine.complete(ask("b")).text == "ok"
    finally:
        engine.close()
    assert ["top_k" in b for b in server.chats()] == [True, False, False]


# -- token counting -------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/extras/tokenize", "/tokenize"])
def test_counts_with_the_servers_tokenizer(serve: Callable[[Handler], FakeServer],
                                           notes: list[str], path: str) -> None:
    def handler(p: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if p == path:
            text = body.get("input", body.get("content", ""))
            return Reply(body={"tokens": [1] * (len(text.split()) + (p == "/extras/tokenize"))})
        return Reply(status=404)

    server = serve(handler)
    engine = engine_for(server, notes)
    try:
        assert engine.count_tokens("one two three") == 3  # a BOS the server adds is not text
        assert engine.count_tokens("one two three") == 3
        assert engine.count_prompt_tokens([Message("system", "a b"), Message("user", "c")]) \
            == 3 + 2 * 5 + 3
    finally:
        engine.close()
    assert notes == []
    assert server.paths("tokenize").count(path) == 5  # 2 probes, then each text once


# -- batching -------------------------------------------------------------------------
def test_complete_many_keeps_order_under_concurrency(serve: Callable[[Handler], FakeServer],
                                                     notes: list[str]) -> None:
    rng = random.Random(5)
    lock = threading.Lock()

    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        text = body["messages"][-1]["content"]
        if text == "BAD":
            return Reply(status=400, body={"error": {"message": "bad record"}})
        with lock:
            delay = rng.uniform(0.0, 0.05)
        return Reply(body=chat_reply(f"re: {text}").body, delay_s=delay)

    server = serve(handler)
    engine = engine_for(server, notes, concurrency=4)
    pulled: list[int] = []

    def requests() -> Iterator[ChatRequest]:
        for i in range(30):
            pulled.append(i)
            yield ask("BAD" if i == 7 else f"r{i}")

    try:
        results = engine.complete_many(requests())
        first = next(results)
        assert len(pulled) <= 2 * 4 + 1  # pulled lazily, a bounded window ahead
        rest = list(results)
    finally:
        engine.close()
    out = [first, *rest]
    assert len(out) == 30
    for i, result in enumerate(out):
        if i == 7:
            assert isinstance(result, EngineError) and "bad record" in str(result)
        else:
            assert isinstance(result, Completion) and result.text == f"re: r{i}"
    assert 1 < server.max_in_flight <= 4


def test_abandoned_batch_stops_pulling(serve: Callable[[Handler], FakeServer],
                                       notes: list[str]) -> None:
    server = serve(lambda p, b, h: Reply(status=404) if not p.endswith("/chat/completions")
                   else Reply(body=chat_reply("x").body, delay_s=0.02))
    engine = engine_for(server, notes, concurrency=2)
    pulled: list[int] = []

    def requests() -> Iterator[ChatRequest]:
        for i in range(1000):
            pulled.append(i)
            yield ask(str(i))

    try:
        results = engine.complete_many(requests())
        assert isinstance(next(results), Completion)
        results.close()  # type: ignore[attr-defined]
    finally:
        engine.close()
    assert len(pulled) <= 6


# -- scoring ----------------------------------------------------------------------------
def logprobs_reply(top: dict[str, float]) -> Reply:
    entries = [{"token": t, "logprob": lp} for t, lp in top.items()]
    first = {**entries[0], "top_logprobs": entries}
    return Reply(body={"choices": [{"index": 0, "message": {"content": entries[0]["token"]},
                                    "logprobs": {"content": [first]},
                                    "finish_reason": "length"}]})


def scoring_server(top: dict[str, float] | None, label: str = "negative",
                   tokens: dict[str, list[int]] | None = None,
                   pieces: dict[int, str] | None = None) -> Handler:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if path == "/extras/tokenize" and tokens is not None:
            return Reply(body={"tokens": tokens.get(body["input"], [9])})
        if path == "/extras/detokenize" and pieces is not None:
            return Reply(body={"text": pieces[body["tokens"][0]]})
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        if body.get("logprobs"):
            assert body["max_tokens"] == 1 and body["top_logprobs"] == 20
            if top is None:
                return chat_reply("Pos")
            return logprobs_reply(top)
        assert body["response_format"]["json_schema"]["schema"]["properties"]["label"][
            "enum"] == ["positive", "negative"]
        return chat_reply(json.dumps({"label": label}))
    return handler


def score(engine: RemoteEngine, labels: tuple[str, ...] = ("positive", "negative")
          ) -> dict[str, float]:
    request = ScoreRequest((Message("user", "great!"),), labels)
    return {s.continuation: s.logprob for s in engine.score(request)}


def test_scores_from_first_token_logprobs(serve: Callable[[Handler], FakeServer],
                                          notes: list[str]) -> None:
    server = serve(scoring_server({"This": -1.0, "pos": -2.0, "neg": -3.0, "Pos": -0.5}))
    engine = engine_for(server, notes)
    try:
        assert score(engine) == {"positive": -2.0, "negative": -3.0}
        assert engine.score_method == "logprobs"
        score(engine)
    finally:
        engine.close()
    assert [n for n in notes if n.startswith("scoring")] == [
        "scoring labels by the server's logprobs of each label's first token"]


def test_first_tokens_come_from_the_tokenizer(serve: Callable[[Handler], FakeServer],
                                              notes: list[str]) -> None:
    server = serve(scoring_server({"p": -1.0, "positive": -2.5, "negative": -4.0},
                                  tokens={"positive": [5], "negative": [6], "Hello": [1]},
                                  pieces={5: "positive", 6: "negative"}))
    engine = engine_for(server, notes)
    try:
        assert score(engine) == {"positive": -2.5, "negative": -4.0}
    finally:
        engine.close()


@pytest.mark.parametrize("top", [None, {"This": -1.0, "pos": -2.0}])
def test_falls_back_to_a_constrained_reply(serve: Callable[[Handler], FakeServer],
                                           notes: list[str], top: dict[str, float] | None
                                           ) -> None:
    server = serve(scoring_server(top, label="negative"))
    engine = engine_for(server, notes)
    try:
        assert score(engine) == {"positive": -math.inf, "negative": 0.0}
        assert engine.score_method == "constrained"
        score(engine)
    finally:
        engine.close()
    said = [n for n in notes if n.startswith("scoring")]
    assert len(said) == 1 and "constraining the server's reply to the label set" in said[0]
    asked = [b for b in server.chats() if b.get("logprobs")]
    assert len(asked) == (1 if top is None else 2)  # no logprobs at all: stop asking


def test_labels_sharing_a_first_token_are_constrained(serve: Callable[[Handler], FakeServer],
                                                      notes: list[str]) -> None:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if path == "/extras/tokenize":
            return Reply(body={"tokens": {"hot": [3], "hotter": [3, 4]}.get(body["input"], [1])})
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        assert not body.get("logprobs")
        return chat_reply('{"label": "hotter"}')

    server = serve(handler)
    engine = engine_for(server, notes)
    try:
        assert score(engine, ("hot", "hotter")) == {"hot": -math.inf, "hotter": 0.0}
    finally:
        engine.close()
    assert any("share their first token" in n for n in notes)


def test_score_many_yields_in_order(serve: Callable[[Handler], FakeServer],
                                    notes: list[str]) -> None:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        good = "good" in body["messages"][-1]["content"]
        reply = logprobs_reply({"pos": -0.1, "neg": -5.0} if good else {"neg": -0.1, "pos": -5})
        reply.delay_s = random.uniform(0, 0.03)
        return reply

    server = serve(handler)
    engine = engine_for(server, notes, concurrency=4)
    texts = ["good", "bad"] * 6
    try:
        results = list(engine.score_many(
            ScoreRequest((Message("user", t),), ("positive", "negative")) for t in texts))
    finally:
        engine.close()
    for text, result in zip(texts, results, strict=True):
        assert isinstance(result, list)
        best = max(result, key=lambda s: s.logprob).continuation
        assert best == ("positive" if text == "good" else "negative")


# -- the CLI, against failing servers -------------------------------------------------------
def run_cli(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=input, obj=AppState())
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_ask_survives_two_503s(serve: Callable[[Handler], FakeServer]) -> None:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        count = len([b for b in server.chats()])
        if count <= 2:
            return Reply(status=503, body={"error": {"message": "loading"}})
        return sse_reply(["Paris", "."], usage={"prompt_tokens": 9, "completion_tokens": 2})

    server = serve(handler)
    code, out, err = run_cli("--engine", "openai", "--base-url", server.url, "ask", "capital?")
    assert (code, out) == (0, "Paris.\n"), err
    assert len(server.chats()) == 3


def test_cli_ask_reports_a_dead_server_and_exits_1(serve: Callable[[Handler], FakeServer]
                                                   ) -> None:
    server = serve(lambda p, b, h: Reply(status=500, body={"error": {"message": "boom"}},
                                         headers={"Retry-After": "0"})
                   if p.endswith("/chat/completions") else Reply(status=404))
    code, out, err = run_cli("--engine", "openai", "--base-url", server.url, "ask", "hi")
    assert code == 1 and out == ""
    assert err == (f"termlm: error: server {server.url} failed after 4 tries: "
                   "500 Internal Server Error\n")


def test_cli_batch_turns_failures_into_error_records(serve: Callable[[Handler], FakeServer]
                                                     ) -> None:
    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        text = body["messages"][-1]["content"]
        if "2" in text:
            return Reply(status=500, body={"error": {"message": "boom"}},
                         headers={"Retry-After": "0"})
        return chat_reply(text.upper())

    server = serve(handler)
    code, out, err = run_cli("--engine", "openai", "--base-url", server.url,
                             "--concurrency", "3", "batch", "-p", "{text}",
                             input="r1\nr2\nr3\nr4\n")
    assert code == 3, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in records] == ["1", "2", "3", "4"]
    assert records[1]["error"] == (f"server {server.url} failed after 4 tries: "
                                   "500 Internal Server Error")
    assert [r.get("output") for r in records] == ["R1", None, "R3", "R4"]


def test_chains_of_dependent_calls_over_the_server(serve: Callable[[Handler], FakeServer],
                                                   notes: list[str]) -> None:
    """translate's chains (termlm.chains) on a remote engine: each call waits for the one
    before it in its chain (complete_each with None), several chains in flight."""
    from termlm.chains import Chain, run_chains

    def handler(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        return chat_reply("re: " + body["messages"][-1]["content"])

    server = serve(handler)
    engine = engine_for(server, notes, concurrency=3)

    def chain(name: str) -> Chain[str]:
        reply = name
        for _ in range(3):
            done = yield ask(reply)
            reply = done.text
        return reply

    try:
        out = run_chains(engine, [chain(f"c{i}") for i in range(5)])
        assert out == [f"re: re: re: c{i}" for i in range(5)]
        assert 1 < server.max_in_flight <= 3

        def stuck() -> Iterator[ChatRequest | None]:
            yield None

        with pytest.raises(EngineError, match="none is in flight"):
            list(engine.complete_each(stuck()))
    finally:
        engine.close()
