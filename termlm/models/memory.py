"""How much memory a model needs at a context size, from its GGUF header alone.

weights (the tensor data, mapped from the file) + KV cache (K and V in f16 for
every layer and context position, llama.cpp's default cache type) + an estimate
of llama.cpp's compute buffer (the logits and activations of one batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from termlm.models.gguf import GGUFHeader

KV_BYTES = 2  # f16 cache entries
_OVERHEAD = 16 * 1024 * 1024  # the output buffer, the graph, the sampler


@dataclass(frozen=True)
class MemoryNeed:
    n_ctx: int
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def fits(self, available: int | None) -> bool | None:
        return None if available is None else self.total <= available

    def to_dict(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "weights": self.weights, "kv_cache": self.kv_cache,
                "compute": self.compute, "total": self.total}


def _key_lengths(header: GGUFHeader) -> tuple[int, int] | None:
    arch = header.architecture
    heads, embd = header.head_count, header.embedding_length
    key = header.metadata.get(f"{arch}.attention.key_length")
    value = header.metadata.get(f"{arch}.attention.value_length")
    if isinstance(key, int) and isinstance(value, int):
        return key, value
    if heads and embd:
        return embd // heads, embd // heads
    return None


def kv_cache_bytes(header: GGUFHeader, n_ctx: int) -> int:
    """K and V for every layer at ``n_ctx`` positions (0 when the header does not say)."""
    layers, kv_heads = header.block_count, header.head_count_kv or header.head_count
    lengths = _key_lengths(header)
    if not layers or not kv_heads or lengths is None:
        return 0
    key, value = lengths
    return layers * n_ctx * kv_heads * (key + value) * KV_BYTES


def compute_bytes(header: GGUFHeader, n_batch: int = 512) -> int:
    """llama.cpp's compute buffer, roughly: one batch's logits and activations (f32).

    The logits of a full batch dominate it (smollm2 at batch 512: 98 MiB measured,
    96 MiB of them logits).
    """
    vocab = header.vocab_size or 0
    embd = header.embedding_length or 0
    return n_batch * (vocab + 4 * embd) * 4 + _OVERHEAD


def weight_bytes(header: GGUFHeader) -> int:
    return max(0, header.file_size - header.data_offset)


def memory_need(header: GGUFHeader, n_ctx: int) -> MemoryNeed:
    return MemoryNeed(n_ctx=n_ctx, weights=weight_bytes(header),
                      kv_cache=kv_cache_bytes(header, n_ctx),
                      compute=compute_bytes(header, min(512, n_ctx)))


def catalog_memory_need(size: int, arch: Any, n_ctx: int) -> MemoryNeed:
    """The same estimate from a catalog entry's download size and ``arch`` numbers, for a
    model not pulled yet (``arch`` is a :class:`~termlm.models.catalog.Arch`)."""
    n_batch = min(512, n_ctx)
    kv = arch.layers * n_ctx * arch.kv_heads * 2 * arch.head_dim * KV_BYTES
    compute = n_batch * (arch.vocab + 4 * arch.embedding) * 4 + _OVERHEAD
    return MemoryNeed(n_ctx=n_ctx, weights=size, kv_cache=kv, compute=compute)


def free_memory_for(n_gpu_layers: int | str) -> tuple[str, int | None]:
    """Where the weights go and how much room there is: ("vram", free) when a GPU build
    offloads, else ("ram", available)."""
    from termlm import sysinfo

    if n_gpu_layers != 0:
        try:
            from termlm.engine.backend import backend_info
            from termlm.engine.llama_common import gpu_offload_supported

            gpus = [d for d in backend_info().gpus if d.memory_total]
            if gpus and gpu_offload_supported():
                return "vram", max(d.memory_free for d in gpus)
        except Exception:  # no llama.cpp here: RAM is what there is
            pass
    return "ram", sysinfo.available_ram()
