"""RemoteEngine: the Engine protocol over an OpenAI-compatible HTTP server.

llama.cpp's llama-server, vLLM, Ollama, LM Studio and llama-cpp-python's own
server all answer ``POST {base}/chat/completions``. ``stream()`` reads the reply
as server-sent events; ``complete()`` asks for it whole (batch jobs use it: a
llama-cpp-python server cuts a streamed reply short when another request
arrives). Calls that fail for a passing reason (429, 5xx, a refused connection,
a timeout) are tried again with exponential backoff. ``complete_many`` and
``score_many`` keep ``concurrency`` requests in flight and yield results in
request order. Tokens are counted with the server's tokenize endpoint when it
has one. httpx is imported lazily, so ``termlm --help`` does not pay for it.

Every reply is checked against the shape the API promises (termlm.engine.remote_reply):
a malformed one is an error, never an answer. The calls of a batch run in daemon
threads the caller never waits for once it stops (Ctrl-C, SIGTERM): a read blocked
on a server that does not answer cannot hold the process up.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from termlm.engine.remote_http import (
    TRIES,
    Http,
    Rejected,
    Retryable,
    Timeouts,
    cancel_scope,
    json_object,
    sse_data,
)
from termlm.engine.remote_reply import Shapes, kind, tokens_of
from termlm.engine.types import (
    ChatRequest,
    Completion,
    Delta,
    FinishReason,
    Message,
    ModelInfo,
    SamplingParams,
    Score,
    ScoreRequest,
    StreamEvent,
    Timings,
    Usage,
)
from termlm.errors import ConfigError, EngineError, TermlmError

if TYPE_CHECKING:
    import httpx

    from termlm.config import Settings

R = TypeVar("R")
T = TypeVar("T")

TOP_LOGPROBS = 20  # the most the OpenAI API allows
CHARS_PER_TOKEN = 4  # the estimate when the server cannot tokenize
MESSAGE_OVERHEAD = 5  # chat-template tokens around each message (ChatML: ~5)
REPLY_OVERHEAD = 3  # the template's opening of the assistant's reply


def _finish(reason: Any) -> FinishReason:
    return "length" if reason == "length" else "stop"


def _longest_prefix(label: str, top: dict[str, float]) -> str | None:
    return max((t for t in top if t and label.startswith(t)), key=len, default=None)


class RemoteEngine:
    """The Engine and BatchingEngine protocols over an OpenAI-compatible server."""

    def __init__(self, base_url: str, *, model: str | None = None, n_ctx: int = 4096,
                 api_key: str | None = None, concurrency: int = 4, seed: int | None = None,
                 tries: int = TRIES, backoff_s: float = 0.5, timeouts: Timeouts | None = None,
                 notify: Callable[[str], None] | None = None,
                 fallback_model: str = "default") -> None:
        from termlm.output import notice

        started = time.perf_counter()
        self.parallel = max(1, concurrency)
        self._http = Http(base_url, api_key=api_key, tries=tries, backoff_s=backoff_s,
                          timeouts=timeouts, pool=self.parallel + 4)
        self.base_url = self._http.base_url  # where requests go (no credentials in it)
        self.shown_url = self._http.shown  # what messages show (credentials masked)
        self._shapes = Shapes(self.shown_url)
        self.score_method: str | None = None  # "logprobs" or "constrained", once score() ran
        self._seed = seed
        self._notify = notify or notice
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._said: set[str] = set()
        self._send = {"top_k": True, "stream_options": True}  # dropped when the server refuses
        self._schema_format = "json_schema"  # or "json_object" (llama-cpp-python's server)
        self._logprobs = True
        self._tokenizer: str | None = None  # "extras", "root" or "none", once probed
        self._bos: list[int] = []
        self._counts: dict[str, int] = {}
        self._firsts: dict[tuple[str, ...], dict[str, str | None] | None] = {}
        try:
            self._model, reported = self._pick_model(model, fallback_model)
        except BaseException:
            self.close()
            raise
        n_ctx = min(n_ctx, reported) if reported else n_ctx
        self._info = ModelInfo(name=self._model, path=self.shown_url, n_ctx=n_ctx,
                               n_ctx_train=reported or n_ctx, chat_format="server")
        self._load_s = time.perf_counter() - started

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> RemoteEngine:
        from termlm.config import DEFAULT_MODEL

        if not settings.base_url:
            raise ConfigError("--engine openai needs --base-url",
                              hint="e.g. --base-url http://127.0.0.1:8080/v1 (llama-server) or "
                              "http://127.0.0.1:11434/v1 (Ollama)")
        api_key = None
        if settings.api_key_env:
            api_key = os.environ.get(settings.api_key_env)
            if not api_key:
                raise ConfigError(f"--api-key-env names {settings.api_key_env}, which is not set",
                                  hint=f"export {settings.api_key_env}=<your key>")
        where = settings.source.get("model")
        explicit = where != "default" if where else settings.model != DEFAULT_MODEL
        timeouts = Timeouts(connect=settings.timeout_connect, read=settings.timeout_read,
                            total=settings.timeout_total)
        return cls(settings.base_url, model=settings.model if explicit else None,
                   n_ctx=settings.n_ctx, api_key=api_key, concurrency=settings.concurrency,
                   seed=settings.seed, fallback_model=settings.model, timeouts=timeouts,
                   **options)

    # -- protocol ---------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def load_s(self) -> float:
        return self._load_s

    def close(self) -> None:
        self._http.close()

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        started = time.perf_counter()
        response = self._chat(request, stream=True)
        return self._events(response, request, started)

    def complete(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        reply = self._shapes.chat(json_object(self._chat(request, stream=False),
                                              self._http.show))
        total = time.perf_counter() - started
        usage = self._usage(reply.usage, request.messages, reply.text, None)
        rate = usage.completion_tokens / total if total > 0 else 0.0
        return Completion(reply.text, _finish(reply.finish_reason), usage,
                          Timings(ttft_s=total, total_s=total, completion_tokens_per_s=rate))

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        cached = self._counts.get(text)
        if cached is not None:
            return cached
        tokens = self._tokenize(text)
        n = len(tokens) if tokens is not None else -(-len(text) // CHARS_PER_TOKEN)
        if len(text) <= 4096 and (tokens is not None or self._tokenizer == "none"):
            if len(self._counts) >= 1024:
                self._counts.clear()
            self._counts[text] = n
        return n

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """An estimate: the server applies the chat template, which we cannot see."""
        return sum(self.count_tokens(m.content) + MESSAGE_OVERHEAD
                   for m in messages) + REPLY_OVERHEAD

    def score(self, request: ScoreRequest) -> list[Score]:
        """Each label's first-token logprob, when the server gives logprobs and they tell
        the labels apart; else the reply constrained to the label set (the chosen label
        gets log-probability 0, the others -inf)."""
        labels = request.continuations
        firsts = self._first_pieces(labels)
        reason = "the labels share their first token"
        if firsts is not None:
            reason = "the server gives no logprobs"
            top = self._top_logprobs(request.messages) if self._logprobs else None
            if top is not None:
                pieces = [firsts[label] or _longest_prefix(label, top) for label in labels]
                found = [top[p] for p in pieces if p is not None and p in top]
                if len(found) == len(labels) and len(set(pieces)) == len(pieces):
                    self._used("logprobs", "scoring labels by the server's logprobs of each "
                               "label's first token")
                    return [Score(label, lp, 1) for label, lp in zip(labels, found, strict=True)]
                reason = f"a label's first token is not among the server's top {TOP_LOGPROBS}"
        return self._constrained(request, reason)

    # -- batching ---------------------------------------------------------
    def complete_many(self, requests: Iterable[ChatRequest]) -> Iterator[Completion | Exception]:
        return self._ordered(requests, self.complete)

    def complete_each(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[tuple[int, Completion | Exception]]:
        return enumerate(self._ordered(requests, self.complete))  # in order is one valid order

    def score_many(self, requests: Iterable[ScoreRequest]) -> Iterator[list[Score] | Exception]:
        return self._ordered(requests, self.score)

    # -- embeddings ---------------------------------------------------------
    def embeddings(self, texts: list[str]) -> list[list[float]]:
        """``POST /embeddings`` for ``texts`` (retried like chat requests); the vectors in
        input order, checked: one per text, all the same length, every number finite."""
        from termlm.engine.remote_reply import embedding_vectors

        url = f"{self.base_url}/embeddings"
        try:
            response = self._post(url, lambda: {"model": self._model, "input": texts,
                                                "encoding_format": "float"})
        except Rejected as exc:
            raise self._http.error(exc, url) from None
        return embedding_vectors(json_object(response, self._http.show), len(texts),
                                 self.shown_url)

    def embeddings_many(self, batches: Iterable[list[str]]
                        ) -> Iterator[list[list[float]] | Exception]:
        """Batches of texts, ``concurrency`` requests in flight, results in order."""
        return self._ordered(batches, self.embeddings)

    def _ordered(self, requests: Iterable[R | None], call: Callable[[R], T]
                 ) -> Iterator[T | Exception]:
        """``parallel`` calls in flight, requests pulled at most 2 x parallel ahead of the
        results, results in request order; a failed call yields its error in its place.
        A None from ``requests`` (nothing to send yet) stops the pulling until a result
        has been handed back.

        The calls run in daemon threads. When the caller stops early (Ctrl-C, SIGTERM,
        --fail-fast) nothing waits for them: calls still running fail at their next
        read and retry no more, and one blocked on a silent server cannot keep the
        process from exiting. Only the caller writes results, so none is half-written."""
        cancel = threading.Event()
        jobs: queue.SimpleQueue[tuple[Future[T | Exception], R] | None] = queue.SimpleQueue()

        def run(request: R) -> T | Exception:
            try:
                if cancel.is_set():
                    raise EngineError("cancelled")
                return call(request)
            except TermlmError as exc:
                return exc
            except Exception as exc:  # one bad reply must not stop the batch
                return EngineError(f"unexpected reply from server {self.shown_url}: {exc}")

        def work() -> None:
            cancel_scope.event = cancel
            while (job := jobs.get()) is not None:
                future, request = job
                if future.set_running_or_notify_cancel():
                    future.set_result(run(request))

        workers: list[threading.Thread] = []
        pending: deque[Future[T | Exception]] = deque()
        source = iter(requests)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < 2 * self.parallel:
                    try:
                        request = next(source)
                    except StopIteration:
                        exhausted = True
                    else:
                        if request is None:
                            if not pending:
                                raise EngineError("internal: the requests wait for a result, "
                                                  "but none is in flight")
                            break
                        future: Future[T | Exception] = Future()
                        pending.append(future)
                        jobs.put((future, request))
                        if len(workers) < min(self.parallel, len(pending)):
                            workers.append(threading.Thread(
                                target=work, daemon=True,
                                name=f"termlm-remote-{len(workers)}"))
                            workers[-1].start()
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            cancel.set()  # calls still running stop at their next read, and retry no more
            for future in pending:
                future.cancel()
            for _ in workers:
                jobs.put(None)

    # -- talking to the server ----------------------------------------------
    def _post(self, url: str, build: Callable[[], dict[str, Any]], *,
              stream: bool = False) -> httpx.Response:
        """POST with retries; when the server refuses an optional field, drop it, once."""
        while True:
            body = build()
            try:
                attempt = partial(self._http.open, "POST", url, body, stream=stream)
                return self._http.retrying(attempt)
            except Rejected as exc:
                if not self._adapt(exc, body):
                    raise

    def _adapt(self, exc: Rejected, body: dict[str, Any]) -> bool:
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema" and \
                exc.mentions("response_format", "json_schema"):
            self._schema_format = "json_object"  # llama-cpp-python's server: schema inside
            return True
        for key in self._send:
            if key in body and self._send[key] and exc.mentions(key):
                self._send[key] = False
                return True
        return False

    def _pick_model(self, model: str | None, fallback: str) -> tuple[str, int | None]:
        """The model to ask for, and the context length the server reports (vLLM does)."""
        url = f"{self.base_url}/models"
        try:
            data = self._http.json("GET", url)
        except Rejected as exc:
            if exc.status in (401, 403):
                raise self._http.error(exc, url) from None
            return model or fallback, None  # no model list here: trust the name we have
        listed = data.get("data")
        if listed is not None and not isinstance(listed, list):
            raise self._shapes.error(f"the model list's data is {kind(listed)}, not a list")
        entries = [m for m in listed or [] if isinstance(m, dict)
                   and isinstance(m.get("id"), str)]
        ids = [m["id"] for m in entries]
        if model is None:
            if not ids:
                raise EngineError(f"server {self.shown_url} lists no models",
                                  hint="name the model with -m")
            model = ids[0]
            if len(ids) > 1:
                self._notify(f"the server has {len(ids)} models; using {model} "
                             "(choose another with -m)")
        reported = next((m.get("max_model_len") for m in entries if m["id"] == model), None)
        return model, reported if isinstance(reported, int) and reported > 0 else None

    # -- chat ---------------------------------------------------------------
    def _chat_body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self._model, "messages": [m.to_dict() for m in request.messages],
            "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
            "stream": stream,
        }
        if self._send["top_k"]:
            body["top_k"] = s.top_k
        seed = s.seed if s.seed is not None else self._seed
        if seed is not None:
            body["seed"] = seed
        if s.stop:
            body["stop"] = list(s.stop)
        if stream and self._send["stream_options"]:
            body["stream_options"] = {"include_usage": True}
        if request.json_schema is not None:
            schema = dict(request.json_schema)
            body["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
                if self._schema_format == "json_schema"
                else {"type": "json_object", "schema": schema})
        return body

    def _chat(self, request: ChatRequest, *, stream: bool) -> httpx.Response:
        url = f"{self.base_url}/chat/completions"
        try:
            return self._post(url, partial(self._chat_body, request, stream), stream=stream)
        except Rejected as exc:
            raise self._http.error(exc, url) from None

    def _events(self, response: httpx.Response, request: ChatRequest,
                started: float) -> Iterator[StreamEvent]:
        parts: list[str] = []
        finish: str | None = None
        usage: tuple[int, int] | None = None
        first_at: float | None = None
        try:
            for data in sse_data(self._http.lines(response)):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise EngineError(f"server {self.shown_url} sent an event that is not "
                                      "JSON") from None
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise EngineError(f"server {self.shown_url} failed mid-reply: "
                                      f"{Rejected(500, '', data).detail()}")
                pieces, reason, reported = self._shapes.chunk(chunk)
                usage = reported or usage
                finish = reason or finish
                for text in pieces:
                    if text:
                        self._http.extend()
                        first_at = first_at or time.perf_counter()
                        parts.append(text)
                        yield Delta(text)
        except Retryable as exc:  # too late to try again: part of the reply is out
            raise EngineError(f"server {self.shown_url} broke off the reply: "
                              f"{exc.reason}") from None
        finally:
            response.close()
        if finish is None:
            raise EngineError(f"server {self.shown_url} ended the reply before it was finished "
                              "(another request may have interrupted it)")
        ended = time.perf_counter()
        text = "".join(parts)
        counted = self._usage(usage, request.messages, text, len(parts))
        ttft = (first_at or ended) - started
        gen_s = ended - (first_at or ended)
        rate = (counted.completion_tokens - 1) / gen_s if gen_s > 0 else 0.0
        yield Completion(text, _finish(finish), counted,
                         Timings(ttft_s=ttft, total_s=ended - started,
                                 completion_tokens_per_s=max(rate, 0.0)))

    def _usage(self, counted: tuple[int, int] | None, messages: Sequence[Message], text: str,
               n_chunks: int | None) -> Usage:
        if counted is not None:
            return Usage(*counted)
        generated = n_chunks if n_chunks is not None else self.count_tokens(text)
        return Usage(self.count_prompt_tokens(messages), generated)

    # -- tokens -------------------------------------------------------------
    def _tokenize(self, text: str) -> list[int] | None:
        """The server's tokens for ``text``; None: estimate (no tokenizer, or it is down:
        one try only, so a dead server fails the request itself, retried in parallel)."""
        try:
            if self._tokenizer is None:
                with self._probe_lock:
                    if self._tokenizer is None:
                        self._probe_tokenizer()
            if self._tokenizer in (None, "none"):
                return None
            tokens = self._tokenize_with(self._tokenizer or "none", text)
        except (Retryable, EngineError):
            return None
        if tokens is None:
            return None
        n = len(self._bos)
        return tokens[n:] if n and tokens[:n] == self._bos else tokens

    def _tokenize_with(self, kind: str, text: str) -> list[int] | None:
        """Tokens from one kind of endpoint; None when the server has no such endpoint."""
        root = self._http.root
        body: dict[str, Any] = {"input": text}
        if kind == "extras":  # llama-cpp-python's server
            url = f"{root}/extras/tokenize"
        else:  # llama-server reads "content", vLLM "prompt"
            url, body = f"{root}/tokenize", {"content": text, "add_special": False,
                                             "prompt": text, "add_special_tokens": False,
                                             "model": self._model}
        try:
            data = self._http.json("POST", url, body, retry=False)
        except (Rejected, EngineError):  # absent, or not JSON: Retryable (down) goes up
            return None
        return tokens_of(data)  # None unless a list of token ids: then there is no tokenizer

    def _probe_tokenizer(self) -> None:
        for where in ("extras", "root"):
            tokens = self._tokenize_with(where, "Hello")
            if tokens:
                self._bos = self._tokenize_with(where, "") or []
                self._tokenizer = where
                return
        self._tokenizer = "none"
        self._say("the server has no tokenize endpoint: token counts are estimated at "
                  f"~{CHARS_PER_TOKEN} characters per token")

    def _piece(self, token: int) -> str | None:
        """The text of one token (llama-cpp-python: /extras/detokenize; others: /detokenize)."""
        path = "extras/detokenize" if self._tokenizer == "extras" else "detokenize"
        try:
            data = self._http.json("POST", f"{self._http.root}/{path}", {"tokens": [token]},
                                   retry=False)
        except (Rejected, Retryable, EngineError):
            return None
        piece = next((data[k] for k in ("text", "content", "prompt")
                      if isinstance(data.get(k), str)), None)
        return piece or None

    # -- scoring ------------------------------------------------------------
    def _first_pieces(self, labels: tuple[str, ...]) -> dict[str, str | None] | None:
        """Each label's first token as text (None: unknown); None when two labels share it."""
        if labels in self._firsts:
            return self._firsts[labels]
        firsts: dict[str, str | None] = {}
        ids: list[int] = []
        for label in labels:
            tokens = self._tokenize(label)
            firsts[label] = self._piece(tokens[0]) if tokens else None
            ids.extend(tokens[:1] if tokens else [])
        result = None if len(set(ids)) < len(ids) else firsts
        if self._tokenizer is not None:  # not while the server is unreachable
            self._firsts[labels] = result
        return result

    def _top_logprobs(self, messages: tuple[Message, ...]) -> dict[str, float] | None:
        """The reply's first-token distribution as {token text: logprob}, if the server tells."""
        url = f"{self.base_url}/chat/completions"

        def build() -> dict[str, Any]:
            return {"model": self._model, "messages": [m.to_dict() for m in messages],
                    "max_tokens": 1, "temperature": 0.0, "logprobs": True,
                    "top_logprobs": TOP_LOGPROBS, "stream": False}

        try:
            top = self._shapes.top_logprobs(json_object(self._post(url, build), self._http.show))
        except Rejected as exc:
            if not exc.mentions("logprobs"):
                raise self._http.error(exc, url) from None
            top = None
        if top is None:
            self._logprobs = False  # this server does not give them: stop asking
        return top

    def _constrained(self, request: ScoreRequest, reason: str) -> list[Score]:
        labels = list(request.continuations)
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": labels}},
                  "required": ["label"], "additionalProperties": False}
        sampling = SamplingParams(temperature=0.0, max_tokens=32 + max(map(len, labels)))
        reply = self.complete(ChatRequest(request.messages, sampling, json_schema=schema)).text
        try:
            value = json.loads(reply)["label"]
        except (ValueError, KeyError, TypeError):
            value = None
        if value not in labels:
            folded = {label.casefold(): label for label in labels}
            value = folded.get(str(value).casefold()) if value is not None else None
        if value is None:
            raise EngineError(f"the server's reply is not one of the labels: {reply[:80]!r}")
        self._used("constrained", f"scoring labels by constraining the server's reply to the "
                   f"label set ({reason}); the chosen label gets all the probability")
        return [Score(label, 0.0 if label == value else -math.inf, 1) for label in labels]

    def _used(self, method: str, message: str) -> None:
        self.score_method = method
        self._say(message, key=method)

    def _say(self, message: str, key: str | None = None) -> None:
        """A notice on stderr, once per key."""
        with self._lock:
            if (key or message) in self._said:
                return
            self._said.add(key or message)
        self._notify(message)
