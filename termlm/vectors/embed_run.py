"""Records in, vectors out: the loop behind ``termlm embed``.

Records are embedded in batches (one engine call each, many texts per decode).
Where they go is a sink: a collection (resumed by content hash: an unchanged
record is not embedded again), JSONL lines, or a ``.npy`` matrix. A record
that cannot be embedded (unreadable, too long with ``--on-overflow error``) is
reported and counted, and the rest go on. Ctrl-C keeps every batch already
written.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from termlm.engine.embedding import Embedded, Embedder, content_hash, embed_texts
from termlm.errors import TermlmError
from termlm.records.types import Record

if TYPE_CHECKING:
    from termlm.progress import RunProgress

BATCH = 32  # records per engine call


class Sink(Protocol):
    def refuse(self, record: Record) -> str | None:
        """Why this sink cannot hold ``record`` (None: it can); called once per record."""
        ...

    def unchanged(self, record_id: str, digest: str) -> bool:
        """Whether this exact text is already there (it is skipped)."""
        ...

    def write(self, done: list[tuple[Record, str, Embedded]]) -> None:
        """A batch of (record, content hash, embedding), kept for good."""
        ...

    def fail(self, record: Record, message: str) -> None: ...


@dataclass
class EmbedSummary:
    embedded: int = 0
    unchanged: int = 0
    failed: int = 0
    chunked: int = 0  # records split into several pieces
    truncated: int = 0
    tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    first_error: str | None = None

    def line(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{self.embedded} embedded", f"{self.unchanged} unchanged",
                 f"{self.failed} failed"]
        if self.chunked:
            parts.append(f"{self.chunked} in several pieces")
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        return ", ".join(parts) + f" in {self.seconds:.1f}s ({rate:.1f} texts/s)"


def run_embed(embedder: Embedder, records: Iterable[Record], sink: Sink, *,
              on_overflow: str = "chunk", limit: int | None = None,
              progress: RunProgress | None = None, batch_size: int = BATCH) -> EmbedSummary:
    """Embed ``records`` into ``sink``, in input order (a failed record keeps its place)."""
    summary = EmbedSummary()
    started = time.perf_counter()
    info = embedder.info
    model_key = f"{info.name}|{info.pooling}"
    batch: list[_Job] = []
    pending = 0  # jobs in the batch that go to the engine

    def flush() -> None:
        nonlocal pending
        if batch:
            _Batch(embedder, sink, on_overflow, summary, progress).run(batch)
            batch.clear()
            pending = 0

    taken = 0
    try:
        for record in records:
            if limit is not None and taken >= limit:
                break
            taken += 1
            problem = _problem(embedder, record, on_overflow) or sink.refuse(record)
            if problem is not None:
                batch.append(_Job(record, "", problem))
                continue
            assert record.text is not None
            digest = content_hash(info.document_prefix + record.text, model_key)
            if sink.unchanged(record.id, digest):
                summary.unchanged += 1
                if progress is not None:
                    progress.skip()
                continue
            batch.append(_Job(record, digest))
            pending += 1
            if progress is not None:
                progress.submitted()
            if pending >= batch_size:
                flush()
        flush()
    except KeyboardInterrupt:
        summary.interrupted = True  # the batch in flight is dropped; every one before is kept
    finally:
        summary.seconds = time.perf_counter() - started
    return summary


def _problem(embedder: Embedder, record: Record, on_overflow: str) -> str | None:
    """Why ``record`` cannot be embedded, or None."""
    if record.error is not None or record.text is None:
        return record.error or "no text"
    if not record.text.strip():
        return "empty text: nothing to embed"
    if on_overflow == "error":
        info = embedder.info
        tokens = embedder.count_tokens(info.document_prefix + record.text)
        if tokens > info.n_ctx:
            return (f"the text is {tokens} tokens, more than the model's context of "
                    f"{info.n_ctx} (use --on-overflow chunk or truncate)")
    return None


@dataclass
class _Job:
    record: Record
    digest: str
    error: str | None = None
    result: Embedded | None = None


class _Batch:
    """One engine call for a batch's texts, then the sink in input order."""

    def __init__(self, embedder: Embedder, sink: Sink, on_overflow: str,
                 summary: EmbedSummary, progress: RunProgress | None) -> None:
        self.embedder = embedder
        self.sink = sink
        self.mode = "truncate" if on_overflow == "truncate" else "chunk"
        self.summary = summary
        self.progress = progress

    def run(self, jobs: list[_Job]) -> None:
        self._embed([job for job in jobs if job.error is None])
        run: list[tuple[Record, str, Embedded]] = []
        for job in jobs:
            if job.result is not None:
                run.append((job.record, job.digest, job.result))
                continue
            self._write(run)
            run = []
            self._fail(job)
        self._write(run)

    def _embed(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            results = embed_texts(self.embedder, [job.record.text or "" for job in jobs],
                                  on_overflow=self.mode)
        except TermlmError as exc:
            if len(jobs) == 1:
                jobs[0].error = exc.message
                return
            for job in jobs:  # find the text the engine refuses: only it fails
                self._embed([job])
            return
        for job, result in zip(jobs, results, strict=True):
            job.result = result

    def _write(self, done: list[tuple[Record, str, Embedded]]) -> None:
        if not done:
            return
        self.sink.write(done)
        for _, _, result in done:
            self.summary.embedded += 1
            self.summary.tokens += result.tokens
            self.summary.chunked += result.chunks > 1
            self.summary.truncated += result.truncated
            if self.progress is not None:
                self.progress.completed_one(failed=False)
                self.progress.add_tokens(result.tokens)

    def _fail(self, job: _Job) -> None:
        message = job.error or "not embedded"
        self.summary.failed += 1
        self.summary.first_error = self.summary.first_error or message
        self.sink.fail(job.record, message)
        if self.progress is not None:
            self.progress.completed_one(failed=True, in_flight=bool(job.digest))
