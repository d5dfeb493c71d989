"""The llama.cpp adapter on the real default model (and gemma3-270m for a second architecture)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from termlm.config import Settings
from termlm.engine.types import (
    ChatRequest,
    Completion,
    Delta,
    Engine,
    Message,
    SamplingParams,
    ScoreRequest,
)

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    from termlm.engine.loader import open_engine

    eng = open_engine(Settings(model="smollm2", n_ctx=1024))
    yield eng
    eng.close()


def _ask(text: str) -> tuple[Message, ...]:
    return (Message("system", "You are a helpful assistant."), Message("user", text))


def test_info_caps_context_and_reports_template(engine: Engine) -> None:
    assert engine.info.n_ctx == 1024
    assert engine.info.n_ctx_train == 8192
    assert engine.info.chat_format == "template"
    assert engine.load_s > 0


def test_stream_deltas_add_up_to_the_completion(engine: Engine) -> None:
    events = list(engine.stream(ChatRequest(_ask("Name three fruits."), GREEDY)))
    deltas = "".join(e.text for e in events if isinstance(e, Delta))
    done = events[-1]
    assert isinstance(done, Completion)
    assert done.text == deltas and deltas.strip()
    assert 0 < done.usage.completion_tokens <= 24
    assert done.usage.prompt_tokens == engine.count_prompt_tokens(_ask("Name three fruits."))


def test_greedy_repeats_once_the_prompt_is_cached(engine: Engine) -> None:
    # A fully cached prompt re-evaluates only its last token, so repeats are identical.
    # (A cold evaluation of the same prompt batches differently and may differ in the
    # last float bits; each `termlm ask` run starts cold, so ask runs repeat exactly.)
    request = ChatRequest(_ask("What is the capital of France?"), GREEDY)
    engine.complete(request)
    second = engine.complete(request)
    third = engine.complete(request)
    assert second.text == third.text
    assert second.text.strip()


def test_count_tokens(engine: Engine) -> None:
    assert engine.count_tokens("") == 0
    assert 1 <= engine.count_tokens("hello") <= 2
    assert engine.count_tokens("hello world " * 50) >= 100


def test_score_prefers_the_right_continuation(engine: Engine) -> None:
    request = ScoreRequest(
        _ask("What is the capital of France? Answer with one word."),
        ("Paris", "London", "Banana split with extra cream"),
    )
    scores = engine.score(request)
    assert [s.continuation for s in scores] == list(request.continuations)
    assert scores[0].logprob > scores[1].logprob
    assert all(s.logprob < 0 for s in scores)
    assert scores[2].n_tokens > scores[0].n_tokens
    again = engine.score(request)  # the prompt is cached now: same ranking, close numbers
    assert [s.logprob for s in again] == pytest.approx([s.logprob for s in scores], abs=0.1)


def test_score_of_labels_sharing_a_prefix(engine: Engine) -> None:
    scores = engine.score(ScoreRequest(_ask("Is fire hot or cold? One word."),
                                       ("hot", "hotter", "cold")))
    assert len({s.logprob for s in scores}) == 3


def test_stop_strings_across_tokens(engine: Engine) -> None:
    sampling = SamplingParams(temperature=0.0, max_tokens=60, stop=("4",))
    done = engine.complete(ChatRequest(_ask("Count from 1 to 10 with commas."), sampling))
    assert "4" not in done.text
    assert done.finish_reason == "stop"


def test_context_overflow_raises(engine: Engine) -> None:
    from termlm.errors import ContextOverflow

    with pytest.raises(ContextOverflow):
        list(engine.stream(ChatRequest(_ask("word " * 2000), GREEDY)))


def test_second_architecture_gemma3_via_catalog_turn_format() -> None:
    """gemma3-270m: another architecture, no chat template in its GGUF."""
    pulled = subprocess.run([sys.executable, "-m", "termlm", "models", "pull", "gemma3-270m"],
                            capture_output=True, text=True, timeout=1200, check=False)
    assert pulled.returncode == 0, pulled.stderr
    from termlm.engine.loader import open_engine

    eng = open_engine(Settings(model="gemma3-270m", n_ctx=512))
    try:
        assert eng.info.chat_format == "catalog"
        done = eng.complete(ChatRequest((Message("user", "The capital of France is"),),
                                        SamplingParams(temperature=0.0, max_tokens=16)))
        assert done.text.strip()
    finally:
        eng.close()
    path = pulled.stdout.strip().splitlines()[-1]
    plain = subprocess.run([sys.executable, "-m", "termlm", "ask", "-m", path, "--temperature",
                            "0", "-n", "8", "The capital of France is"],
                           capture_output=True, text=True, timeout=300, check=False)
    assert plain.returncode == 0, plain.stderr
    assert "no chat template" in plain.stderr
    assert plain.stdout.strip()
