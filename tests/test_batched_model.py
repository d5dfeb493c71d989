"""BatchedEngine on the real default model (smollm2), against LlamaEngine."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from termlm.config import Settings
from termlm.engine.batched import BatchedEngine
from termlm.engine.llama import LlamaEngine
from termlm.engine.types import (
    BatchingEngine,
    ChatRequest,
    Completion,
    Delta,
    Engine,
    Message,
    SamplingParams,
    Score,
    ScoreRequest,
)
from termlm.errors import ContextOverflow, EngineError

from .helpers_env import extra_buffers_setting

pytestmark = pytest.mark.model

SYSTEM = "You are a helpful assistant."
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def model_path() -> str:
    from termlm.models.resolve import resolve_model

    return str(resolve_model("smollm2", Settings()).path)


def _open(path: str, parallel: int, n_ctx: int = 2048, seed: int | None = None
          ) -> BatchedEngine:
    return BatchedEngine(path, name="smollm2", n_ctx=n_ctx, n_ctx_train=8192,
                         parallel=parallel, seed=seed, cpu_extra_buffers=extra_buffers_setting())


@pytest.fixture(scope="module")
def llama(model_path: str) -> Iterator[LlamaEngine]:
    engine = LlamaEngine(model_path, name="smollm2", n_ctx=2048, n_ctx_train=8192,
                         cpu_extra_buffers=extra_buffers_setting())
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def one(model_path: str) -> Iterator[BatchedEngine]:
    engine = _open(model_path, 1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def four(model_path: str) -> Iterator[BatchedEngine]:
    engine = _open(model_path, 4)
    yield engine
    engine.close()


def ask(text: str, sampling: SamplingParams = GREEDY, **kw: object) -> ChatRequest:
    return ChatRequest((Message("system", SYSTEM), Message("user", text)), sampling,
                       **kw)  # type: ignore[arg-type]


def test_protocols_and_info(four: BatchedEngine) -> None:
    assert isinstance(four, Engine) and isinstance(four, BatchingEngine)
    assert four.parallel == 4
    assert four.info.n_ctx == 2048 and four.info.chat_format == "template"
    assert four.load_s > 0
    assert four.count_tokens("hello world") == 2


def test_greedy_at_parallel_one_equals_llama_engine(one: BatchedEngine, llama: LlamaEngine
                                                    ) -> None:
    prompts = ["What is the capital of France?", "Name three fruits.",
               "Write one sentence about cats."]
    for prompt in prompts:
        expected = llama.complete(ask(prompt))
        events = list(one.stream(ask(prompt)))
        done = events[-1]
        assert isinstance(done, Completion)
        assert done.text == expected.text and done.text.strip()
        assert "".join(e.text for e in events if isinstance(e, Delta)) == done.text
        assert done.usage == expected.usage
    # the batch path at parallel 1 (shared prefix, then each suffix) evaluates the same way
    many = list(one.complete_many(ask(p) for p in prompts))
    assert [m.text for m in many if isinstance(m, Completion)] == [
        llama.complete(ask(p)).text for p in prompts]


def test_seeded_sampling_at_parallel_one_equals_llama_engine(one: BatchedEngine,
                                                            llama: LlamaEngine) -> None:
    request = ask("Write one sentence about dogs.",
                  SamplingParams(temperature=0.9, max_tokens=24, seed=7))
    assert one.complete(request).text == llama.complete(request).text


PHRASES = ["the red house", "a small dog", "green apples", "blue sky today", "my old car",
           "hot coffee", "fresh bread", "cold rain", "the tall tree", "a quiet night",
           "sweet music", "bright stars"]


def test_complete_many_order_budgets_and_overflow(four: BatchedEngine) -> None:
    requests = [ask(f"Repeat exactly this phrase: {p}" + " please" * i,
                    GREEDY.with_(max_tokens=4 + 4 * (i % 3)))
                for i, p in enumerate(PHRASES)]
    requests.insert(5, ask("word " * 3000))
    results = list(four.complete_many(requests))
    assert len(results) == 13
    assert isinstance(results[5], ContextOverflow)
    done = [r for r in results if isinstance(r, Completion)]
    assert len(done) == 12
    del requests[5]
    for result, request in zip(done, requests, strict=True):  # prompt lengths all differ
        assert result.usage.prompt_tokens == four.count_prompt_tokens(request.messages)
        assert result.usage.completion_tokens <= request.sampling.max_tokens
        if result.finish_reason == "length":
            assert result.usage.completion_tokens == request.sampling.max_tokens
    again = list(four.complete_many(requests))  # same requests, same parallel: same bits
    assert [r.text for r in again if isinstance(r, Completion)] == [r.text for r in done]


def test_complete_each_routes_results_and_lets_the_caller_wait(four: BatchedEngine) -> None:
    """Chains of two calls, the second asked only once the first is back (None = wait):
    each result comes back with its request's index, and prompt lengths prove which."""
    sent: list[ChatRequest] = []
    back: dict[int, Completion | Exception] = {}
    seconds: list[int] = []

    def requests() -> Iterator[ChatRequest | None]:
        for phrase in PHRASES[:6]:
            sent.append(ask(f"Repeat exactly this phrase: {phrase}", GREEDY.with_(max_tokens=6)))
            yield sent[-1]
        while len(back) < 12:
            firsts = [i for i in back if i < 6 and i not in seconds]
            if not firsts:
                yield None
                continue
            seconds.append(firsts[0])
            sent.append(ask("And once more, louder: " + PHRASES[firsts[0]] + "!" * len(sent),
                            GREEDY.with_(max_tokens=6)))
            yield sent[-1]

    for index, result in four.complete_each(requests()):
        assert index not in back
        back[index] = result
    assert sorted(back) == list(range(12))
    for index, result in back.items():
        assert isinstance(result, Completion)
        assert result.usage.prompt_tokens == four.count_prompt_tokens(sent[index].messages)

    def stuck() -> Iterator[ChatRequest | None]:
        yield None

    with pytest.raises(EngineError):
        list(four.complete_each(stuck()))
    assert isinstance(four.complete(ask("Say hi.")), Completion)  # still usable


def test_batch_results_match_requests_run_alone(four: BatchedEngine) -> None:
    requests = [ask(f"Repeat exactly this phrase: {p}") for p in PHRASES]
    batch = [r.text for r in four.complete_many(requests) if isinstance(r, Completion)]
    alone = [four.complete(r).text for r in requests]
    assert alone == [four.complete(r).text for r in requests]  # alone repeats exactly
    # In a batch llama.cpp's kernels round differently (see batched.py), which flips
    # near-tied greedy choices now and then; slot mix-ups would break them all.
    same = sum(b == a for b, a in zip(batch, alone, strict=True))
    print(f"\nbatch == alone for {same}/{len(requests)} requests", file=sys.stderr)
    assert same >= len(requests) * 2 // 3


def test_seeded_sampling_repeats(model_path: str, four: BatchedEngine) -> None:
    warm = SamplingParams(temperature=1.0, max_tokens=16)
    seeded = [ask(f"Tell me a short story about {t}.", warm.with_(seed=11))
              for t in ("a fox", "the sea", "a robot")]
    first = [r.text for r in four.complete_many(seeded) if isinstance(r, Completion)]
    assert first == [r.text for r in four.complete_many(seeded) if isinstance(r, Completion)]
    assert four.complete(seeded[0]).text == four.complete(seeded[0]).text
    engine = _open(model_path, 4, n_ctx=1024, seed=3)
    try:
        unseeded = [ask("Tell me a short story.", warm) for _ in range(4)]
        a = [r.text for r in engine.complete_many(unseeded) if isinstance(r, Completion)]
        b = [r.text for r in engine.complete_many(unseeded) if isinstance(r, Completion)]
    finally:
        engine.close()
    assert a == b  # seeds derived from the engine seed and the request's position
    assert len(set(a)) > 1


def test_stop_strings(four: BatchedEngine) -> None:
    counting = ask("Count from 1 to 10 with commas.",
                   SamplingParams(temperature=0.0, max_tokens=60, stop=("4",)))
    results = list(four.complete_many([counting, ask("Say hello."), counting]))
    for result in (results[0], results[2]):
        assert isinstance(result, Completion)
        assert "4" not in result.text and result.text.strip()
        assert result.finish_reason == "stop"


def test_json_schema_output_parses(four: BatchedEngine) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"]}
    sampling = SamplingParams(temperature=0.0, max_tokens=60)
    requests = [ask(f"Describe a person called {n} as JSON.", sampling, json_schema=schema)
                for n in ("Ann", "Bob", "Cleo")]
    for result in four.complete_many(requests):
        assert isinstance(result, Completion), result
        data = json.loads(result.text)
        assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_closed_engine_refuses_work(model_path: str) -> None:
    from termlm.errors import EngineError

    engine = _open(model_path, 2, n_ctx=512)
    running = engine.complete_many([ask("Say hi."), ask("Say bye."), ask("Say yes.")])
    assert isinstance(next(running), Completion)
    engine.close()
    del running  # its slots are let go against a closed context: no crash
    with pytest.raises(EngineError, match="closed"):
        engine.complete(ask("Say hi."))
    engine.close()


SCORING = [
    ScoreRequest((Message("system", SYSTEM),
                  Message("user", "What is the capital of France? Answer with one word.")),
                 ("Paris", "London", "Banana split with extra cream")),
    ScoreRequest((Message("user", "Is fire hot or cold? One word."),), ("hot", "hotter", "cold")),
    ScoreRequest((Message("system", SYSTEM),
                  Message("user", "What color is the sky on a clear day? One word.")),
                 ("blue", "green"), terminate=False),
    ScoreRequest((Message("system", SYSTEM),
                  Message("user", "How many legs does a dog have? Answer with a number.")),
                 ("4", "four legs", "seventeen")),
]


def _close(got: list[Score], expected: list[Score], tolerance: float) -> None:
    assert [s.continuation for s in got] == [s.continuation for s in expected]
    assert [s.n_tokens for s in got] == [s.n_tokens for s in expected]
    # Label tokens go through llama.cpp in one batch here, one by one in LlamaEngine:
    # the rounding differs a little per token (more with flash attention, whose CPU
    # kernel accumulates in f16), which adds up on long unlikely labels: up to ~6% of
    # a -9 log-probability. A slot mix-up would be off by far more, and change _best.
    assert [s.logprob for s in got] == pytest.approx([s.logprob for s in expected],
                                                     abs=tolerance, rel=0.07)


def _best(scores: list[Score]) -> str:
    return max(scores, key=lambda s: s.logprob).continuation


def test_score_many_matches_llama_engine(one: BatchedEngine, four: BatchedEngine,
                                         llama: LlamaEngine) -> None:
    expected = [llama.score(r) for r in SCORING]
    requests = [*SCORING[:2], ScoreRequest((Message("user", "word " * 3000),), ("a",)),
                *SCORING[2:]]
    for engine, tolerance in ((one, 0.3), (four, 0.3)):
        results = list(engine.score_many(requests))
        assert isinstance(results[2], ContextOverflow)
        del results[2]
        for got, want in zip(results, expected, strict=True):
            assert isinstance(got, list)
            _close(got, want, tolerance)
            assert _best(got) == _best(want)
    assert one.score(SCORING[0])[0].logprob == pytest.approx(expected[0][0].logprob, abs=0.05)


SENTENCES = [
    "The cat sleeps on the sofa.", "I like green tea.", "Where is the station?",
    "It is raining today.", "My brother plays football.", "The book is on the table.",
    "We eat dinner at seven.", "She reads a newspaper.", "The shop opens at nine.",
    "He drives a red car.", "The children are playing.", "I need a new phone.",
    "The coffee is too hot.", "They live in Paris.", "Open the window, please.",
    "The bus is late again.", "I lost my keys.", "This soup is delicious.",
    "The museum is closed.", "We went to the beach.", "The dog barks at night.",
    "I am learning French.", "The movie starts soon.", "Can you help me?",
    "The garden is beautiful.", "He works in a bank.", "The train leaves at noon.",
    "I bought some apples.", "The river is very long.", "She sings very well.",
    "It is cold outside.", "Thank you for the gift.",
]


def test_throughput_against_a_llama_engine_loop(model_path: str, llama: LlamaEngine) -> None:
    """Not a strict benchmark (shared 2-core machine): prints both rates."""
    system = ("You are a translator. Translate the user's sentence into French. "
              "Reply with the translation only.")
    sampling = SamplingParams(temperature=0.0, max_tokens=48)
    requests = [ChatRequest((Message("system", system), Message("user", s)), sampling)
                for s in SENTENCES]
    started = time.perf_counter()
    for request in requests:
        llama.complete(request)
    loop_s = time.perf_counter() - started
    engine = _open(model_path, 8)
    try:
        started = time.perf_counter()
        results = list(engine.complete_many(requests))
        batch_s = time.perf_counter() - started
    finally:
        engine.close()
    assert all(isinstance(r, Completion) for r in results)
    n = len(requests)
    print(f"\nLlamaEngine loop: {n / loop_s:.2f} req/s; BatchedEngine parallel 8: "
          f"{n / batch_s:.2f} req/s ({loop_s / batch_s:.2f}x)", file=sys.stderr)
    assert batch_s < loop_s * 1.5  # only a guard against a pathological slowdown


def _draws(native: object, at: int, cut: int, sampling: SamplingParams,
           history: list[int]) -> list[int]:
    """Four tokens from a chain like NativeContext.sampler's, with a top-``cut`` first."""
    from termlm.engine.llama_common import _PENALTY_LAST_N

    lib, ctx, n_vocab = native._lib, native.ctx, native.n_vocab  # type: ignore[attr-defined]
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    parts = [lib.llama_sampler_init_top_k(cut)] if cut else []
    parts.append(lib.llama_sampler_init_penalties(n_vocab, _PENALTY_LAST_N,
                                                  sampling.repeat_penalty, 0.0, 0.0))
    if sampling.temperature:
        parts += [lib.llama_sampler_init_top_k(sampling.top_k),
                  lib.llama_sampler_init_temp(sampling.temperature),
                  lib.llama_sampler_init_dist(7)]
    else:
        parts.append(lib.llama_sampler_init_greedy())
    for part in parts:
        lib.llama_sampler_chain_add(chain, part)
    for token in history:
        lib.llama_sampler_accept(chain, token)
    try:
        return [int(lib.llama_sampler_sample(chain, ctx, at)) for _ in range(4)]
    finally:
        lib.llama_sampler_free(chain)


def test_penalty_prefilter_picks_what_the_full_vocabulary_would(model_path: str) -> None:
    """The top-k cut before the repetition penalty (llama_common._penalty_prefilter) must
    not change a choice, even when the penalty hits exactly the best raw tokens."""
    import numpy as np

    from termlm.engine.llama_common import _PENALTY_LAST_N, _penalty_prefilter

    engine = _open(model_path, 1, n_ctx=512)
    native, lib = engine._native, engine._native._lib
    try:
        for prompt in ("The capital of France is", "1, 2, 3, 4,", "Once upon a time"):
            native.clear()
            tokens = engine._prompts.tokenize_prompt(prompt)
            native.add(0, 0, tokens, "last")
            native.decode()
            at = len(tokens) - 1
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(native.ctx, at),
                                           shape=(native.n_vocab,))
            ranked = [int(t) for t in np.argsort(-logits)]
            for penalty in (1.1, 1.5, 3.0):
                for history in (ranked[:_PENALTY_LAST_N], ranked[1:3], ranked[5:60:3]):
                    for sampling in (GREEDY.with_(repeat_penalty=penalty),
                                     SamplingParams(temperature=0.8, top_k=5,
                                                    repeat_penalty=penalty)):
                        keep = _penalty_prefilter(sampling, grammar=False)
                        assert keep == (sampling.top_k if sampling.temperature else 1) + 64
                        chosen = [_draws(native, at, cut, sampling, history)
                                  for cut in (0, keep)]
                        assert chosen[0] == chosen[1], (prompt, penalty, history[:3])
        assert _penalty_prefilter(GREEDY.with_(repeat_penalty=1.1), grammar=True) == 0
        assert _penalty_prefilter(GREEDY.with_(repeat_penalty=0.9), grammar=False) == 0
        assert _penalty_prefilter(SamplingParams(temperature=0.7, top_k=0), grammar=False) == 0
    finally:
        engine.close()
