"""FakeEngine: the Engine protocol without a model, for tests.

Replies come from a queue (or echo the last user message); every request is
recorded. Tokens are counted as whitespace-separated words, and each message
costs 4 tokens of formatting, so tests can reason about context limits.
``FakeBatchingEngine`` adds ``parallel`` slots, filled before it answers, as a
slot scheduler fills them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from termlm.engine.types import (
    ChatRequest,
    Completion,
    Delta,
    Message,
    ModelInfo,
    Score,
    ScoreRequest,
    StreamEvent,
    Timings,
    Usage,
)

MESSAGE_OVERHEAD = 4
R = TypeVar("R")
T = TypeVar("T")
_END: Any = object()


class FakeEngine:
    def __init__(
        self,
        replies: Iterable[str] = (),
        *,
        n_ctx: int = 2048,
        name: str = "fake",
        scores: dict[str, float] | None = None,
    ) -> None:
        self.replies: deque[str] = deque(replies)
        self.requests: list[ChatRequest | ScoreRequest] = []
        self.scores = scores or {}
        self.closed = False
        self._info = ModelInfo(
            name=name, path=f"/fake/{name}.gguf", n_ctx=n_ctx, n_ctx_train=n_ctx,
            chat_format="template",
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def load_s(self) -> float:
        return 0.0

    def _reply_for(self, request: ChatRequest) -> str:
        if self.replies:
            return self.replies.popleft()
        users = [m.content for m in request.messages if m.role == "user"]
        return f"echo: {users[-1] if users else ''}"

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        self.requests.append(request)
        reply = self._reply_for(request)
        words = reply.split(" ")
        limit = request.sampling.max_tokens
        finish: str = "stop"
        if len(words) > limit:
            words, finish = words[:limit], "length"
        text = ""
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            for stop in request.sampling.stop:
                if stop and stop in text + piece:
                    cut = (text + piece).index(stop)
                    tail = (text + piece)[len(text) : cut]
                    if tail:
                        yield Delta(tail)
                    text = text + tail
                    yield self._done(request, text, "stop")
                    return
            text += piece
            yield Delta(piece)
        yield self._done(request, text, finish)

    def _done(self, request: ChatRequest, text: str, finish: str) -> Completion:
        n = self.count_tokens(text)
        return Completion(
            text=text,
            finish_reason="length" if finish == "length" else "stop",
            usage=Usage(self.count_prompt_tokens(request.messages), n),
            timings=Timings(ttft_s=0.001, total_s=0.002, completion_tokens_per_s=float(n) / 0.002),
        )

    def complete(self, request: ChatRequest) -> Completion:
        result: Completion | None = None
        for event in self.stream(request):
            if isinstance(event, Completion):
                result = event
        assert result is not None
        return result

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(self.count_tokens(m.content) + MESSAGE_OVERHEAD for m in messages) + 2

    def score(self, request: ScoreRequest) -> list[Score]:
        self.requests.append(request)
        out = []
        for cont in request.continuations:
            n = max(1, self.count_tokens(cont))
            logprob = self.scores.get(cont, -float(n) * math.log(2.0))
            out.append(Score(continuation=cont, logprob=logprob, n_tokens=n))
        return out

    def close(self) -> None:
        self.closed = True


class FakeBatchingEngine(FakeEngine):
    """The BatchingEngine protocol on FakeEngine: it takes requests until its
    ``parallel`` slots are full (or the caller has none yet: a None), then answers
    the oldest, and so on; results in request order."""

    def __init__(self, replies: Iterable[str] = (), *, parallel: int = 4,
                 **kw: Any) -> None:
        super().__init__(replies, **kw)
        self.parallel = parallel
        self.max_in_flight = 0

    def complete_many(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[Completion | Exception]:
        return self._slots(requests, self.complete)

    def complete_each(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[tuple[int, Completion | Exception]]:
        return enumerate(self._slots(requests, self.complete))  # in order is one valid order

    def score_many(self, requests: Iterable[ScoreRequest | None]
                   ) -> Iterator[list[Score] | Exception]:
        return self._slots(requests, self.score)

    def _slots(self, requests: Iterable[R | None], call: Callable[[R], T]
               ) -> Iterator[T | Exception]:
        source = iter(requests)
        held: deque[R] = deque()
        exhausted = False
        while True:
            while not exhausted and len(held) < self.parallel:
                request = next(source, _END)
                if request is _END:
                    exhausted = True
                elif request is None:
                    if not held:
                        raise RuntimeError("the requests wait for a result, but none is "
                                           "in flight")
                    break
                else:
                    held.append(request)
            if not held:
                return
            self.max_in_flight = max(self.max_in_flight, len(held))
            try:
                yield call(held.popleft())
            except Exception as exc:
                yield exc
