"""BatchedEngine's bookkeeping without a model: prefix choice, KV checks, scheduling.

The scheduler runs against a fake llama.cpp context that keeps each sequence's
tokens and "generates" a reply from them (the question reversed), so any slip in
positions, prefix copies or slot reuse shows up as a wrong reply.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, cast

import numpy as np
import pytest

from termlm.engine.batch_sched import (
    MIN_PREFIX,
    InOrder,
    KvMirror,
    PrefixPlan,
    PrefixTracker,
    ScoreItem,
    ScoreJob,
    common_prefix,
    prompt_chunks,
    record_seed,
    score_labels,
)
from termlm.engine.batched import BatchedEngine
from termlm.engine.llama_common import PromptFormat
from termlm.engine.types import (
    BatchingEngine,
    ChatRequest,
    Completion,
    Delta,
    Engine,
    Message,
    ModelInfo,
    SamplingParams,
    ScoreRequest,
    TurnFormat,
)
from termlm.errors import ContextOverflow, EngineError

EOG = 0
BAR, EQ = ord("|"), ord("=")


# -- pure helpers ---------------------------------------------------------------
def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6, 7]) == 2


def test_record_seed_keeps_request_zero_and_spreads_the_rest() -> None:
    assert record_seed(42, 0) == 42
    seeds = {record_seed(42, i) for i in range(1000)}
    assert len(seeds) == 1000
    assert all(0 <= s < 2**31 for s in seeds)  # never llama.cpp's "random seed" 0xFFFFFFFF
    assert record_seed(42, 7) == record_seed(42, 7) != record_seed(43, 7)


def test_in_order_releases_results_by_index() -> None:
    order: InOrder[str] = InOrder()
    order.put(2, "c")
    order.put(1, "b")
    assert order.pop_ready() == []
    order.put(0, "a")
    assert order.pop_ready() == ["a", "b", "c"]
    assert order.next == 3 and len(order) == 0


# -- KV mirror: the checks that keep llama.cpp from aborting ----------------------
def test_kv_mirror_checks_batches() -> None:
    kv = KvMirror(n_seq_max=3, n_ctx=100, capacity=8)
    kv.add(0, 0, 5)
    with pytest.raises(EngineError, match="twice"):
        kv.add(0, 5, 1)
    with pytest.raises(EngineError, match="exceeds"):
        kv.add(1, 0, 4)
    with pytest.raises(EngineError, match="outside"):
        kv.add(3, 0, 1)
    with pytest.raises(EngineError, match="continues at 0"):
        kv.add(1, 2, 1)
    with pytest.raises(EngineError, match="empty"):
        kv.add(1, 0, 0)
    kv.decoded()
    assert kv.next_pos == [5, 0, 0] and kv.n_batch == 0
    kv.add(0, 5, 1)
    kv.reset_batch()  # a failed decode: nothing moved
    assert kv.next_pos[0] == 5
    with pytest.raises(EngineError, match="context"):
        KvMirror(2, 10, 16).add(0, 0, 11)


def test_kv_mirror_checks_copies_and_trims() -> None:
    kv = KvMirror(n_seq_max=3, n_ctx=100, capacity=32)
    kv.add(2, 0, 10)
    kv.decoded()
    kv.cp(2, 0, 6)
    assert kv.next_pos[0] == 6
    with pytest.raises(EngineError, match="non-empty"):
        kv.cp(2, 0, 6)
    with pytest.raises(EngineError, match="no positions"):
        kv.cp(2, 1, 11)
    with pytest.raises(EngineError, match="non-empty"):
        kv.cp(1, 1, 1)
    kv.rm(0, 3)
    assert kv.next_pos[0] == 3
    kv.rm(0)
    assert kv.next_pos[0] == 0
    kv.add(1, 0, 1)
    with pytest.raises(EngineError, match="while in a batch"):
        kv.rm(1)
    kv.clear()
    assert kv.next_pos == [0, 0, 0]


# -- prefix choice ------------------------------------------------------------------
SYS = list(range(100, 100 + MIN_PREFIX + 4))


def test_prefix_needs_two_requests_and_a_long_enough_share() -> None:
    tracker = PrefixTracker()
    assert tracker.plan([*SYS, 1, 2], None).kind == "none"
    assert tracker.plan([*SYS, 1, 2], [*SYS, 3]) == PrefixPlan("new", len(SYS))
    short = SYS[: MIN_PREFIX - 1]
    assert tracker.plan([*short, 1], [*short, 2]).kind == "none"
    # never the whole prompt: one token must be left to decode for logits
    assert tracker.plan([*SYS], [*SYS, 9]) == PrefixPlan("new", len(SYS) - 1)


def test_prefix_use_truncate_and_outliers() -> None:
    tracker = PrefixTracker()
    first = [*SYS, 7, 8, 1]
    prefix = tracker.commit(tracker.plan(first, [*SYS, 7, 8, 2]), first)
    assert prefix is not None and prefix.tokens == [*SYS, 7, 8] and tracker.held() == len(SYS) + 2
    assert tracker.plan([*SYS, 7, 8, 5], None) == PrefixPlan("use", len(SYS) + 2)
    # an outlier shares less, but the next request shares it all: copy part, keep it
    assert tracker.plan([*SYS, 9], [*SYS, 7, 8, 3]) == PrefixPlan("use", len(SYS))
    # requests stopped sharing the tail: cut the prefix back
    plan = tracker.plan([*SYS, 9], [*SYS, 9, 1])
    assert plan == PrefixPlan("truncate", len(SYS))
    assert tracker.extra_cells(plan) == 0  # still in use by the first request
    tracker.commit(plan, [*SYS, 9])
    assert prefix.tokens == SYS and prefix.users == 2 and tracker.held() == len(SYS) + 2
    # something else entirely: a new prefix; the old one's cells count until its users go
    other = list(range(500, 500 + MIN_PREFIX + 2))
    plan = tracker.plan([*other, 1], [*other, 2])
    assert plan == PrefixPlan("new", len(other))
    assert tracker.extra_cells(plan) == len(other)
    fresh = tracker.commit(plan, [*other, 1])
    assert tracker.current is fresh and tracker.held() == len(SYS) + 2 + len(other)
    tracker.release(prefix)
    tracker.release(prefix)
    assert tracker.held() == len(other)
    tracker.release(fresh)
    assert tracker.extra_cells(PrefixPlan("new", 3)) == 3 - len(other)  # unused: replaced


# -- batch filling with a recording context -------------------------------------------
class FakeNative:
    """Stands in for NativeContext: keeps each sequence's tokens, generates from them."""

    def __init__(self, n_ctx: int, n_batch: int, n_seq_max: int) -> None:
        self.ctx: object = object()
        self.partial_copies = True
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.kv = KvMirror(n_seq_max, n_ctx, n_batch)
        self.contents: dict[int, list[int]] = {s: [] for s in range(n_seq_max)}
        self.batch: list[tuple[int, int, int, bool]] = []
        self.outputs: dict[int, int] = {}  # batch index -> seq
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self.samplers = 0

    def room(self) -> int:
        return self.n_batch - len(self.batch)

    def add(self, seq: int, pos: int, tokens: Sequence[int], logits: str) -> int:
        at = len(self.batch)
        self.kv.add(seq, pos, len(tokens))
        for k, token in enumerate(tokens):
            out = logits == "all" or (logits == "last" and k == len(tokens) - 1)
            self.batch.append((seq, pos + k, token, out))
        return at

    def add_one(self, seq: int, pos: int, token: int) -> int:
        return self.add(seq, pos, [token], "last")

    def decode(self) -> None:
        for seq, pos, token, _ in self.batch:
            assert pos == len(self.contents[seq])
            self.contents[seq].append(token)
        self.outputs = {i: seq for i, (seq, _, _, out) in enumerate(self.batch) if out}
        self.batches.append(self.batch)
        self.batch = []
        self.kv.decoded()

    def sample(self, sampler: Any, i: int) -> int:
        """The reply to 'system|question=' is the question reversed."""
        seq_tokens = self.contents[self.outputs[i]]
        eq = len(seq_tokens) - 1 - seq_tokens[::-1].index(EQ)
        bar = max(k for k in range(eq) if seq_tokens[k] == BAR)
        target = seq_tokens[bar + 1 : eq][::-1]
        done = len(seq_tokens) - eq - 1
        return target[done] if done < len(target) else EOG

    def logprobs(self, i: int) -> Any:
        assert i in self.outputs
        return np.full(256, -1.0)

    def seq_rm(self, seq: int, p0: int = 0) -> None:
        self.kv.rm(seq, p0)
        del self.contents[seq][p0:]

    def seq_cp(self, src: int, dst: int, p1: int) -> None:
        self.kv.cp(src, dst, p1)
        self.contents[dst] = self.contents[src][:p1]

    def clear(self) -> None:
        self.kv.clear()
        self.contents = {s: [] for s in self.contents}

    reject_grammars = False

    def sampler(self, sampling: SamplingParams, seed: int, gbnf: str | None) -> Any:
        if gbnf and self.reject_grammars:
            raise EngineError("cannot compile the grammar")
        self.samplers += 1
        return object()

    def free_sampler(self, sampler: Any) -> None:
        if sampler is not None:
            self.samplers -= 1


class FakeVocab:
    bos, eos = -1, EOG

    def tokenize(self, data: bytes, *, add_special: bool, special: bool) -> list[int]:
        return list(data)

    def text(self, token: int) -> str:
        return "" if token < 0 else chr(token)

    def piece(self, token: int) -> bytes:
        return bytes([token])

    def is_eog(self, token: int) -> bool:
        return token == EOG


LAYOUT = TurnFormat(system="{content}|", user="{content}=", assistant="{content}",
                    generation_prefix="")


def fake_engine(parallel: int, *, n_ctx: int = 512, n_batch: int = 64) -> BatchedEngine:
    engine = BatchedEngine.__new__(BatchedEngine)
    engine.parallel = parallel
    engine._prefix_seq = parallel
    engine._siblings = list(range(parallel + 3, parallel, -1))
    engine._native = FakeNative(n_ctx, n_batch, parallel + 4)  # type: ignore[assignment]
    engine._vocab = FakeVocab()  # type: ignore[assignment]
    engine._prompts = PromptFormat(FakeVocab(), None, LAYOUT, name="fake")  # type: ignore[arg-type]
    engine._info = ModelInfo("fake", "fake", n_ctx, n_ctx, "catalog")
    engine._seed = 1
    engine._prefixes = PrefixTracker(min_len=8)
    engine._reserved = 0
    engine._kept = []
    engine._busy = False
    engine._load_s = 0.0
    return engine


SYSTEM = "You reverse what you are given."


def ask(text: str, max_tokens: int = 64, **kw: Any) -> ChatRequest:
    return ChatRequest((Message("system", SYSTEM), Message("user", text)),
                       SamplingParams(temperature=0.0, max_tokens=max_tokens), **kw)


def test_the_fake_engine_is_an_engine() -> None:
    engine = fake_engine(2)
    assert isinstance(engine, Engine) and isinstance(engine, BatchingEngine)


def test_complete_many_in_order_with_continuous_batching() -> None:
    engine = fake_engine(3)
    words = ["a", "bbbbbbbbbbbbbbbbbbbbbbbb", "cc", "dddd", "e", "ffffffffff", "gg"]
    results = list(engine.complete_many(ask(w) for w in words))
    assert [r.text for r in results if isinstance(r, Completion)] == [w[::-1] for w in words]
    assert all(isinstance(r, Completion) and r.finish_reason == "stop" for r in results)
    native: FakeNative = engine._native  # type: ignore[assignment]
    # one decode carries several sequences; a slot freed by a short reply is reused
    assert max(len({seq for seq, *_ in b}) for b in native.batches) == 3
    assert len({seq for b in native.batches for seq, *_ in b if seq < 3}) == 3
    # the shared system prompt went into the prefix sequence once
    prefix_runs = [b for b in native.batches if b and b[0][0] == engine._prefix_seq]
    assert len(prefix_runs) == 1
    assert engine._reserved == 0 and native.samplers == 0 and not engine._busy


def test_max_tokens_overflow_and_bad_grammar_fail_alone() -> None:
    engine = fake_engine(2, n_ctx=96)
    requests = [ask("abcdef", max_tokens=3), ask("x" * 200), ask("hello"),
                ask("json", json_schema={"type": "object"})]
    engine._native.reject_grammars = True  # type: ignore[attr-defined]
    results = list(engine.complete_many(requests))
    assert isinstance(results[0], Completion)
    assert results[0].text == "fed" and results[0].finish_reason == "length"
    assert results[0].usage.completion_tokens == 3
    assert isinstance(results[1], ContextOverflow)
    assert isinstance(results[2], Completion) and results[2].text == "olleh"
    assert isinstance(results[3], EngineError)


def test_stop_strings_end_a_reply() -> None:
    engine = fake_engine(2)
    sampling = SamplingParams(temperature=0.0, max_tokens=64, stop=("dc",))
    results = list(engine.complete_many([ChatRequest(ask("abcdef").messages, sampling),
                                         ask("xyz")]))
    first, second = results
    assert isinstance(first, Completion) and first.text == "fe"
    assert first.finish_reason == "stop" and first.usage.completion_tokens == 4
    assert isinstance(second, Completion) and second.text == "zyx"


def test_requests_wait_for_kv_cells() -> None:
    # each request reserves prompt + max_tokens; only one fits at a time here
    engine = fake_engine(4, n_ctx=100)
    words = ["one", "two", "three", "four"]
    results = list(engine.complete_many(ask(w, max_tokens=50) for w in words))
    assert [r.text for r in results if isinstance(r, Completion)] == [w[::-1] for w in words]
    native: FakeNative = engine._native  # type: ignore[assignment]
    assert max(len({seq for seq, *_ in b if seq < 4}) for b in native.batches) == 1


def test_results_come_lazily() -> None:
    engine = fake_engine(2)
    pulled: list[int] = []

    def requests() -> Any:
        for i in range(100):
            pulled.append(i)
            yield ask(f"w{i}")

    results = cast(Generator[Any, None, None], engine.complete_many(requests()))
    first = next(results)
    assert isinstance(first, Completion) and first.text == "0w"
    assert len(pulled) < 12
    results.close()  # stopping early frees the slots
    assert engine._reserved == 0 and not engine._busy
    assert engine._native.samplers == 0  # type: ignore[attr-defined]


def test_stream_reuses_what_slot_zero_kept() -> None:
    engine = fake_engine(2)
    events = list(engine.stream(ask("abc")))
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "cba"
    assert isinstance(events[-1], Completion) and events[-1].text == "cba"
    native: FakeNative = engine._native  # type: ignore[assignment]
    before = len(native.batches)
    assert engine.complete(ask("abd")).text == "dba"
    resumed = native.batches[before]
    assert resumed[0][1] > 10  # only the new tail of the prompt was decoded
    with pytest.raises(ContextOverflow):
        engine.stream(ask("x" * 600))


def test_a_second_batch_cannot_start_while_one_runs() -> None:
    engine = fake_engine(2)
    running = cast(Generator[Any, None, None],
                   engine.complete_many([ask("a"), ask("b"), ask("c")]))
    next(running)
    with pytest.raises(EngineError, match="busy"):
        next(engine.complete_many([ask("d")]))
    running.close()
    assert engine.complete(ask("d")).text == "d"


def test_prompt_chunks_split_to_fit_the_batch() -> None:
    native = FakeNative(n_ctx=100, n_batch=8, n_seq_max=3)
    jobs = [ScoreJob(ScoreItem(0, [1] * 6, [], ()), 0, 0, None, [1] * 6, 0),
            ScoreJob(ScoreItem(1, [2] * 5, [], ()), 1, 0, None, [2] * 5, 0)]
    outputs = prompt_chunks(native, jobs)  # type: ignore[arg-type]
    assert outputs == [(jobs[0], 5)] and jobs[1].pending == [2, 2, 2]
    assert [out for *_, out in native.batch] == [False] * 5 + [True, False, False]
    native.decode()
    assert prompt_chunks(native, jobs) == [(jobs[1], 2)]  # type: ignore[arg-type]


def test_score_labels_decode_each_continuation_in_a_sibling() -> None:
    native = FakeNative(n_ctx=200, n_batch=16, n_seq_max=6)
    item = ScoreItem(0, [7] * 10, [[1], [2, 3, 4], [5, 6], [8] * 20], ("a", "b", "c", "d"))
    job = ScoreJob(item, 0, 0, None, [], 10, totals=[-1.0] * 4)
    native.add(0, 0, item.tokens, "last")
    native.decode()
    siblings = [5, 4, 3]
    score_labels(native, [job], siblings, max_outputs=8)  # type: ignore[arg-type]
    assert job.totals == [-1.0, -3.0, -2.0, -20.0]  # one -1 per token, the first given
    assert sorted(siblings) == [3, 4, 5]
    assert all(native.contents[s] == [] for s in siblings)
    assert max(len(b) for b in native.batches[1:]) <= 8


def test_score_many_in_order_with_failures() -> None:
    engine = fake_engine(2, n_ctx=80)
    requests = [ScoreRequest((Message("user", "q"),), ("ab", "c")),
                ScoreRequest((Message("user", "x" * 100),), ("a",)),
                ScoreRequest((Message("user", "r"),), ("abcd",), terminate=False)]
    results = list(engine.score_many(requests))
    first, overflow, last = results
    assert isinstance(first, list) and [s.continuation for s in first] == ["ab", "c"]
    assert [s.logprob for s in first] == [-3.0, -2.0]  # with the end-of-reply token
    assert isinstance(overflow, ContextOverflow)
    assert isinstance(last, list) and last[0].logprob == -4.0 and last[0].n_tokens == 4
    assert engine._reserved == 0 and sorted(engine._siblings) == [3, 4, 5]


def test_parallel_must_be_positive() -> None:
    with pytest.raises(EngineError):
        BatchedEngine("missing.gguf", name="x", n_ctx=64, n_ctx_train=64, parallel=0)
