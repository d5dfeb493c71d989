"""In-process embeddings on llama.cpp's low-level API.

- The pooling is the one the GGUF declares (``{arch}.pooling_type``: mean, CLS or
  last), or ``pooling=`` when it declares none; a generative model that declares
  none is refused unless a pooling is given.
- Many texts go into one decode, one sequence each, and each sequence's pooled
  vector is read back (``llama_get_embeddings_seq``), then L2-normalised.
- The physical batch (``n_ubatch``) is the whole context, so any piece that fits
  the context fits one batch: llama.cpp refuses an input longer than
  ``n_ubatch`` instead of splitting it.
- Text is tokenized with the model's own special tokens added (``[CLS]``,
  ``[SEP]``) and never parsed for special tokens: data stays data.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from termlm.engine.embedding import EmbedInfo, check_pooling, normalise
from termlm.engine.llama_common import (
    Vocab,
    bindings,
    free_native,
    new_batch,
    resolve_gpu_layers,
    route_llama_logs,
)
from termlm.errors import EngineError, UsageError
from termlm.sysinfo import default_threads

if TYPE_CHECKING:
    from termlm.engine.embedding import Vector

MAX_SEQUENCES = 64  # texts in one decode, at most
MAX_CONTEXT = 8192  # tokens per piece, at most (the KV cache a long-context model needs)
_POOLING_NAMES = {0: None, 1: "mean", 2: "cls", 3: "last", 4: "rank"}


class LlamaEmbedder:
    """The Embedder protocol on a GGUF file."""

    def __init__(self, path: str, *, name: str, pooling: str | None = None,
                 threads: int | None = None, n_gpu_layers: int | str = "auto",
                 cpu_extra_buffers: str = "auto", flash_attn: str = "auto",
                 max_tokens: int | None = None,
                 query_prefix: str = "", document_prefix: str = "") -> None:
        from termlm.engine.backend import extra_buffers

        started = time.perf_counter()
        check_pooling(pooling)
        lib = self._lib = bindings()
        route_llama_logs(lib)
        self.model: Any = None
        self.ctx: Any = None
        self._batch: Any = None
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = resolve_gpu_layers(n_gpu_layers)
        mparams.use_extra_bufts = extra_buffers(cpu_extra_buffers).use
        self.model = lib.llama_model_load_from_file(path.encode("utf-8"), mparams)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {path}")
        try:
            declared = self._declared_pooling()
            chosen = pooling or declared
            if chosen is None:
                raise UsageError(
                    f"{name} declares no pooling: it is a generative model, not an embedding "
                    "model", hint="pick an embedding model (termlm models list --task embed), "
                    "or give --pooling mean or --pooling last to pool this one")
            if chosen == "rank":
                raise UsageError(f"{name} is a reranker (rank pooling), not an embedding model")
            # the tokens one piece may have: what the model was trained on (a catalog entry
            # may say less than the GGUF's positions: MiniLM has 512, trained on 256)
            n_ctx = min(int(lib.llama_model_n_ctx_train(self.model)) or 512, MAX_CONTEXT,
                        max_tokens or MAX_CONTEXT)
            self._open_context(n_ctx, chosen, threads, flash_attn)
        except BaseException:
            self.close()
            raise
        self._vocab = Vocab(lib, lib.llama_model_get_vocab(self.model))
        dims = int(lib.llama_model_n_embd(self.model))
        self._info = EmbedInfo(name=name, path=path, dims=dims, n_ctx=self.n_ctx,
                               pooling=chosen, query_prefix=query_prefix,
                               document_prefix=document_prefix)
        self.load_s = time.perf_counter() - started
        self.tokens_embedded = 0

    def _declared_pooling(self) -> str | None:
        lib = self._lib
        raw = ctypes.create_string_buffer(64)
        arch = self._meta("general.architecture")
        if arch is None:
            return None
        n = lib.llama_model_meta_val_str(self.model, f"{arch}.pooling_type".encode(), raw,
                                         len(raw))
        if n < 0:
            return None
        try:
            return _POOLING_NAMES.get(int(raw.value.decode()))
        except ValueError:
            return None

    def _meta(self, key: str) -> str | None:
        raw = ctypes.create_string_buffer(256)
        n = self._lib.llama_model_meta_val_str(self.model, key.encode(), raw, len(raw))
        return raw.value.decode("utf-8", "replace") if n >= 0 else None

    def _open_context(self, n_ctx: int, pooling: str, threads: int | None,
                      flash_attn: str) -> None:
        lib = self._lib
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_ctx  # every piece fits one physical batch
        cparams.n_seq_max = min(MAX_SEQUENCES, int(lib.llama_max_parallel_sequences()))
        cparams.kv_unified = True
        cparams.embeddings = True
        cparams.pooling_type = {"mean": lib.LLAMA_POOLING_TYPE_MEAN,
                                "cls": lib.LLAMA_POOLING_TYPE_CLS,
                                "last": lib.LLAMA_POOLING_TYPE_LAST}[pooling]
        cparams.n_threads = cparams.n_threads_batch = threads or default_threads()
        cparams.flash_attn_type = {"on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                   "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                                   }.get(flash_attn, lib.LLAMA_FLASH_ATTN_TYPE_AUTO)
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create an embedding context of {n_ctx} "
                              "tokens")
        self.n_ctx = int(lib.llama_n_ctx(self.ctx))
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        self.n_seq = int(lib.llama_n_seq_max(self.ctx))
        self._mem = lib.llama_get_memory(self.ctx)
        views = new_batch(lib, self.n_batch)
        self._batch = views.raw
        self._tok, self._pos, self._seq = views.tok, views.pos, views.seq
        views.out[:] = [1] * self.n_batch  # embeddings want every token as an output

    # -- the Embedder protocol ------------------------------------------------
    @property
    def info(self) -> EmbedInfo:
        return self._info

    def count_tokens(self, text: str) -> int:
        return len(self._tokens(text))

    def _tokens(self, text: str) -> list[int]:
        return self._vocab.tokenize(text.encode("utf-8"), add_special=True, special=False)

    def embed_pieces(self, pieces: Sequence[str]) -> list[Vector]:
        if not self.ctx:
            raise EngineError("the embedding engine is closed")
        out: list[Vector] = []
        group: list[list[int]] = []
        used = 0
        for piece in pieces:
            tokens = self._tokens(piece)
            if not tokens:
                raise EngineError("a text gave no tokens to embed")
            if len(tokens) > self.n_batch:
                raise EngineError(f"a piece of {len(tokens)} tokens is over the context of "
                                  f"{self.n_batch}")
            if group and (used + len(tokens) > self.n_batch or len(group) >= self.n_seq):
                out.extend(self._decode(group))
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
        if group:
            out.extend(self._decode(group))
        return out

    def _decode(self, group: list[list[int]]) -> list[Vector]:
        import numpy as np

        lib = self._lib
        if self._mem:
            lib.llama_memory_clear(self._mem, True)
        at = 0
        for seq, tokens in enumerate(group):
            n = len(tokens)
            self._tok[at:at + n] = list[ctypes.c_int32 | int](tokens)
            self._pos[at:at + n] = list[ctypes.c_int32 | int](range(n))
            for j in range(at, at + n):
                self._seq[j][0] = seq
            at += n
        self._batch.n_tokens = at
        rc = int(lib.llama_decode(self.ctx, self._batch))
        if rc != 0:
            raise EngineError(f"llama.cpp failed to embed a batch of {at} tokens (code {rc})")
        self.tokens_embedded += at
        dims = self._info.dims
        vectors: list[Vector] = []
        for seq in range(len(group)):
            ptr = lib.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:
                raise EngineError(f"llama.cpp returned no embedding for sequence {seq}")
            raw = np.ctypeslib.as_array(ptr, shape=(dims,)).astype(np.float32)
            vectors.append(normalise(raw))
        return vectors

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        vocab = getattr(self, "_vocab", None)
        if vocab is not None:
            vocab.close()
        free_native(lib, self)
