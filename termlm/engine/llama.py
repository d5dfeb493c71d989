"""LlamaEngine: the one module that imports llama_cpp.

It loads a GGUF file in-process, formats chat messages with the model's own
chat template (or a catalog turn format, or a plain completion layout), streams
tokens with stop handling, counts tokens, and scores continuations by their
log-probability. llama.cpp's log goes to the ``termlm.llama`` logger.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from termlm.engine.types import (
    PLAIN_FORMAT,
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

log = logging.getLogger("termlm.llama")
_LOG_LEVELS = {1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.DEBUG}
_log_callback: Any = None  # keep a reference: ctypes callbacks must outlive their use


def _route_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's log lines to our logger instead of straight to stderr."""
    global _log_callback
    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if log.isEnabledFor(logging.DEBUG):
            line = text.decode("utf-8", "replace").rstrip("\n")
            if line:
                log.debug("%s", line) if level != 3 else log.debug("error: %s", line)

    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    _log_callback = _callback


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def resolve_gpu_layers(value: int | str) -> int:
    """'auto' means every layer when this build can offload, none otherwise."""
    if value == "auto":
        return -1 if gpu_offload_supported() else 0
    return int(value)


class _Utf8Stream:
    """Turns token bytes into text, holding back incomplete UTF-8 sequences."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> str:
        data = self._pending + data
        for cut in range(len(data), max(len(data) - 4, -1), -1):
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._pending = data[cut:]
            return text
        self._pending = b""
        return data.decode("utf-8", "replace")

    def flush(self) -> str:
        rest, self._pending = self._pending, b""
        return rest.decode("utf-8", "replace")


class _StopScanner:
    """Holds back text that may be the start of a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped)."""
        self.buffer += text
        for stop in self.stops:
            at = self.buffer.find(stop)
            if at >= 0:
                out, self.buffer = self.buffer[:at], ""
                return out, True
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        cut = len(self.buffer) - hold
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


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
    ) -> None:
        started = time.perf_counter()
        import llama_cpp

        _route_llama_logs(llama_cpp)
        self._llama_cpp = llama_cpp
        try:
            self._llm: Any = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_batch=min(512, n_ctx),
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=resolve_gpu_layers(n_gpu_layers),
                seed=seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"llama.cpp could not load {path}: {exc}") from None
        self._default_seed = seed
        self._formatter: Any = None
        self._turn_format: TurnFormat | None = None
        template = self._llm.metadata.get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            vocab = self._llm._model
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=vocab.token_get_text(self._llm.token_eos()),
                bos_token=vocab.token_get_text(self._llm.token_bos()),
            )
            chat_format = "template"
        elif turn_format is not None:
            self._turn_format = turn_format
            chat_format = "catalog"
        else:
            self._turn_format = PLAIN_FORMAT
            chat_format = "plain"
            if notify is not None:
                notify(f"{name} has no chat template; using a plain completion prompt")
        self._info = ModelInfo(name=name, path=path, n_ctx=self._llm.n_ctx(),
                               n_ctx_train=n_ctx_train, chat_format=chat_format)
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
            llm.close()
            self._llm = None

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompt_tokens(messages))

    def complete(self, request: ChatRequest) -> Completion:
        return collect(self.stream(request))

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        prompt, stops = self._format(request.messages)
        tokens = self._tokenize_prompt(prompt)
        n_ctx = self._info.n_ctx
        if len(tokens) >= n_ctx:
            raise ContextOverflow(len(tokens), n_ctx)
        grammar = self._grammar(request.json_schema) if request.json_schema else None
        return self._generate(tokens, request.sampling, stops, grammar)

    def score(self, request: ScoreRequest) -> list[Score]:
        prompt, stops = self._format(request.messages)
        prompt_tokens = self._tokenize_prompt(prompt)
        end = self._end_of_reply(stops) if request.terminate else []
        conts = [self._continuation_tokens(prompt, prompt_tokens, c) + end
                 for c in request.continuations]
        longest = len(prompt_tokens) + max((len(c) for c in conts), default=0)
        if longest > self._info.n_ctx:
            raise ContextOverflow(longest, self._info.n_ctx)
        self._eval_reusing_prefix(prompt_tokens)
        first = self._last_logprobs()  # the prompt's next-token distribution, shared by all
        return [Score(text, self._logprob(prompt_tokens, first, cont), len(cont))
                for text, cont in zip(request.continuations, conts, strict=True)]

    def _end_of_reply(self, stops: list[str]) -> list[int]:
        """Tokens that close a reply: the template's stop text, else end-of-generation."""
        for stop in stops:
            tokens: list[int] = self._llm.tokenize(stop.encode("utf-8"), add_bos=False,
                                                   special=True)
            if tokens:
                return tokens[:1] if len(tokens) == 1 else tokens
        return [int(self._llm.token_eos())]

    def _grammar(self, schema: Any) -> Any:
        import json

        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        try:
            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except (ValueError, KeyError, TypeError, NotImplementedError, RecursionError) as exc:
            raise EngineError(f"cannot turn the JSON schema into a grammar: {exc}") from None
        # The converter lets raw control characters (newlines) into JSON strings, which
        # json.loads rejects and which lets a small model ramble inside a value: forbid them.
        gbnf = gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')
        try:
            return LlamaGrammar.from_string(gbnf, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"cannot compile the grammar for the JSON schema: {exc}") from None

    # -- formatting -------------------------------------------------------
    def _format(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        if self._formatter is not None:
            result = self._formatter(messages=[m.to_dict() for m in messages])
            stop = result.stop
            stops = [stop] if isinstance(stop, str) else list(stop or [])
            return result.prompt, stops
        fmt = self._turn_format or PLAIN_FORMAT
        return fmt.render(messages), list(fmt.stop)

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        bos_text = self._llm._model.token_get_text(self._llm.token_bos())
        add_bos = not (bos_text and prompt.startswith(bos_text))
        tokens: list[int] = self._llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos,
                                               special=True)
        return tokens

    def _prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        prompt, _ = self._format(messages)
        return self._tokenize_prompt(prompt)

    def _continuation_tokens(self, prompt: str, prompt_tokens: list[int], text: str) -> list[int]:
        joined = self._tokenize_prompt(prompt + text)
        if joined[: len(prompt_tokens)] == prompt_tokens and len(joined) > len(prompt_tokens):
            return joined[len(prompt_tokens) :]
        tokens: list[int] = self._llm.tokenize(text.encode("utf-8"), add_bos=False,
                                               special=False)
        return tokens

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
        llama_cpp = self._llama_cpp
        seed = sampling.seed if sampling.seed is not None else self._default_seed
        llm.set_seed(seed if seed is not None else secrets.randbits(31))
        started = time.perf_counter()
        first_at: float | None = None
        n_generated = 0
        finish = "length"
        stopped_by_text = False
        text_parts: list[str] = []
        utf8 = _Utf8Stream()
        scanner = _StopScanner(list(sampling.stop) + stops)
        vocab = llm._model.vocab
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
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                n_generated += 1
                piece, stopped = scanner.feed(utf8.feed(llm.detokenize([token])))
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


def llama_cpp_version() -> str:
    import llama_cpp

    return str(getattr(llama_cpp, "__version__", "unknown"))


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2))
