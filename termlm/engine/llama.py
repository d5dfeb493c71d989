"""LlamaEngine: llama-cpp-python's high-level ``Llama``, one sequence at a time.

It loads a GGUF file in-process, formats chat messages with the model's own
chat template (or a catalog turn format, or a plain completion layout), streams
tokens with stop handling, counts tokens, and scores continuations by their
log-probability. llama.cpp's log goes to the ``termlm.llama`` logger. Prompt
layout, vocab access and the text scanners live in ``llama_common`` (shared with
``BatchedEngine``).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from termlm.engine.backend import patch_llama_defaults
from termlm.engine.llama_common import (
    PromptFormat,
    StopScanner,
    Utf8Stream,
    Vocab,
    gpu_offload_supported,
    json_schema_gbnf,
    llama_cpp_version,
    package,
    resolve_gpu_layers,
    route_llama_logs,
)
from termlm.engine.types import (
    ChatRequest,
    Completion,
    Delta,
    Message,
    ModelInfo,
    SamplingParams,
    Score,
    ScoreRequest,
    StreamEvent,
    Timings,
    TurnFormat,
    Usage,
    collect,
)
from termlm.errors import ContextOverflow, EngineError
from termlm.sysinfo import default_threads

__all__ = ["LlamaEngine", "default_threads", "gpu_offload_supported", "llama_cpp_version",
           "resolve_gpu_layers"]


class LlamaEngine:
    """The Engine protocol on llama-cpp-python's ``Llama`` object."""

    def __init__(
        self,
        path: str,
        *,
        name: str,
        n_ctx: int,
        n_ctx_train: int,
        threads: int | None = None,
        n_gpu_layers: int | str = "auto",
        seed: int | None = None,
        turn_format: TurnFormat | None = None,
        notify: Any = None,
        flash_attn: bool = True,
        cpu_extra_buffers: str = "auto",
    ) -> None:
        started = time.perf_counter()
        llama_cpp = package()
        patch_llama_defaults(cpu_extra_buffers)  # Llama has no option for use_extra_bufts

        route_llama_logs(llama_cpp)
        try:
            self._llm: Any = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_batch=min(512, n_ctx),
                n_threads=threads or default_threads(),
                n_threads_batch=threads or default_threads(),
                n_gpu_layers=resolve_gpu_layers(n_gpu_layers),
                seed=seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
                flash_attn=flash_attn,  # as BatchedEngine's "auto" resolves on the CPU
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"llama.cpp could not load {path}: {exc}") from None
        self._default_seed = seed
        self._vocab = Vocab(llama_cpp, self._llm._model.vocab)
        template = self._llm.metadata.get("tokenizer.chat_template")
        self._prompts = PromptFormat(self._vocab, template, turn_format, name=name,
                                     notify=notify)
        self._info = ModelInfo(name=name, path=path, n_ctx=self._llm.n_ctx(),
                               n_ctx_train=n_ctx_train,
                               chat_format=self._prompts.chat_format)
        self._load_s = time.perf_counter() - started

    # -- protocol ---------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def load_s(self) -> float:
        return self._load_s

    def close(self) -> None:
        llm: Any = getattr(self, "_llm", None)
        if llm is not None:
            self._vocab.close()
            llm.close()
            self._llm = None

    def count_tokens(self, text: str) -> int:
        return self._prompts.count_tokens(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompts.prompt_tokens(messages))

    def complete(self, request: ChatRequest) -> Completion:
        return collect(self.stream(request))

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        prompt, stops = self._prompts.format(request.messages)
        tokens = self._prompts.tokenize_prompt(prompt)
        n_ctx = self._info.n_ctx
        if len(tokens) >= n_ctx:
            raise ContextOverflow(len(tokens), n_ctx)
        grammar = self._grammar(request.json_schema) if request.json_schema else None
        return self._generate(tokens, request.sampling, stops, grammar)

    def score(self, request: ScoreRequest) -> list[Score]:
        prompt_tokens, conts = self._prompts.score_tokens(request, self._info.n_ctx)
        self._eval_reusing_prefix(prompt_tokens)
        first = self._last_logprobs()  # the prompt's next-token distribution, shared by all
        return [Score(text, self._logprob(prompt_tokens, first, cont), len(cont))
                for text, cont in zip(request.continuations, conts, strict=True)]

    def _grammar(self, schema: Any) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        gbnf = json_schema_gbnf(schema)
        try:
            return LlamaGrammar.from_string(gbnf, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"cannot compile the grammar for the JSON schema: {exc}") from None

    # -- evaluation -------------------------------------------------------
    def _eval_reusing_prefix(self, tokens: list[int]) -> None:
        """Evaluate ``tokens``, keeping whatever prefix is already in the KV cache."""
        llm = self._llm
        have = llm.n_tokens
        common = 0
        limit = min(have, len(tokens))
        cached = llm.input_ids
        while common < limit and cached[common] == tokens[common]:
            common += 1
        if common == len(tokens):
            common -= 1  # re-evaluate the last token to refresh its logits
        llm.n_tokens = max(common, 0)
        llm.eval(tokens[llm.n_tokens :])

    def _last_logprobs(self) -> Any:
        import numpy as np

        n_vocab = self._llm.n_vocab()
        ptr = self._llm._ctx.get_logits_ith(-1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + math.log(float(np.exp(logits - top).sum())))

    def _logprob(self, prompt_tokens: list[int], first: Any, cont: list[int]) -> float:
        """Sum of log-probabilities of ``cont`` after the (already evaluated) prompt."""
        if not cont:
            return 0.0
        total = float(first[cont[0]])
        if len(cont) > 1:
            self._llm.n_tokens = len(prompt_tokens)  # drop the previous continuation
            for i, token in enumerate(cont[:-1]):
                self._llm.eval([token])
                total += float(self._last_logprobs()[cont[i + 1]])
        return total

    def _generate(self, tokens: list[int], sampling: SamplingParams,
                  stops: list[str], grammar: Any = None) -> Iterator[StreamEvent]:
        llm = self._llm
        seed = sampling.seed if sampling.seed is not None else self._default_seed
        llm.set_seed(seed if seed is not None else secrets.randbits(31))
        started = time.perf_counter()
        first_at: float | None = None
        n_generated = 0
        finish = "length"
        stopped_by_text = False
        text_parts: list[str] = []
        utf8 = Utf8Stream()
        scanner = StopScanner(list(sampling.stop) + stops)
        vocab = self._vocab
        room = self._info.n_ctx - len(tokens)
        budget = min(sampling.max_tokens, room)
        generator = llm.generate(
            tokens,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=0.0,
            repeat_penalty=sampling.repeat_penalty,
            reset=True,
            grammar=grammar,
        )
        try:
            for token in generator:
                if first_at is None:
                    first_at = time.perf_counter()
                if vocab.is_eog(token):
                    finish = "stop"
                    break
                n_generated += 1
                piece, stopped = scanner.feed(utf8.feed(vocab.piece(token)))
                if piece:
                    text_parts.append(piece)
                    yield Delta(piece)
                if stopped:
                    finish, stopped_by_text = "stop", True
                    break
                if n_generated >= budget:
                    break
        finally:
            generator.close()
        if not stopped_by_text:
            tail, _ = scanner.feed(utf8.flush())
            tail += scanner.flush()
            if tail:
                text_parts.append(tail)
                yield Delta(tail)
        ended = time.perf_counter()
        ttft = (first_at or ended) - started
        gen_s = ended - (first_at or ended)
        rate = (n_generated - 1) / gen_s if n_generated > 1 and gen_s > 0 else 0.0
        yield Completion(
            text="".join(text_parts),
            finish_reason="stop" if finish == "stop" else "length",
            usage=Usage(prompt_tokens=len(tokens), completion_tokens=n_generated),
            timings=Timings(ttft_s=ttft, total_s=ended - started, completion_tokens_per_s=rate),
        )

