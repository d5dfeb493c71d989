"""Requests in, results out: the types every engine speaks."""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from termlm.errors import UsageError

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "interrupted"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class SamplingError(UsageError):
    """A sampling value out of range: the same rule for flags, templates and config."""


def sampling_problem(params: SamplingParams) -> str | None:
    """What is wrong with ``params`` (one line), or None. The one validation of sampling
    values, wherever they come from: flags, a template's ``defaults``, the API."""
    checks: list[tuple[str, object, str]] = [
        ("temperature", params.temperature, "a number from 0 (greedy) to 100"),
        ("top_p", params.top_p, "a number from 0 to 1"),
        ("top_k", params.top_k, "a whole number, 0 or more (0: no limit)"),
        ("max_tokens", params.max_tokens, "a whole number, 1 or more"),
        ("repeat_penalty", params.repeat_penalty, "a number above 0 and at most 10"),
        ("seed", params.seed, "a whole number"),
    ]
    for name, value, rule in checks:
        if not _in_range(name, value):
            return f"{name} must be {rule}, not {value!r}"
    if not all(isinstance(s, str) and s for s in params.stop):
        return "stop strings must be non-empty text"
    return None


def _in_range(name: str, value: object) -> bool:
    if name == "seed":
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if name in ("top_k", "max_tokens") and not isinstance(value, int):
        return False
    number = float(value)
    if not math.isfinite(number):
        return False
    low, high, low_open = {"temperature": (0.0, 100.0, False), "top_p": (0.0, 1.0, False),
                           "top_k": (0.0, math.inf, False), "max_tokens": (1.0, math.inf, False),
                           "repeat_penalty": (0.0, 10.0, True)}[name]
    return (number > low if low_open else number >= low) and number <= high


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` means greedy."""

    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 40
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repeat_penalty: float = 1.1

    def __post_init__(self) -> None:
        problem = sampling_problem(self)
        if problem is not None:
            raise SamplingError(problem)

    def with_(self, **changes: object) -> SamplingParams:
        return replace(self, **changes)  # type: ignore[arg-type]

    def override(self, **flags: object) -> SamplingParams:
        """Apply command-line flags: None means "not given"; a stop list becomes a tuple."""
        given = {k: v for k, v in flags.items() if v is not None}
        stop = given.get("stop")
        if isinstance(stop, (list, tuple)):
            given["stop"] = tuple(str(s) for s in stop)
        return self.with_(**given)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    json_schema: Mapping[str, Any] | None = None  # constrain the reply to JSON matching it


@dataclass(frozen=True)
class ScoreRequest:
    """Score each continuation as the assistant's reply to ``messages``."""

    messages: tuple[Message, ...]
    continuations: tuple[str, ...]
    terminate: bool = True  # include the end of the reply, so "hot" and "hotter" differ


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Timings:
    ttft_s: float
    total_s: float
    completion_tokens_per_s: float


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text."""

    text: str


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


@dataclass(frozen=True)
class Score:
    continuation: str
    logprob: float  # sum of token log-probabilities of the continuation
    n_tokens: int


@dataclass(frozen=True)
class TurnFormat:
    """How to lay out messages for a model whose GGUF has no chat template.

    Each of ``system``, ``user`` and ``assistant`` is a pattern in which the
    literal ``{content}`` is replaced by the message text (plain string
    replacement: nothing inside a message is ever interpreted).
    ``generation_prefix`` opens the reply the model is to write.
    """

    system: str
    user: str
    assistant: str
    generation_prefix: str
    stop: tuple[str, ...] = ()
    name: str = "custom"

    def render(self, messages: Sequence[Message]) -> str:
        parts = []
        for message in messages:
            pattern = getattr(self, message.role)
            parts.append(pattern.replace("{content}", message.content))
        return "".join(parts) + self.generation_prefix


PLAIN_FORMAT = TurnFormat(
    system="{content}\n\n",
    user="User: {content}\n",
    assistant="Assistant: {content}\n",
    generation_prefix="Assistant:",
    stop=("\nUser:", "\nAssistant:"),
    name="plain",
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    n_ctx: int
    n_ctx_train: int
    chat_format: str  # "template" (GGUF jinja), "catalog", or "plain"


StreamEvent = Delta | Completion


@runtime_checkable
class Engine(Protocol):
    """What every engine offers. Implementations: LlamaEngine, FakeEngine."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def load_s(self) -> float: ...

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """Yield Delta pieces, then exactly one Completion as the last item.

        If the consumer stops early (KeyboardInterrupt, closing the generator),
        generation stops; no Completion is produced.
        """
        ...

    def complete(self, request: ChatRequest) -> Completion: ...

    def count_tokens(self, text: str) -> int:
        """Tokens in plain text (no special tokens added)."""
        ...

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the formatted prompt for ``messages``, ready for a reply."""
        ...

    def score(self, request: ScoreRequest) -> list[Score]: ...

    def close(self) -> None: ...


@runtime_checkable
class CountsTokens(Protocol):
    """An engine that knows how many tokens it has evaluated (an in-process one)."""

    @property
    def tokens_evaluated(self) -> int: ...


def collect(events: Iterator[StreamEvent]) -> Completion:
    """Drain a stream and return its Completion."""
    result: Completion | None = None
    for event in events:
        if isinstance(event, Completion):
            result = event
    if result is None:  # pragma: no cover - engines always end with a Completion
        raise RuntimeError("engine stream ended without a completion")
    return result


@runtime_checkable
class BatchingEngine(Protocol):
    """An engine that runs many requests at once (llama.cpp sequences, or HTTP concurrency).

    Results come back in request order, one per request; a request that fails
    yields its TermlmError instead of a result, and the others go on. Requests are
    pulled from the iterable lazily, a few ahead of the results, so a caller can
    stream millions of records through a bounded number of slots. A None pulled
    means the caller has nothing to send yet: the engine goes on with the requests
    it has and must not stop; it may ask again after any step.
    """

    parallel: int

    def complete_many(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[Completion | Exception]:
        ...

    def complete_each(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[tuple[int, Completion | Exception]]:
        """(request index, result) pairs, as the results are ready (in any order).

        A None in ``requests`` means the caller has nothing to send until it has
        another result: the engine pulls no more until it has yielded one. Indexes
        count the requests only, not the Nones.
        """
        ...

    def score_many(self, requests: Iterable[ScoreRequest | None]
                   ) -> Iterator[list[Score] | Exception]:
        ...


def complete_many(engine: Engine, requests: Iterable[ChatRequest | None]
                  ) -> Iterator[Completion | Exception]:
    """Ordered results for ``requests``: batched when the engine can, one by one otherwise.

    A None in ``requests`` means "nothing to send yet": the engine goes on with what it
    has in flight and asks again later (one by one, nothing is in flight when it asks)."""
    if isinstance(engine, BatchingEngine) and engine.parallel > 1:
        yield from engine.complete_many(requests)
        return
    for request in requests:
        if request is None:
            continue
        try:
            yield engine.complete(request)
        except Exception as exc:
            yield exc


def complete_each(engine: Engine, requests: Iterable[ChatRequest | None]
                  ) -> Generator[tuple[int, Completion | Exception], None, None]:
    """``BatchingEngine.complete_each`` on any engine (one by one when it cannot batch)."""
    if isinstance(engine, BatchingEngine) and engine.parallel > 1:
        yield from engine.complete_each(requests)
        return
    for index, request in enumerate(requests):
        if request is None:  # every earlier result has been handed back already
            raise RuntimeError("the requests wait for a result, but none is in flight")
        try:
            result: Completion | Exception = engine.complete(request)
        except Exception as exc:
            result = exc
        yield index, result


def score_many(engine: Engine, requests: Iterable[ScoreRequest | None]
               ) -> Iterator[list[Score] | Exception]:
    """Ordered scores for ``requests`` (None: nothing to send yet, as for complete_many).

    A batching engine gets the whole stream even with one slot: it sees the next
    request coming and evaluates the prompt prefix they share once (called one by
    one, a request has no neighbour to share a prefix with)."""
    if isinstance(engine, BatchingEngine):
        yield from engine.score_many(requests)
        return
    for request in requests:
        if request is None:
            continue
        try:
            yield engine.score(request)
        except Exception as exc:
            yield exc
