"""Reliability of --engine openai against a server that misbehaves (issue 11: items 3, 4, 13).

``FaultyServer`` is a small OpenAI-compatible server (http.server in threads) whose
``mode`` picks one way to fail: hang (never answer), trickle (a byte at a time, in
the body or in the headers), 500 forever, 429 with Retry-After, malformed JSON, the
wrong shape (content 42, choices missing or empty, content null), a truncated SSE
stream, a connection reset mid-reply, an HTML error page, a huge reply. Each test
checks a clear one-line error or error record, bounded time, nothing half-written,
and the exit code. Ctrl-C and SIGTERM are sent to a real ``python -m termlm``.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.config import read_env
from termlm.engine import remote_http
from termlm.engine.remote import RemoteEngine
from termlm.engine.remote_http import Http, Timeouts, normalize_base_url, redact_url
from termlm.engine.types import ChatRequest, Message, SamplingParams
from termlm.errors import ConfigError, EngineError

HANG_S = 8.0  # the longest a hanging reply hangs (so a regression fails, never stalls CI)
MALFORMED = {
    "content42": "choices[0].message.content is a number, not a string",
    "no_choices": "choices is missing",
    "empty_choices": "choices is an empty list",
    "null_content": "choices[0].message.content is null, not a string",
    "message_list": "choices[0].message is a list, not an object",
    "finish_number": "choices[0].finish_reason is a number, not a string",
    "usage_text": "usage.prompt_tokens is a string, not a whole number",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # a client that hung up


class FaultyServer:
    """An OpenAI-compatible server that fails in the way ``mode`` says.

    ``faults``: how many chat requests get the fault before it answers well (None:
    all of them); ``healthy``: how many answer well before the faults start.
    GET /v1/models lists one model; the tokenize endpoints are absent (404).
    """

    def __init__(self, mode: str = "ok", *, faults: int | None = None,
                 healthy: int = 0) -> None:
        self.mode = mode
        self.faults = faults
        self.healthy = healthy
        self.chats: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                owner.auth.append(self.headers.get("Authorization"))
                if self.path.endswith("/models"):
                    self._json(200, {"data": [{"id": "faulty"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                with owner._lock:
                    owner.chats.append(body)
                    n = len(owner.chats)
                faulty = n > owner.healthy and (owner.faults is None
                                                or n <= owner.healthy + owner.faults)
                owner.serve(self, owner.mode if faulty else "ok", body)

            def _json(self, status: int, data: Any) -> None:
                owner.send(self, status, json.dumps(data).encode())

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    # -- replies ------------------------------------------------------------
    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, payload: bytes,
             content_type: str = "application/json", headers: dict[str, str] | None = None
             ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()

    @staticmethod
    def reply(text: Any, finish: Any = "stop", **extra: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}], **extra}

    def serve(self, h: BaseHTTPRequestHandler, mode: str, body: dict[str, Any]) -> None:
        text = body["messages"][-1]["content"]
        if body.get("stream"):
            self._stream(h, mode, text)
            return
        shapes: dict[str, Any] = {
            "ok": self.reply(f"re: {text}", usage={"prompt_tokens": 3,
                                                   "completion_tokens": 2}),
            "content42": self.reply(42),
            "no_choices": {"id": "x", "object": "chat.completion"},
            "empty_choices": {"choices": []},
            "null_content": self.reply(None),
            "message_list": {"choices": [{"message": ["re"], "finish_reason": "stop"}]},
            "finish_number": self.reply("re", finish=7),
            "usage_text": self.reply("re", usage={"prompt_tokens": "3",
                                                  "completion_tokens": 2}),
        }
        if mode in shapes:
            self.send(h, 200, json.dumps(shapes[mode]).encode())
        elif mode == "hang":
            self.stop.wait(HANG_S)
            h.close_connection = True  # then hang up, answering nothing
        elif mode == "trickle":  # the headers, then the body a byte at a time
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "1000000")
            h.end_headers()
            self._drip(h, b" ")
        elif mode == "trickle_headers":  # the status line, then a header that never ends
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._drip(h, b"a")
        elif mode == "500":
            self.send(h, 500, b'{"error": {"message": "boom"}}')
        elif mode == "429":
            self.send(h, 429, b'{"error": {"message": "slow down"}}',
                      headers={"Retry-After": "0.2"})
        elif mode == "bad_json":
            self.send(h, 200, b'{"choices": [{"message": {"content": "cut')
        elif mode == "html":
            self.send(h, 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                      "text/html")
        elif mode == "html200":
            self.send(h, 200, b"<!doctype html><html><body>Welcome</body></html>",
                      "text/html")
        elif mode == "reset":  # half the body, then a TCP reset
            payload = json.dumps(self.reply("re: " + text)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
        elif mode == "gzip":  # a well-formed reply, compressed
            payload = gzip.compress(json.dumps(self.reply(f"re: {text}")).encode())
            self.send(h, 200, payload, headers={"Content-Encoding": "gzip"})
        elif mode == "huge":
            self.send(h, 200, json.dumps(self.reply("x" * (2 * 2**20))).encode())
        else:  # pragma: no cover - a typo in a test
            raise AssertionError(f"unknown mode {mode}")

    def _stream(self, h: BaseHTTPRequestHandler, mode: str, text: str) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        chunk = {"choices": [{"index": 0, "delta": {"content": f"re: {text}"}}]}
        if mode == "pings":  # one piece of text, then pings and nothing else
            h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self._drip(h, b": ping\n\n")
            return
        if mode == "slow_stream":  # a long answer, a piece every 0.1 s
            for i in range(10):
                piece = {"choices": [{"index": 0, "delta": {"content": f"{i} "}}]}
                h.wfile.write(f"data: {json.dumps(piece)}\n\n".encode())
                h.wfile.flush()
                time.sleep(0.1)
        events = [chunk]
        if mode in ("delta42", "content42"):
            events = [{"choices": [{"index": 0, "delta": {"content": 42}}]}]
        if mode != "truncated_sse":
            events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        for event in events:
            h.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        if mode != "truncated_sse":
            h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()

    def _drip(self, h: BaseHTTPRequestHandler, byte: bytes) -> None:
        h.close_connection = True  # the reply is never finished: hang up after it
        deadline = time.monotonic() + HANG_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                h.wfile.write(byte)
                h.wfile.flush()
            except OSError:
                return
            self.stop.wait(0.05)

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def faulty() -> Iterator[FaultyServer]:
    server = FaultyServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries still happen (4 tries), without the seconds of backoff between them."""
    real = Http.delay
    monkeypatch.setattr(Http, "delay", lambda self, n, after: min(real(self, n, after), 0.3)
                        if after is not None else 0.01)


def run_cli(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=input, obj=AppState())
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def remote(server: FaultyServer, *more: str) -> list[str]:
    return ["--engine", "openai", "--base-url", server.url, *more]


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path``, each one whole JSON (a half-written line fails here)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batch(server: FaultyServer, out: Path, *more: str, input: str = "one\n"
          ) -> tuple[int, str, str, float]:
    started = time.monotonic()
    code, stdout, stderr = run_cli(*remote(server), "batch", "-p", "{text}", "-o", str(out),
                                   *more, input=input)
    return code, stdout, stderr, time.monotonic() - started


def resumed_ok(server: FaultyServer, out: Path, input: str = "one\n") -> list[dict[str, Any]]:
    """--resume against the healed server: every record done, each id exactly once."""
    server.mode = "ok"
    code, _, err, _ = batch(server, out, "--resume", input=input)
    assert code == 0, err
    done = records(out)
    ids = [r["id"] for r in done if "error" not in r]
    assert sorted(ids) == sorted(set(ids)) == sorted(str(i + 1)
                                                      for i in range(len(input.splitlines())))
    return done


# ---------------------------------------------------------------- item 3: interrupting


def _termlm_env() -> dict[str, str]:
    env = dict(os.environ)  # the isolated config and state dirs from conftest
    env.pop("TERMLM_NO_CRASH_GUARD", None)  # as a user runs it: the crash guard forks
    env.pop("NO_COLOR", None)
    return env


@pytest.mark.parametrize(("how", "concurrency"), [("SIGINT", 4), ("SIGTERM", 4),
                                                  ("SIGINT", 1)])
def test_a_signal_stops_a_remote_batch_at_once_while_the_server_hangs(
        tmp_path: Path, how: str, concurrency: int) -> None:
    """Records answered are written whole; the requests hanging are abandoned; exit 130
    within a second or two of the signal, not when the server answers; --resume
    finishes each record exactly once."""
    server = FaultyServer("hang", healthy=2)
    inp, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    inp.write_text("".join(f"line {i}\n" for i in range(8)), encoding="utf-8")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "termlm", *remote(server, "--concurrency", str(concurrency)),
             "batch",
             "-p", "{text}", str(inp), "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_termlm_env(),
            start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            hanging = 2 + min(concurrency, 3)  # the answered two, and some left hanging
            while len(server.chats) < hanging and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.02)
            assert len(server.chats) >= hanging, "the batch never got its requests out"
            time.sleep(0.3)  # the answered records reach the file
            sent = time.monotonic()
            # to termlm's own pid: the crash guard passes it on to the child, once (a
            # terminal's Ctrl-C reaches both, and the guard then passes nothing on)
            proc.send_signal(getattr(signal, how))
            try:
                _, err = proc.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                pytest.fail(f"termlm still running 3 s after {how} (the server still hangs)")
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        assert proc.returncode == 130, err
        assert took < 2.0, f"exit took {took:.2f} s after {how}"
        assert "interrupted" in err and "Traceback" not in err
        written = records(out)  # whole lines only
        assert all("error" not in r for r in written)
        assert [r["id"] for r in written] == [str(i + 1) for i in range(len(written))]
        server.mode = "ok"
        done = subprocess.run(
            [sys.executable, "-m", "termlm", *remote(server), "batch", "-p", "{text}",
             str(inp), "-o", str(out), "--resume"],
            capture_output=True, text=True, env=_termlm_env(), timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert sorted(int(r["id"]) for r in records(out)) == list(range(1, 9))
    finally:
        server.close()


def test_closing_the_engine_wakes_a_request_blocked_in_another_thread(
        faulty: FaultyServer) -> None:
    faulty.mode = "hang"
    engine = RemoteEngine(faulty.url, tries=1)
    failed: list[BaseException] = []

    def call() -> None:
        try:
            engine.complete(ChatRequest((Message("user", "hi"),), SamplingParams()))
        except EngineError as exc:
            failed.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    while not faulty.chats:
        time.sleep(0.01)
    time.sleep(0.1)
    started = time.monotonic()
    engine.close()
    thread.join(timeout=2)
    assert not thread.is_alive() and time.monotonic() - started < 1.0
    assert failed and "failed after 1 try" in str(failed[0])


def test_the_read_guard_is_in_place() -> None:
    """The total timeout is enforced below httpx; this fails if an httpx upgrade moves
    the place the guard hooks into (then only bodies would be bounded)."""
    http = Http("http://127.0.0.1:9/v1")
    try:
        http.client()
        assert http.guarded
    finally:
        http.close()


# ---------------------------------------------------------------- item 3: timeouts


def test_timeouts_are_settings_with_defaults_and_checked(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from termlm.config import Settings, load_settings

    assert (Settings().timeout_connect, Settings().timeout_read,
            Settings().timeout_total) == (10.0, 120.0, 600.0)
    assert read_env({"TERMLM_TIMEOUT_READ": "2.5", "TERMLM_TIMEOUT_TOTAL": "30",
                     "TERMLM_TIMEOUT_CONNECT": "1"}) == {
        "timeout_read": 2.5, "timeout_total": 30.0, "timeout_connect": 1.0}
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match="TERMLM_TIMEOUT_READ: timeout_read must be"):
            read_env({"TERMLM_TIMEOUT_READ": bad})
    config = Path(os.environ["TERMLM_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.yaml").write_text("timeout_total: 42\n", encoding="utf-8")
    assert load_settings({"timeout_read": 3}).timeout_total == 42.0
    assert load_settings({"timeout_read": 3}).timeout_read == 3.0
    code, out, err = run_cli("--timeout-connect", "0.5", "config", "show", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["timeout_connect"] == 0.5


def test_a_silent_server_times_out_into_an_error_record_retried_on_resume(
        faulty: FaultyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faulty.mode = "hang"
    monkeypatch.setenv("TERMLM_TIMEOUT_READ", "0.3")
    out = tmp_path / "out.jsonl"
    code, _, err, took = batch(faulty, out)
    assert code == 3, err
    assert took < 4.0
    (record,) = records(out)
    assert record["error"] == (f"server {faulty.url} failed after 4 tries: timed out: "
                               "nothing from the server for 0.3 s (timeout_read)")
    assert len(faulty.chats) == 4  # a timeout is worth another try
    (done,) = resumed_ok(faulty, out)
    assert done["output"] == "re: one"


@pytest.mark.parametrize("mode", ["trickle", "trickle_headers"])
def test_a_trickling_server_fails_by_the_total_timeout(
        faulty: FaultyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mode: str) -> None:
    """A byte every 50 ms never trips the read timeout; the total one ends each try."""
    faulty.mode = mode
    monkeypatch.setenv("TERMLM_TIMEOUT_READ", "5")
    monkeypatch.setenv("TERMLM_TIMEOUT_TOTAL", "0.4")
    out = tmp_path / "out.jsonl"
    code, _, err, took = batch(faulty, out)
    assert code == 3, err
    assert took < 5.0
    (record,) = records(out)
    assert record["error"] == (f"server {faulty.url} failed after 4 tries: timed out: "
                               "no complete reply within 0.4 s (timeout_total)")
    resumed_ok(faulty, out)


def test_a_stream_of_pings_fails_by_the_total_timeout_a_slow_answer_does_not(
        faulty: FaultyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMLM_TIMEOUT_TOTAL", "0.4")
    faulty.mode = "pings"
    started = time.monotonic()
    code, out, err = run_cli(*remote(faulty), "ask", "hi")
    assert code == 1 and time.monotonic() - started < 3.0
    assert out.startswith("re: hi")
    assert err.strip().splitlines()[-1] == (
        f"termlm: error: server {faulty.url} broke off the reply: timed out: no complete "
        "reply within 0.4 s (timeout_total)")
    faulty.mode = "slow_stream"  # 1 s in all, but never 0.4 s without a piece of text
    code, out, err = run_cli(*remote(faulty), "ask", "hi")
    assert code == 0, err
    assert out == "0 1 2 3 4 5 6 7 8 9 re: hi\n"


def test_a_slow_connect_is_bounded_by_the_connect_timeout(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A listening socket whose accept queue is full: the handshake never completes."""
    monkeypatch.setenv("TERMLM_TIMEOUT_CONNECT", "0.2")
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # the one place in the queue, taken
        port = listener.getsockname()[1]
        started = time.monotonic()
        code, _, err = run_cli("--engine", "openai", "--base-url",
                               f"http://127.0.0.1:{port}/v1", "ask", "hi")
        took = time.monotonic() - started
    assert code == 1 and took < 5.0, err
    assert err == (f"termlm: error: server http://127.0.0.1:{port}/v1 failed after 4 tries: "
                   "timed out: no connection within 0.2 s (timeout_connect)\n")


# ---------------------------------------------------------------- item 4: malformed replies


@pytest.mark.parametrize("mode", sorted(MALFORMED))
def test_a_reply_of_the_wrong_shape_is_an_error_record_not_an_answer(
        faulty: FaultyServer, tmp_path: Path, mode: str) -> None:
    faulty.mode = mode
    out = tmp_path / "out.jsonl"
    code, _, err, _ = batch(faulty, out, input="one\ntwo\n")
    assert code == 3, err
    got = records(out)
    assert [r["id"] for r in got] == ["1", "2"]
    for record in got:
        assert "output" not in record
        assert record["error"] == f"server {faulty.url} sent a malformed reply: {MALFORMED[mode]}"
    assert len(faulty.chats) == 2  # nonsense is not asked for again
    resumed_ok(faulty, out, input="one\ntwo\n")


@pytest.mark.parametrize(("mode", "message"), [
    ("bad_json", "did not answer with a JSON object"),
    ("html200", "did not answer with a JSON object"),
])
def test_a_reply_that_is_not_json_is_an_error_record(faulty: FaultyServer, tmp_path: Path,
                                                     mode: str, message: str) -> None:
    faulty.mode = mode
    out = tmp_path / "out.jsonl"
    code, _, err, _ = batch(faulty, out)
    assert code == 3, err
    (record,) = records(out)
    assert record["error"] == f"server {faulty.url}/chat/completions {message}"
    assert len(faulty.chats) == 1
    resumed_ok(faulty, out)


def test_a_streamed_delta_that_is_not_text_is_an_error(faulty: FaultyServer) -> None:
    faulty.mode = "delta42"
    code, _, err = run_cli(*remote(faulty), "ask", "hi")
    assert code == 1
    assert err.endswith(f"termlm: error: server {faulty.url} sent a malformed reply: "
                        "choices[0].delta.content is a number, not a string\n")


def test_a_truncated_stream_is_one_error_line(faulty: FaultyServer) -> None:
    faulty.mode = "truncated_sse"
    code, out, err = run_cli(*remote(faulty), "ask", "hi")
    assert code == 1
    assert out.startswith("re: hi")  # what came is shown, and said to be cut short
    assert err.strip().splitlines()[-1] == (
        f"termlm: error: server {faulty.url} ended the reply before it was finished "
        "(another request may have interrupted it)")


def test_malformed_logprobs_are_an_error_not_a_score(tmp_path: Path) -> None:
    class Server(FaultyServer):
        def serve(self, h: BaseHTTPRequestHandler, mode: str, body: dict[str, Any]) -> None:
            entry = {"token": "pos", "logprob": "high"}
            self.send(h, 200, json.dumps({"choices": [{
                "message": {"content": "pos"}, "finish_reason": "length",
                "logprobs": {"content": [{**entry, "top_logprobs": [entry]}]}}]}).encode())

    server = Server()
    try:
        code, out, err = run_cli(*remote(server), "classify", "--labels", "positive,negative",
                                 input="great\n")
    finally:
        server.close()
    assert code == 3, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["error"] == (f"server {server.url} sent a malformed reply: "
                               "choices[0].logprobs.content[0].logprob is a string, "
                               "not a number")


def test_token_ids_that_are_not_ids_mean_no_tokenizer() -> None:
    from termlm.engine.remote_reply import tokens_of

    assert tokens_of({"tokens": [1, 2, 3]}) == [1, 2, 3]
    for bad in ({"tokens": ["a"]}, {"tokens": [1.5]}, {"tokens": [True]}, {"tokens": [-1]},
                {"tokens": "123"}, {}):
        assert tokens_of(bad) is None


# ---------------------------------------------------------------- the other failure modes


def test_500_forever_is_an_error_record_after_four_tries(faulty: FaultyServer,
                                                         tmp_path: Path) -> None:
    faulty.mode = "500"
    out = tmp_path / "out.jsonl"
    code, _, err, took = batch(faulty, out)
    assert code == 3 and took < 5.0, err
    (record,) = records(out)
    assert record["error"] == (f"server {faulty.url} failed after 4 tries: "
                               "500 Internal Server Error")
    assert len(faulty.chats) == 4
    resumed_ok(faulty, out)


def test_429_waits_as_retry_after_says_then_succeeds(faulty: FaultyServer,
                                                     tmp_path: Path) -> None:
    faulty.mode, faulty.faults = "429", 2
    out = tmp_path / "out.jsonl"
    code, _, err, took = batch(faulty, out)
    assert code == 0, err
    assert took >= 0.4  # two waits of Retry-After: 0.2
    assert [r["output"] for r in records(out)] == ["re: one"]
    assert len(faulty.chats) == 3


def test_429_forever_is_an_error_record(faulty: FaultyServer, tmp_path: Path) -> None:
    faulty.mode = "429"
    out = tmp_path / "out.jsonl"
    code, _, err, _ = batch(faulty, out)
    assert code == 3, err
    assert records(out)[0]["error"] == (f"server {faulty.url} failed after 4 tries: "
                                        "429 Too Many Requests")


def test_an_html_error_page_is_retried_then_one_line(faulty: FaultyServer,
                                                     tmp_path: Path) -> None:
    faulty.mode = "html"
    out = tmp_path / "out.jsonl"
    code, _, err, _ = batch(faulty, out)
    assert code == 3, err
    assert records(out)[0]["error"] == f"server {faulty.url} failed after 4 tries: 502 Bad Gateway"
    assert len(faulty.chats) == 4


def test_a_connection_reset_mid_reply_is_retried(faulty: FaultyServer, tmp_path: Path) -> None:
    faulty.mode, faulty.faults = "reset", 1
    out = tmp_path / "out.jsonl"
    code, _, err, _ = batch(faulty, out)
    assert code == 0, err
    assert [r["output"] for r in records(out)] == ["re: one"]
    assert len(faulty.chats) == 2
    faulty.faults = None
    faulty.chats.clear()
    out.unlink()
    code, _, err, _ = batch(faulty, out)
    assert code == 3, err
    error = records(out)[0]["error"]
    assert error.startswith(f"server {faulty.url} failed after 4 tries: connection failed")
    assert "\n" not in error


def test_a_compressed_reply_is_read(faulty: FaultyServer, tmp_path: Path) -> None:
    faulty.mode = "gzip"
    out = tmp_path / "out.jsonl"
    code, _, err, _ = batch(faulty, out)
    assert code == 0, err
    assert [r["output"] for r in records(out)] == ["re: one"]


def test_a_huge_reply_is_refused(faulty: FaultyServer, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_http, "MAX_REPLY_BYTES", 2**20)
    faulty.mode = "huge"
    out = tmp_path / "out.jsonl"
    code, _, err, took = batch(faulty, out)
    assert code == 3 and took < 5.0, err
    assert records(out)[0]["error"] == (f"server {faulty.url} sent a reply larger than 1 MiB")
    assert len(faulty.chats) == 1


# ---------------------------------------------------------------- item 13: credentials


def test_redact_url_masks_credentials_everywhere() -> None:
    assert redact_url("http://user:pass@host:8080/v1") == "http://user:***@host:8080/v1"
    assert redact_url("https://tok3n@host/v1?q=a@b") == "https://***@host/v1?q=a@b"
    assert redact_url("http://host/v1") == "http://host/v1"
    assert redact_url("user:pass@host:8080/v1") == "user:***@host:8080/v1"
    assert redact_url("http://u:p@ss:w@rd@host/x") == "http://u:***@host/x"
    with pytest.raises(ConfigError) as info:
        normalize_base_url("ftp://user:hunter2@host/v1")
    assert "hunter2" not in str(info.value) and "user:***@host" in str(info.value)


def test_credentials_in_the_base_url_are_sent_as_auth_and_never_shown(
        faulty: FaultyServer, tmp_path: Path) -> None:
    faulty.mode = "content42"
    url = faulty.url.replace("http://", "http://alice:hunter2@")
    shown = faulty.url.replace("http://", "http://alice:***@")
    proc = subprocess.run([sys.executable, "-m", "termlm", "-v", "--engine", "openai",
                           "--base-url", url, "ask", "hi"], capture_output=True, text=True,
                          env=_termlm_env(), timeout=30, check=False)
    assert proc.returncode == 1
    assert "hunter2" not in proc.stderr + proc.stdout  # the error line and the -v log
    assert proc.stderr.strip().splitlines()[-1] == (
        f"termlm: error: server {shown} sent a malformed reply: "
        "choices[0].delta.content is a number, not a string")
    expected = "Basic " + base64.b64encode(b"alice:hunter2").decode()
    assert faulty.auth and all(a == expected for a in faulty.auth)
    faulty.mode = "500"
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli("--engine", "openai", "--base-url", url, "batch", "-p", "{text}",
                           "-o", str(out), input="one\n")
    assert code == 3 and "hunter2" not in err + out.read_text(encoding="utf-8")
    assert records(out)[0]["error"] == (f"server {shown} failed after 4 tries: "
                                        "500 Internal Server Error")


def test_timeouts_reach_the_engine_from_settings(faulty: FaultyServer) -> None:
    from termlm.config import Settings

    engine = RemoteEngine.from_settings(Settings(engine="openai", base_url=faulty.url,
                                                 timeout_connect=1.5, timeout_read=2.5,
                                                 timeout_total=3.5))
    try:
        assert engine._http.timeouts == Timeouts(connect=1.5, read=2.5, total=3.5)
    finally:
        engine.close()
