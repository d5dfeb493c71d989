"""HTTP plumbing for RemoteEngine: one httpx client, retries with backoff, SSE, error lines.

A try either returns a 2xx response, or fails as ``Retryable`` (429, 5xx, a
refused connection, a timeout: tried again with exponential backoff and
jitter, honouring Retry-After) or as ``Rejected`` (the server refused the
request itself: 4xx, or the 500 with a validation error that llama-cpp-python's
server sends for a field it does not know). httpx is imported lazily.

Every try has three limits (:class:`Timeouts`): connecting, waiting for the next
bytes, and the whole try from sending to the last byte (for a streamed reply: to
the next piece of text), so a server that trickles a byte every few seconds, or
sends pings and nothing else, fails too. The reads are guarded below the
HTTP layer (a wrapper around httpcore's network streams), so the total limit
holds while the headers are read as well. A reply larger than
``MAX_REPLY_BYTES`` is refused. Credentials in a URL never reach a message:
:func:`redact_url` is the one place that shows a URL.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from termlm.errors import ConfigError, EngineError

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

TRIES = 4  # one call and three retries
RETRY_AFTER_CAP_S = 60.0  # a server that asks for a longer wait gets this much
BACKOFF_CAP_S = 30.0
MAX_REPLY_BYTES = 32 * 1024 * 1024  # no chat, tokenize or score reply comes near this
# per thread: .event, set when the batch a worker thread serves is dropped; .deadline, the
# time.monotonic() by which the current try must be done
cancel_scope = threading.local()


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect; with no bytes from the server; for a whole try."""

    connect: float = 10.0
    read: float = 120.0
    total: float = 600.0


def redact_url(url: str) -> str:
    """``url`` with any credentials in it masked: ``http://user:***@host/v1``.

    Works on text that is not a valid URL too (what a user typed, shown in an error)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon and user else "***"
    return f"{scheme}{sep}{masked}@{host}{tail}"


def malformed(base_url: str, what: str) -> EngineError:
    """The error for a reply that is not the shape the API promises (not retried)."""
    return EngineError(f"server {base_url} sent a malformed reply: {what}")


class Retryable(Exception):
    """A failure worth another try: 429, 5xx, a connection error, a timeout."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Rejected(Exception):
    """The server refused the request itself (4xx, or a 500 that reports a validation error)."""

    def __init__(self, status: int, phrase: str, text: str) -> None:
        super().__init__(f"{status} {phrase}")
        self.status = status
        self.text = text

    def mentions(self, *words: str) -> bool:
        """Whether the server's complaint names one of ``words`` (a field it refused)."""
        low = self.text.lower()
        return self.status not in (401, 403, 404) and any(w in low for w in words)

    def detail(self) -> str:
        """The server's own message, on one line."""
        message: Any = self.text
        try:
            data = json.loads(self.text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            message = (error.get("message") if isinstance(error, dict) else error) \
                or data.get("detail") or data.get("message") or self.text
        text = " ".join(str(message).split())
        return text[:300] + ("..." if len(text) > 300 else "")


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event; comments (pings) and other fields are skipped."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def normalize_base_url(url: str) -> str:
    """Trim the URL; a bare host:port gets the usual ``/v1``."""
    import urllib.parse

    text = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--base-url must be an http:// or https:// URL, not "
                          f"{redact_url(url)!r}",
                          hint="e.g. --base-url http://127.0.0.1:8080/v1")
    return text if parts.path else text + "/v1"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: back off as usual


def _past_deadline() -> bool:
    deadline: float | None = getattr(cancel_scope, "deadline", None)
    return deadline is not None and time.monotonic() >= deadline


def describe(exc: Exception, timeouts: Timeouts | None = None) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        if timeouts is not None:
            if _past_deadline():
                return (f"timed out: no complete reply within {timeouts.total:g} s "
                        "(timeout_total)")
            if isinstance(exc, httpx.ConnectTimeout):
                return f"timed out: no connection within {timeouts.connect:g} s (timeout_connect)"
            if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout)):
                return f"timed out: nothing from the server for {timeouts.read:g} s (timeout_read)"
        return f"timed out ({type(exc).__name__})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text})"
    return f"connection failed ({text})"


class _Live:
    """The guarded streams still open (weakly held), shared by the client's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: weakref.WeakSet[_GuardedStream] = weakref.WeakSet()

    def add(self, stream: _GuardedStream) -> None:
        with self._lock:
            self._streams.add(stream)

    def discard(self, stream: _GuardedStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def all(self) -> list[_GuardedStream]:
        with self._lock:
            return list(self._streams)


class _GuardedStream:
    """httpcore's network stream, with each read bounded by the try's deadline and
    refused once the batch is dropped; ``shutdown`` wakes a read blocked in another
    thread (closing a socket does not)."""

    def __init__(self, inner: Any, live: _Live) -> None:
        self._inner = inner
        self._live = live
        live.add(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        cancel: threading.Event | None = getattr(cancel_scope, "event", None)
        if cancel is not None and cancel.is_set():
            raise httpcore.ReadError("cancelled")
        deadline: float | None = getattr(cancel_scope, "deadline", None)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ReadTimeout("the try took longer than its total timeout")
            timeout = left if timeout is None else min(timeout, left)
        data: bytes = self._inner.read(max_bytes, timeout)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._live.discard(self)
        self._inner.close()

    def shutdown(self) -> None:
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed by the other side
                sock.shutdown(socket.SHUT_RDWR)

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> _GuardedStream:
        self._live.discard(self)
        return _GuardedStream(self._inner.start_tls(ssl_context, server_hostname, timeout),
                              self._live)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend:
    """httpcore's network backend, handing out guarded streams."""

    def __init__(self, inner: Any, live: _Live) -> None:
        self._inner = inner
        self._live = live

    def connect_tcp(self, *args: Any, **kwargs: Any) -> _GuardedStream:
        return _GuardedStream(self._inner.connect_tcp(*args, **kwargs), self._live)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _GuardedStream:
        return _GuardedStream(self._inner.connect_unix_socket(*args, **kwargs), self._live)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _guard(transport: Any, live: _Live) -> bool:
    """Put the guard under httpx's transport; False when this httpx has no place for it
    (then the total timeout is checked between the chunks of a body only)."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None or not callable(getattr(backend, "connect_tcp", None)):
        return False
    setattr(pool, "_network_backend", _GuardedBackend(backend, live))  # noqa: B010 (private)
    return True


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its user:password, and the (unquoted) credentials it had."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return bare, (urllib.parse.unquote(parts.username or ""),
                  urllib.parse.unquote(parts.password or ""))


class Http:
    """An httpx client for one server, safe to share between threads.

    ``base_url`` is the URL requests go to (credentials from the URL travel as basic
    auth, never in the URL); ``shown`` is the one messages show, credentials masked.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, tries: int = TRIES,
                 backoff_s: float = 0.5, timeouts: Timeouts | None = None,
                 pool: int = 8) -> None:
        normalized = normalize_base_url(base_url)
        self.base_url, self._credentials = _split_credentials(normalized)
        self.shown = redact_url(normalized)
        self.root = self.base_url.removesuffix("/v1")  # where llama-server's /tokenize lives
        self.tries = max(1, tries)
        self.backoff_s = backoff_s
        self.timeouts = timeouts or Timeouts()
        self.guarded = False  # whether reads are bounded below httpx (see _guard)
        self._pool = pool
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._live = _Live()

    def show(self, url: str) -> str:
        """A request URL as messages show it (the user's URL, credentials masked)."""
        shown_root = self.shown.removesuffix(self.base_url.removeprefix(self.root))
        return shown_root + url.removeprefix(self.root) if url.startswith(self.root) \
            else redact_url(url)

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                t = self.timeouts
                limits = httpx.Limits(max_connections=self._pool,
                                      max_keepalive_connections=self._pool)
                transport = httpx.HTTPTransport(limits=limits)
                client = httpx.Client(
                    headers=self._headers, transport=transport,
                    auth=httpx.BasicAuth(*self._credentials) if self._credentials else None,
                    timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.read,
                                          pool=t.total))
                proxies = getattr(client, "_mounts", {}).values()  # from HTTP(S)_PROXY
                self.guarded = all([_guard(transport, self._live),
                                    *(_guard(p, self._live) for p in proxies if p)])
                self._client = client
            return self._client

    def close(self) -> None:
        """Close the client; a request still reading in another thread fails at once."""
        with self._lock:
            client, self._client = self._client, None
        for stream in self._live.all():
            stream.shutdown()
        if client is not None:
            client.close()

    def open(self, method: str, url: str, body: Any = None, *,
             stream: bool = False) -> httpx.Response:
        """One try: a 2xx response (still open when streaming; read whole, at most
        MAX_REPLY_BYTES, otherwise), or Retryable / Rejected. The try must be done
        within the total timeout, a streamed reply's reading included."""
        import httpx

        client = self.client()
        cancel_scope.deadline = time.monotonic() + self.timeouts.total
        try:
            response = client.send(client.build_request(method, url, json=body), stream=True)
        except httpx.TransportError as exc:
            raise Retryable(describe(exc, self.timeouts)) from None
        if response.is_success:
            if stream:
                return response
            try:
                content = self.read_body(response)
            finally:
                response.close()
            headers = [(k, v) for k, v in response.headers.multi_items()  # decoded already
                       if k.lower() not in ("content-encoding", "content-length")]
            return httpx.Response(response.status_code, headers=headers, content=content,
                                  request=response.request)
        try:
            text = self.read_body(response, limit=65536).decode("utf-8", "replace")
        except (Retryable, EngineError):
            text = ""
        finally:
            response.close()
        status, phrase = response.status_code, response.reason_phrase
        if (status == 429 or status >= 500) and "validation error" not in text.lower():
            raise Retryable(f"{status} {phrase}", _retry_after(response.headers.get("retry-after")))
        raise Rejected(status, phrase, text)

    def extend(self) -> None:
        """A streamed reply made progress (a piece of text): its try gets the whole total
        timeout again, so a long answer is never cut short while a stream of pings is."""
        cancel_scope.deadline = time.monotonic() + self.timeouts.total

    def read_body(self, response: httpx.Response, *, limit: int | None = None) -> bytes:
        """The body; reading stops after ``limit`` bytes (an error page), and a reply
        over MAX_REPLY_BYTES is an error."""
        chunks: list[bytes] = []
        size = 0
        for chunk in self.chunks(response):
            size += len(chunk)
            chunks.append(chunk)
            if limit is not None and size >= limit:
                break
        return b"".join(chunks)

    def chunks(self, response: httpx.Response) -> Iterator[bytes]:
        """The body's bytes as they come; a transport failure or the total timeout is
        Retryable, a body over MAX_REPLY_BYTES an EngineError."""
        import httpx

        size = 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise EngineError(f"server {self.shown} sent a reply larger than "
                                      f"{MAX_REPLY_BYTES // 2**20} MiB")
                if _past_deadline():
                    raise httpx.ReadTimeout("the try took longer than its total timeout")
                yield chunk
        except httpx.TransportError as exc:
            raise Retryable(describe(exc, self.timeouts)) from None

    def lines(self, response: httpx.Response) -> Iterator[str]:
        """A streamed body's lines (CR, LF or CRLF ends one, as in server-sent events)."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        line: list[str] = []  # the line so far, in pieces (a long one is not re-scanned)
        for chunk in self.chunks(response):
            text = decoder.decode(chunk)
            if "\n" not in text and "\r" not in text:
                line.append(text)
                continue
            *done, rest = _split_lines("".join(line) + text)
            yield from done
            line = [rest]
        yield from _split_lines("".join(line) + decoder.decode(b"", final=True) + "\n")[:-1]

    def retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` until it succeeds, up to ``tries`` times; then one clear EngineError."""
        cancel: threading.Event | None = getattr(cancel_scope, "event", None)
        n = 1
        while True:
            try:
                return attempt()
            except Retryable as exc:
                if n >= self.tries or (cancel is not None and cancel.is_set()):
                    tries = "try" if n == 1 else "tries"
                    raise EngineError(f"server {self.shown} failed after {n} {tries}: "
                                      f"{exc.reason}") from None
                delay = self.delay(n, exc.retry_after)
                if cancel is not None:
                    cancel.wait(delay)
                else:
                    time.sleep(delay)
                n += 1

    def delay(self, n: int, retry_after: float | None) -> float:
        """Seconds to wait after the n-th failed try."""
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP_S)
        full = min(self.backoff_s * 2.0 ** (n - 1), BACKOFF_CAP_S)
        return full / 2 + random.uniform(0, full / 2)  # "equal jitter"

    def json(self, method: str, url: str, body: Any = None, *,
             retry: bool = True) -> dict[str, Any]:
        """A call whose answer is a JSON object (retried unless ``retry`` is false)."""
        if retry:
            response = self.retrying(lambda: self.open(method, url, body))
        else:
            response = self.open(method, url, body)
        return json_object(response, self.show)

    def error(self, exc: Rejected, url: str) -> EngineError:
        hint = None
        if exc.status in (401, 403):
            hint = "give the API key with --api-key-env VAR (the variable that holds it)"
        elif exc.status in (404, 405):
            hint = "check --base-url: it usually ends in /v1"
        detail = exc.detail()
        return EngineError(f"server {self.show(url)} refused the request: {exc}"
                           + (f": {detail}" if detail else ""), hint=hint)


def _split_lines(text: str) -> list[str]:
    """``text`` cut at each CRLF, CR or LF; the last piece is what follows the last end
    (a CR at the very end waits: an LF may follow in the next chunk)."""
    held = text.endswith("\r")
    pieces = (text[:-1] if held else text).replace("\r\n", "\n").replace("\r", "\n") \
        .split("\n")
    if held:
        pieces[-1] += "\r"
    return pieces


def json_object(response: httpx.Response,
                show: Callable[[str], str] = redact_url) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EngineError(f"server {show(str(response.request.url))} did not answer with a "
                          "JSON object")
    return data
