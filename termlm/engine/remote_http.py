"""HTTP plumbing for RemoteEngine: one httpx client, retries with backoff, SSE, error lines.

A try either returns a 2xx response, or fails as ``Retryable`` (429, 5xx, a
refused connection, a timeout: tried again with exponential backoff and
jitter, honouring Retry-After) or as ``Rejected`` (the server refused the
request itself: 4xx, or the 500 with a validation error that llama-cpp-python's
server sends for a field it does not know). httpx is imported lazily.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from termlm.errors import ConfigError, EngineError

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

TRIES = 4  # one call and three retries
RETRY_AFTER_CAP_S = 60.0  # a server that asks for a longer wait gets this much
BACKOFF_CAP_S = 30.0
cancel_scope = threading.local()  # .event: set when the batch a worker thread serves is dropped


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
        raise ConfigError(f"--base-url must be an http:// or https:// URL, not {url!r}",
                          hint="e.g. --base-url http://127.0.0.1:8080/v1")
    return text if parts.path else text + "/v1"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: back off as usual


def describe(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text})"
    return f"connection failed ({text})"


class Http:
    """An httpx client for one server, safe to share between threads."""

    def __init__(self, base_url: str, *, api_key: str | None = None, tries: int = TRIES,
                 backoff_s: float = 0.5, timeout_s: float = 600.0, pool: int = 8) -> None:
        self.base_url = normalize_base_url(base_url)
        self.root = self.base_url.removesuffix("/v1")  # where llama-server's /tokenize lives
        self.tries = max(1, tries)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._pool = pool
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(
                    headers=self._headers, timeout=httpx.Timeout(self.timeout_s, connect=10.0),
                    limits=httpx.Limits(max_connections=self._pool,
                                        max_keepalive_connections=self._pool))
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def open(self, method: str, url: str, body: Any = None, *,
             stream: bool = False) -> httpx.Response:
        """One try: a 2xx response (still open when streaming), or Retryable / Rejected."""
        import httpx

        client = self.client()
        try:
            response = client.send(client.build_request(method, url, json=body), stream=stream)
        except httpx.TransportError as exc:
            raise Retryable(describe(exc)) from None
        if response.is_success:
            return response
        try:
            text = response.read().decode("utf-8", "replace")
        except httpx.TransportError:
            text = ""
        finally:
            response.close()
        status, phrase = response.status_code, response.reason_phrase
        if (status == 429 or status >= 500) and "validation error" not in text.lower():
            raise Retryable(f"{status} {phrase}", _retry_after(response.headers.get("retry-after")))
        raise Rejected(status, phrase, text)

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
                    raise EngineError(f"server {self.base_url} failed after {n} {tries}: "
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
        return json_object(response)

    def error(self, exc: Rejected, url: str) -> EngineError:
        hint = None
        if exc.status in (401, 403):
            hint = "give the API key with --api-key-env VAR (the variable that holds it)"
        elif exc.status in (404, 405):
            hint = "check --base-url: it usually ends in /v1"
        detail = exc.detail()
        return EngineError(f"server {url} refused the request: {exc}"
                           + (f": {detail}" if detail else ""), hint=hint)


def json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EngineError(f"server {response.request.url} did not answer with a JSON object")
    return data
