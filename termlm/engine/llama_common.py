"""What the llama.cpp engines share: log routing, vocab access, prompt layout, text scanners.

``LlamaEngine`` (high-level ``Llama``) and ``BatchedEngine`` (low-level API) both
format chat messages, tokenize prompts, detokenize pieces, scan for stop strings
and build JSON grammars the same way; this module holds that once. ``llama_cpp``
is passed in or imported lazily, never at module import.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from termlm.engine.types import PLAIN_FORMAT, Message, SamplingParams, ScoreRequest, TurnFormat
from termlm.errors import ContextOverflow, EngineError
from termlm.sysinfo import default_threads

log = logging.getLogger("termlm.llama")
_log_callback: Any = None  # keep a reference: ctypes callbacks must outlive their use


def route_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's log lines to our logger instead of straight to stderr."""
    global _log_callback
    if _log_callback is not None:  # set it again: importing llama_cpp's package installs its own
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if log.isEnabledFor(logging.DEBUG):
            line = text.decode("utf-8", "replace").rstrip("\n")
            if line:
                log.debug("%s", line) if level != 3 else log.debug("error: %s", line)

    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    _log_callback = _callback


def bindings() -> Any:
    """llama.cpp's ctypes bindings, without running llama_cpp's package __init__.

    The package imports its whole high-level layer (numpy, jinja2 chat formats,
    the Llama class): about 0.15 s that the low-level engines never use. When
    nothing has imported llama_cpp yet, the package is registered unexecuted and
    only its ``llama_cpp.llama_cpp`` submodule loads; :func:`package` finishes the
    package later if something needs the high-level layer.
    """
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.loader is None:
            raise EngineError("llama-cpp-python is not installed",
                              hint="pip install llama-cpp-python")
        stub = importlib.util.module_from_spec(spec)
        stub.__dict__["_termlm_unexecuted"] = True
        sys.modules["llama_cpp"] = stub
    import llama_cpp.llama_cpp as low

    return low


def package() -> Any:
    """The whole llama_cpp package (Llama, grammars), finishing a :func:`bindings` stub."""
    module = sys.modules.get("llama_cpp")
    if module is not None and module.__dict__.pop("_termlm_unexecuted", False):
        assert module.__spec__ is not None and module.__spec__.loader is not None
        module.__spec__.loader.exec_module(module)
    import llama_cpp

    return llama_cpp


def gpu_offload_supported() -> bool:
    return bool(bindings().llama_supports_gpu_offload())


def resolve_gpu_layers(value: int | str) -> int:
    """'auto' means every layer when this build can offload, none otherwise."""
    if value == "auto":
        return -1 if gpu_offload_supported() else 0
    return int(value)


def llama_cpp_version() -> str:
    return str(getattr(package(), "__version__", "unknown"))


class Utf8Stream:
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


class StopScanner:
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


def json_schema_gbnf(schema: Any) -> str:
    """A GBNF grammar (root rule ``root``) for JSON matching ``schema``."""
    import json

    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf: str = json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, NotImplementedError, RecursionError) as exc:
        raise EngineError(f"cannot turn the JSON schema into a grammar: {exc}") from None
    # The converter lets raw control characters (newlines) into JSON strings, which
    # json.loads rejects and which lets a small model ramble inside a value: forbid them.
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')


class Vocab:
    """Tokenize and detokenize through a ``llama_vocab`` pointer."""

    def __init__(self, llama_cpp: Any, vocab: Any) -> None:
        self._llama_cpp = llama_cpp
        self.ptr = vocab
        self.n_tokens = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(vocab))
        self._pieces: dict[int, bytes] = {}
        self._buffer = ctypes.create_string_buffer(64)

    def close(self) -> None:
        """The model is gone: refuse further use instead of touching freed memory."""
        self.ptr = None

    def _live(self) -> Any:
        if self.ptr is None:
            raise EngineError("the engine is closed")
        return self.ptr

    def tokenize(self, data: bytes, *, add_special: bool, special: bool) -> list[int]:
        ptr = self._live()
        size = len(data) + 8  # never more tokens than bytes, plus the specials added
        tokens = (self._llama_cpp.llama_token * size)()
        n = self._llama_cpp.llama_tokenize(ptr, data, len(data), tokens, size, add_special,
                                           special)
        if n < 0:
            raise EngineError(f"llama.cpp could not tokenize {len(data)} bytes")
        return list(tokens[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        ptr, buffer = self._live(), self._buffer
        n = self._llama_cpp.llama_token_to_piece(ptr, token, buffer, len(buffer), 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._llama_cpp.llama_token_to_piece(ptr, token, buffer, len(buffer), 0, False)
        data = buffer.raw[: max(n, 0)]
        self._pieces[token] = data
        return data

    def text(self, token: int) -> str:
        """A token's own text (``<s>``, ``<|im_end|>``); empty for no token."""
        if not 0 <= token < self.n_tokens:
            return ""
        raw = self._llama_cpp.llama_vocab_get_text(self._live(), token)
        return raw.decode("utf-8", "replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._live(), token))


class ChatTemplate:
    """A GGUF's Jinja chat template, rendered the way Hugging Face's tokenizers do.

    A sandboxed, immutable Jinja environment (as transformers and llama-cpp-python
    use), so a template can read messages but call nothing unsafe; jinja2 comes
    with llama-cpp-python.
    """

    def __init__(self, template: str, *, eos_token: str, bos_token: str) -> None:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class _GenerationTags(jinja2.ext.Extension):  # HF's {% generation %} markers
            tags = {"generation"}  # noqa: RUF012 - jinja2 declares it a class-level set

            def parse(self, parser: Any) -> Any:
                parser.stream.skip(1)
                return parser.parse_statements(("name:endgeneration",), drop_needle=True)

        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
            extensions=[_GenerationTags, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(template)
        except jinja2.TemplateError as exc:
            raise EngineError(f"the model's chat template does not parse: {exc}") from None
        self.eos_token = eos_token
        self.bos_token = bos_token

    def render(self, messages: Sequence[Message]) -> str:
        import jinja2

        def raise_exception(message: str) -> None:
            raise EngineError(f"the model's chat template refused the messages: {message}")

        try:
            return str(self._template.render(
                messages=[m.to_dict() for m in messages], eos_token=self.eos_token,
                bos_token=self.bos_token, raise_exception=raise_exception,
                add_generation_prompt=True, strftime_now=_strftime_now))
        except jinja2.TemplateError as exc:
            raise EngineError(f"the model's chat template failed: {exc}") from None


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    import datetime

    return datetime.datetime.now().strftime(fmt)


class Rendered(str):
    """A rendered prompt that remembers where message text holding special-token text lies
    (``spans``, character ranges): that text is tokenized as plain text, never as markup."""

    spans: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, spans: tuple[tuple[int, int], ...] = ()) -> Rendered:
        self = super().__new__(cls, text)
        self.spans = spans
        return self


class PromptFormat:
    """Lays out messages as a prompt and turns prompts and replies into tokens.

    The model's own Jinja chat template comes first, then a catalog turn format,
    then a plain completion layout.
    """

    def __init__(self, vocab: Vocab, template: str | None, turn_format: TurnFormat | None,
                 *, name: str, notify: Any = None) -> None:
        self.vocab = vocab
        self._formatter: Any = None
        self._turn_format: TurnFormat = turn_format or PLAIN_FORMAT
        if template:
            self._formatter = ChatTemplate(template, eos_token=vocab.text(vocab.eos),
                                           bos_token=vocab.text(vocab.bos))
            self.chat_format = "template"
        elif turn_format is not None:
            self.chat_format = "catalog"
        else:
            self.chat_format = "plain"
            if notify is not None:
                notify(f"{name} has no chat template; using a plain completion prompt")

    def format(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        """The prompt text ready for the reply, and the stop strings of the layout.

        The text is a ``Rendered`` string: it knows where the messages' own text lies, so
        that ``tokenize_prompt`` parses special tokens only in the layout's markup.
        """
        if self._formatter is not None:
            text, stops = self._formatter.render(messages), [self._formatter.eos_token]
        else:
            text, stops = self._turn_format.render(messages), list(self._turn_format.stop)
        return Rendered(text, self._live_spans(text, [m.content for m in messages])), stops

    def has_special_text(self, text: str) -> bool:
        """Whether ``text`` holds the text of a special token (``<|im_start|>``, ``</s>``)."""
        data = text.encode("utf-8")
        return (self.vocab.tokenize(data, add_special=False, special=True)
                != self.vocab.tokenize(data, add_special=False, special=False))

    def _live_spans(self, text: str, contents: Sequence[str]) -> tuple[tuple[int, int], ...]:
        """Where, in the rendered ``text``, message text holding special-token text lies.

        Data, documents and user messages are never read as special tokens: a message
        that holds such text is found in the rendering (in order; as is, or trimmed, as
        templates do) and tokenized as plain text. A template that rewrote such a message
        beyond recognition is refused rather than let the text become markup.
        """
        spans: list[tuple[int, int]] = []
        cursor = 0
        for content in contents:
            if not content:
                continue
            live = self.has_special_text(content)
            for candidate in (content, content.strip()):
                at = text.find(candidate, cursor) if candidate else -1
                if at >= 0:
                    if live:
                        spans.append((at, at + len(candidate)))
                    cursor = at + len(candidate)
                    break
            else:
                if live:
                    raise EngineError("a message holds special-token text that the chat "
                                      "template rewrote; refusing to read it as markup")
        return tuple(spans)

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """The prompt's tokens: special tokens parsed in the markup only (see ``format``)."""
        bos_text = self.vocab.text(self.vocab.bos)
        add_bos = not (bos_text and prompt.startswith(bos_text))
        spans = prompt.spans if isinstance(prompt, Rendered) else ()
        if not spans:
            return self.vocab.tokenize(prompt.encode("utf-8"), add_special=add_bos,
                                       special=True)
        pieces: list[tuple[str, bool]] = []  # (text, parse special tokens)
        pos = 0
        for start, end in (*spans, (len(prompt), len(prompt))):
            pieces += [(prompt[pos:start], True), (prompt[start:end], False)]
            pos = end
        tokens: list[int] = []
        for text, markup in (p for p in pieces if p[0]):
            tokens += self.vocab.tokenize(text.encode("utf-8"), add_special=add_bos and not tokens,
                                          special=markup)
        return tokens

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        prompt, _ = self.format(messages)
        return self.tokenize_prompt(prompt)

    def count_tokens(self, text: str) -> int:
        return len(self.vocab.tokenize(text.encode("utf-8"), add_special=False, special=False))

    def continuation_tokens(self, prompt: str, prompt_tokens: list[int], text: str) -> list[int]:
        """Tokens of ``text`` as the model would see them right after the prompt."""
        spans = prompt.spans if isinstance(prompt, Rendered) else ()
        if self.has_special_text(text):
            spans = (*spans, (len(prompt), len(prompt) + len(text)))
        joined = self.tokenize_prompt(Rendered(prompt + text, spans))
        if joined[: len(prompt_tokens)] == prompt_tokens and len(joined) > len(prompt_tokens):
            return joined[len(prompt_tokens) :]
        return self.vocab.tokenize(text.encode("utf-8"), add_special=False, special=False)

    def end_of_reply(self, stops: list[str]) -> list[int]:
        """Tokens that close a reply: the template's stop text, else end-of-generation."""
        for stop in stops:
            tokens = self.vocab.tokenize(stop.encode("utf-8"), add_special=False, special=True)
            if tokens:
                return tokens
        return [self.vocab.eos]

    def score_tokens(self, request: ScoreRequest, n_ctx: int) -> tuple[list[int], list[list[int]]]:
        """The prompt tokens and each continuation's tokens (with the reply's end if asked).

        Raises ContextOverflow when the prompt plus the longest continuation cannot fit.
        """
        prompt, stops = self.format(request.messages)
        prompt_tokens = self.tokenize_prompt(prompt)
        end = self.end_of_reply(stops) if request.terminate else []
        conts = [self.continuation_tokens(prompt, prompt_tokens, c) + end
                 for c in request.continuations]
        longest = len(prompt_tokens) + max((len(c) for c in conts), default=0)
        if longest > n_ctx:
            raise ContextOverflow(longest, n_ctx)
        return prompt_tokens, conts


_PENALTY_LAST_N = 64  # llama-cpp-python's Llama default (last_n_tokens_size)
Logits = Literal["none", "last", "all"]


def _penalty_prefilter(sampling: SamplingParams, grammar: bool) -> int:
    """How many of the top raw logits can hold the choice, so the repetition penalty
    need not visit the whole vocabulary (0: all of them).

    A penalty above 1 only lowers logits, and of at most ``_PENALTY_LAST_N`` tokens.
    A token among the best ``k`` after it then has fewer than ``k`` unpenalized tokens
    above it before it too, so it is among the best ``k + _PENALTY_LAST_N`` raw logits:
    cutting to those first changes no choice (greedy: ``k`` = 1; top-k sampling: its
    ``k``), and makes sampling about three times cheaper. Not with a grammar (it may
    reject every top token), a penalty below 1, or sampling without a top-k.
    """
    if grammar or sampling.repeat_penalty < 1.0 or sampling.temperature < 0.0:
        return 0
    if sampling.temperature == 0.0:
        return 1 + _PENALTY_LAST_N
    return sampling.top_k + _PENALTY_LAST_N if sampling.top_k > 0 else 0


@dataclass
class Batch:
    """A ``llama_batch`` of ``cap`` tokens, one sequence id each, with typed views."""

    raw: Any
    tok: Any  # c_int32 * cap: the token ids
    pos: Any  # c_int32 * cap: their positions
    out: Any  # c_int8 * cap: whether each gives an output (logits, embeddings)
    seq: list[Any]  # each token's sequence id (a c_int32 pointer: seq[i][0] = seq)


def new_batch(lib: Any, cap: int) -> Batch:
    raw = lib.llama_batch_init(cap, 0, 1)
    n_seq_id = ctypes.cast(raw.n_seq_id, ctypes.POINTER(ctypes.c_int32 * cap)).contents
    n_seq_id[:] = [1] * cap  # every token belongs to exactly one sequence
    return Batch(raw,
                 ctypes.cast(raw.token, ctypes.POINTER(ctypes.c_int32 * cap)).contents,
                 ctypes.cast(raw.pos, ctypes.POINTER(ctypes.c_int32 * cap)).contents,
                 ctypes.cast(raw.logits, ctypes.POINTER(ctypes.c_int8 * cap)).contents,
                 [raw.seq_id[i] for i in range(cap)])


def free_native(lib: Any, owner: Any) -> None:
    """Free ``owner``'s ``_batch``, ``ctx`` and ``model`` (each once; later calls do
    nothing), in that order: the batch and context before the model they belong to."""
    if getattr(owner, "_batch", None) is not None:
        lib.llama_batch_free(owner._batch)
        owner._batch = None
    if getattr(owner, "ctx", None):
        lib.llama_free(owner.ctx)
        owner.ctx = None
    if getattr(owner, "model", None):
        lib.llama_model_free(owner.model)
        owner.model = None


class NativeContext:
    """A model and a multi-sequence context on llama.cpp's low-level API.

    One ``llama_batch`` is reused for every decode. Every call that could trip
    one of llama.cpp's aborts is checked first against a ``KvMirror``.
    """

    def __init__(self, llama_cpp: Any, path: str, *, n_ctx: int, n_seq_max: int,
                 threads: int | None, n_gpu_layers: int, flash_attn: str,
                 extra_buffers: bool = True) -> None:
        from termlm.engine.batch_sched import KvMirror

        lib = self._lib = llama_cpp
        self.model: Any = None
        self.ctx: Any = None
        self._batch: Any = None
        if n_seq_max > int(lib.llama_max_parallel_sequences()):
            raise EngineError(f"llama.cpp allows at most {lib.llama_max_parallel_sequences()}"
                              " sequences")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_extra_bufts = extra_buffers  # False: the AMX guard (engine.backend)
        self.model = lib.llama_model_load_from_file(path.encode("utf-8"), mparams)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {path}")
        n_batch = min(512, n_ctx)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = True  # one cache shared by all sequences: needed by seq_cp
        cparams.n_threads = cparams.n_threads_batch = threads or default_threads()
        cparams.flash_attn_type = {"on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                   "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                                   }.get(flash_attn, lib.LLAMA_FLASH_ATTN_TYPE_AUTO)
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            self.close()
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self.n_ctx = int(lib.llama_n_ctx(self.ctx))
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        if int(lib.llama_n_seq_max(self.ctx)) != n_seq_max:
            self.close()
            raise EngineError("llama.cpp did not create the sequences asked for")
        # a recurrent state cannot be cut or shared in part: no shared prompt prefixes
        self.partial_copies = not (lib.llama_model_is_recurrent(self.model)
                                   or lib.llama_model_is_hybrid(self.model))
        self.vocab_ptr = lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab_ptr))
        self._mem = lib.llama_get_memory(self.ctx)
        self.kv = KvMirror(n_seq_max, self.n_ctx, self.n_batch)
        views = new_batch(lib, self.n_batch)
        self._batch = views.raw
        self._tok, self._pos, self._out, self._seq = views.tok, views.pos, views.out, views.seq
        self._outputs: set[int] = set()  # batch indexes with logits after the last decode
        self._next_outputs: set[int] = set()
        self.n_decoded = 0  # tokens evaluated so far

    def chat_template(self) -> str | None:
        raw = self._lib.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    # -- the batch ----------------------------------------------------------
    def room(self) -> int:
        return self.kv.capacity - self.kv.n_batch

    def add(self, seq: int, pos: int, tokens: Sequence[int], logits: Logits) -> int:
        """Append ``seq``'s tokens from ``pos`` on; return the first one's batch index."""
        n = len(tokens)
        if n and not (min(tokens) >= 0 and max(tokens) < self.n_vocab):
            raise EngineError("token id outside the vocabulary")
        i = self.kv.n_batch
        self.kv.add(seq, pos, n)
        end = i + n
        self._tok[i:end] = list(tokens)
        self._pos[i:end] = list(range(pos, pos + n))
        seq_ptrs = self._seq
        for j in range(i, end):
            seq_ptrs[j][0] = seq
        if logits == "all":
            self._out[i:end] = [1] * n
            self._next_outputs.update(range(i, end))
        else:
            self._out[i:end] = [0] * n
            if logits == "last":
                self._out[end - 1] = 1
                self._next_outputs.add(end - 1)
        return i

    def add_one(self, seq: int, pos: int, token: int) -> int:
        """One generated token, with logits: the per-step fast path."""
        if not 0 <= token < self.n_vocab:
            raise EngineError("token id outside the vocabulary")
        i = self.kv.n_batch
        self.kv.add(seq, pos, 1)
        self._tok[i] = token
        self._pos[i] = pos
        self._seq[i][0] = seq
        self._out[i] = 1
        self._next_outputs.add(i)
        return i

    def _live(self) -> None:
        if not self.ctx:
            raise EngineError("the engine is closed")

    def decode(self) -> None:
        self._live()
        n = self.kv.n_batch
        if n == 0:
            raise EngineError("empty batch")
        self._batch.n_tokens = n
        rc = int(self._lib.llama_decode(self.ctx, self._batch))
        self._outputs, self._next_outputs = self._next_outputs, set()
        if rc != 0:
            self._outputs.clear()
            self.kv.reset_batch()
            raise EngineError(f"llama.cpp failed to decode a batch of {n} tokens (code {rc})")
        self.kv.decoded()
        self.n_decoded += n

    def _check_output(self, i: int) -> None:
        self._live()
        if i not in self._outputs:
            raise EngineError(f"batch index {i} has no logits")

    def sample(self, sampler: Any, i: int) -> int:
        self._check_output(i)
        return int(self._lib.llama_sampler_sample(sampler, self.ctx, i))

    def logprobs(self, i: int) -> Any:
        """Log-softmax (float64 numpy array) of the logits at batch index ``i``."""
        import numpy as np

        self._check_output(i)
        ptr = self._lib.llama_get_logits_ith(self.ctx, i)
        if not ptr:
            raise EngineError(f"llama.cpp has no logits for batch index {i}")
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + math.log(float(np.exp(logits - top).sum())))

    # -- the KV cache -------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = 0) -> None:
        """Drop ``seq``'s positions ``p0`` and later (all of it, if it cannot be trimmed)."""
        self._live()
        self.kv.rm(seq, p0)
        if not self._lib.llama_memory_seq_rm(self._mem, seq, max(p0, 0), -1):
            self.kv.rm(seq)  # some caches (recurrent) cannot cut a sequence in the middle
            if not self._lib.llama_memory_seq_rm(self._mem, seq, -1, -1):
                raise EngineError(f"llama.cpp could not clear sequence {seq}")

    def seq_cp(self, src: int, dst: int, p1: int) -> None:
        """Share ``src``'s positions ``0 .. p1-1`` with the empty ``dst``."""
        self._live()
        self.kv.cp(src, dst, p1)
        self._lib.llama_memory_seq_cp(self._mem, src, dst, 0, p1)

    def clear(self) -> None:
        self._live()
        self._lib.llama_memory_clear(self._mem, True)
        self.kv.clear()
        self._outputs.clear()
        self._next_outputs.clear()

    # -- samplers -----------------------------------------------------------
    def sampler(self, sampling: SamplingParams, seed: int, gbnf: str | None) -> Any:
        """A sampler chain like Llama's: penalties, grammar, top-k, top-p, temperature."""
        self._live()
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if not chain:
            raise EngineError("llama.cpp could not create a sampler")

        def add(sampler: Any, what: str) -> None:
            if not sampler:
                lib.llama_sampler_free(chain)
                raise EngineError(f"llama.cpp could not create the {what}")
            lib.llama_sampler_chain_add(chain, sampler)

        temp = sampling.temperature
        if sampling.repeat_penalty != 1.0:
            keep = _penalty_prefilter(sampling, gbnf is not None)
            if keep:
                add(lib.llama_sampler_init_top_k(keep), "top-k prefilter")
            add(lib.llama_sampler_init_penalties(self.n_vocab, _PENALTY_LAST_N,
                                                 sampling.repeat_penalty, 0.0, 0.0), "penalty")
        if gbnf is not None:
            add(lib.llama_sampler_init_grammar(self.vocab_ptr, gbnf.encode("utf-8"), b"root"),
                "grammar for the JSON schema")
        if temp == 0.0:
            add(lib.llama_sampler_init_greedy(), "greedy sampler")
            return chain
        if temp > 0.0:
            add(lib.llama_sampler_init_top_k(sampling.top_k), "top-k sampler")
            add(lib.llama_sampler_init_top_p(sampling.top_p, 1), "top-p sampler")
            add(lib.llama_sampler_init_temp(temp), "temperature sampler")
        add(lib.llama_sampler_init_dist(seed), "sampler")
        return chain

    def free_sampler(self, sampler: Any) -> None:
        if sampler and self.model:  # after close() a grammar's vocab is gone: leak instead
            self._lib.llama_sampler_free(sampler)

    def close(self) -> None:
        free_native(self._lib, self)
