"""Bookkeeping for BatchedEngine, in plain Python (no llama_cpp here).

- ``KvMirror`` mirrors what llama.cpp's KV cache holds per sequence, so every
  call is checked in Python before it could reach one of llama.cpp's aborts
  (sequence ids out of range, positions that skip or repeat, a batch larger
  than its capacity, copies into a sequence that is not empty).
- ``PrefixTracker`` picks the prompt prefix shared by consecutive requests,
  evaluated once into a dedicated sequence and copied into each slot, and
  counts the KV cells prefixes hold.
- ``InOrder`` hands results back in request order.
- ``Chat``/``GenJob`` and ``ScoreItem``/``ScoreJob``: a prepared request, and
  its state while it holds a slot; ``prompt_chunks`` and ``score_labels`` fill
  batches for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from termlm.engine.llama_common import StopScanner, Utf8Stream
from termlm.engine.types import Completion, FinishReason, SamplingParams, Timings, Usage
from termlm.errors import EngineError, TermlmError

if TYPE_CHECKING:
    from termlm.engine.llama_common import NativeContext

T = TypeVar("T")

MIN_PREFIX = 16  # shorter shared prefixes are not worth a separate evaluation


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def record_seed(seed: int, index: int) -> int:
    """A per-request sampling seed derived from the engine seed (request 0 keeps it)."""
    return (seed ^ (index * 0x9E3779B97F4A7C15)) & 0x7FFFFFFF


class KvMirror:
    """The next position of every sequence, and the batch being filled."""

    def __init__(self, n_seq_max: int, n_ctx: int, capacity: int) -> None:
        self.n_seq_max = n_seq_max
        self.n_ctx = n_ctx
        self.capacity = capacity
        self.next_pos = [0] * n_seq_max
        self.n_batch = 0  # tokens in the batch being filled
        self._pending: dict[int, int] = {}  # seq -> next position once the batch is decoded

    def check_seq(self, seq: int) -> None:
        if not 0 <= seq < self.n_seq_max:
            raise EngineError(f"sequence id {seq} is outside 0..{self.n_seq_max - 1}")

    def add(self, seq: int, pos: int, n: int) -> None:
        """Check that ``n`` tokens of ``seq`` starting at ``pos`` may join the batch."""
        self.check_seq(seq)
        if n <= 0:
            raise EngineError("empty run of tokens for the batch")
        if self.n_batch + n > self.capacity:
            raise EngineError(f"batch of {self.n_batch + n} tokens exceeds {self.capacity}")
        if seq in self._pending:
            raise EngineError(f"sequence {seq} appears twice in one batch")
        if pos != self.next_pos[seq]:
            raise EngineError(f"sequence {seq} continues at {self.next_pos[seq]}, not {pos}")
        if pos + n > self.n_ctx:
            raise EngineError(f"sequence {seq} would pass the context of {self.n_ctx}")
        self.n_batch += n
        self._pending[seq] = pos + n

    def decoded(self) -> None:
        """The batch went through: its tokens are in the cache now."""
        for seq, pos in self._pending.items():
            self.next_pos[seq] = pos
        self.reset_batch()

    def reset_batch(self) -> None:
        self.n_batch = 0
        self._pending.clear()

    def rm(self, seq: int, p0: int = 0) -> None:
        """``seq`` loses positions ``p0`` and later (all of them for ``p0 <= 0``)."""
        self.check_seq(seq)
        if seq in self._pending:
            raise EngineError(f"sequence {seq} changed while in a batch")
        self.next_pos[seq] = min(self.next_pos[seq], max(p0, 0))

    def cp(self, src: int, dst: int, p1: int) -> None:
        """``dst`` (empty) gets positions ``0 .. p1-1`` of ``src``."""
        self.check_seq(src)
        self.check_seq(dst)
        if src == dst or self.next_pos[dst] != 0:
            raise EngineError(f"cannot copy sequence {src} into non-empty sequence {dst}")
        if not 0 < p1 <= self.next_pos[src]:
            raise EngineError(f"sequence {src} has no positions 0..{p1 - 1} to copy")
        self.next_pos[dst] = p1

    def clear(self) -> None:
        self.next_pos = [0] * self.n_seq_max
        self.reset_batch()


@dataclass(eq=False)
class Prefix:
    """Tokens evaluated in the prefix sequence, and the slots that copied them."""

    tokens: list[int]
    charge: int  # KV cells counted for it (its longest length while anyone uses it)
    users: int = 0


@dataclass(frozen=True)
class PrefixPlan:
    """How a request starts: copy ``length`` tokens of the prefix sequence, or nothing.

    ``truncate`` cuts the prefix sequence to ``length`` first; ``new`` evaluates
    the request's first ``length`` tokens as the new prefix first.
    """

    kind: Literal["none", "use", "truncate", "new"]
    length: int = 0


NO_PREFIX = PrefixPlan("none")


class PrefixTracker:
    """Chooses the shared prefix and counts the cells prefixes hold."""

    def __init__(self, min_len: int = MIN_PREFIX) -> None:
        self.min_len = min_len
        self.current: Prefix | None = None
        self._retired: list[Prefix] = []  # replaced, but still copied into running slots

    def plan(self, tokens: Sequence[int], upcoming: Sequence[int] | None) -> PrefixPlan:
        """What to do for ``tokens``; ``upcoming`` is the next request's, if known."""
        cur = self.current
        if cur is not None:
            shared = min(common_prefix(cur.tokens, tokens), len(tokens) - 1)
            if shared == len(cur.tokens):
                return PrefixPlan("use", shared)
            if shared >= self.min_len:
                if upcoming is not None and common_prefix(upcoming, cur.tokens) > shared:
                    return PrefixPlan("use", shared)  # an outlier: copy part, keep the rest
                return PrefixPlan("truncate", shared)
        if upcoming is not None:
            shared = min(common_prefix(tokens, upcoming), len(tokens) - 1, len(upcoming) - 1)
            if shared >= self.min_len:
                return PrefixPlan("new", shared)
        return NO_PREFIX

    def extra_cells(self, plan: PrefixPlan) -> int:
        """Change in the cells prefixes hold if ``plan`` is carried out."""
        cur = self.current
        freed = cur.charge if cur is not None and cur.users == 0 else 0
        if plan.kind == "new":
            return plan.length - freed
        if plan.kind == "truncate" and cur is not None and cur.users == 0:
            return plan.length - cur.charge
        return 0

    def commit(self, plan: PrefixPlan, tokens: Sequence[int]) -> Prefix | None:
        """Record ``plan`` as carried out for a request with ``tokens``; return its prefix."""
        if plan.kind == "none":
            return None
        if plan.kind == "new":
            self.retire()
            self.current = Prefix(list(tokens[: plan.length]), plan.length)
        cur = self.current
        if cur is None:  # pragma: no cover - plan() only offers use/truncate with a prefix
            raise EngineError("no prefix to use")
        if plan.kind == "truncate":
            del cur.tokens[plan.length :]
            if cur.users == 0:
                cur.charge = plan.length
        cur.users += 1
        return cur

    def release(self, prefix: Prefix | None) -> None:
        """A slot that copied ``prefix`` is done with it."""
        if prefix is None:
            return
        prefix.users -= 1
        self._retired = [p for p in self._retired if p.users > 0]

    def retire(self) -> None:
        """The prefix sequence is emptied; slots that copied it keep their cells."""
        if self.current is not None and self.current.users > 0:
            self._retired.append(self.current)
        self.current = None

    def held(self) -> int:
        """KV cells held by the current prefix and by retired ones still in use."""
        cur = self.current.charge if self.current is not None else 0
        return cur + sum(p.charge for p in self._retired)


class InOrder(Generic[T]):
    """Collects results by request index and releases them in order."""

    def __init__(self) -> None:
        self.next = 0
        self._done: dict[int, T] = {}

    def put(self, index: int, value: T) -> None:
        self._done[index] = value

    def pop_ready(self) -> list[T]:
        ready = []
        while self.next in self._done:
            ready.append(self._done.pop(self.next))
            self.next += 1
        return ready

    def pop_all(self) -> list[tuple[int, T]]:
        """Everything collected, in any order, with its index (order is then not kept)."""
        out = list(self._done.items())
        self._done.clear()
        return out

    def __len__(self) -> int:
        return len(self._done)


@dataclass(eq=False)
class Failed:
    """A request that failed before it got a slot."""

    index: int
    error: TermlmError


@dataclass(eq=False)
class Chat:
    """A chat request, formatted and tokenized."""

    index: int
    tokens: list[int]
    stops: list[str]
    sampling: SamplingParams
    gbnf: str | None
    seed: int


@dataclass(eq=False)
class GenJob:
    """A chat request holding a slot: its prompt still to decode, then its reply."""

    chat: Chat
    seq: int
    sampler: Any
    budget: int  # tokens it may generate
    reserve: int  # KV cells counted for it
    prefix: Prefix | None
    pending: list[int]  # prompt tokens not decoded yet
    n_past: int  # tokens of its sequence in the KV cache (its next position)
    started: float
    last: int = -1  # the sampled token to decode next; -1 while the prompt is pending
    generated: list[int] = field(default_factory=list)  # sampled tokens that were kept
    n_gen: int = 0
    first_at: float | None = None
    finish: FinishReason | None = None
    stopped_by_text: bool = False
    parts: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # pieces not streamed yet
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    scanner: StopScanner = field(default_factory=lambda: StopScanner(()))

    def accept(self, token: int, vocab: Any, now: float) -> bool:
        """Take a sampled token (``vocab``: is_eog, piece); True when the reply is done."""
        if self.first_at is None:
            self.first_at = now
        if vocab.is_eog(token):
            self.finish = "stop"
            return True
        self.n_gen += 1
        piece, stopped = self.scanner.feed(self.utf8.feed(vocab.piece(token)))
        if piece:
            self.parts.append(piece)
            self.fresh.append(piece)
        if stopped:
            self.finish, self.stopped_by_text = "stop", True
            return True
        if self.n_gen >= self.budget:
            self.finish = "length"
            return True
        self.last = token
        self.generated.append(token)
        return False

    def completion(self, ended: float) -> Completion:
        """The finished reply, with what the stop scanner still held."""
        if not self.stopped_by_text:
            tail = self.scanner.feed(self.utf8.flush())[0] + self.scanner.flush()
            if tail:
                self.parts.append(tail)
                self.fresh.append(tail)
        first_at = self.first_at or ended
        gen_s = ended - first_at
        rate = (self.n_gen - 1) / gen_s if self.n_gen > 1 and gen_s > 0 else 0.0
        return Completion(
            text="".join(self.parts),
            finish_reason="stop" if self.finish == "stop" else "length",
            usage=Usage(prompt_tokens=len(self.chat.tokens), completion_tokens=self.n_gen),
            timings=Timings(ttft_s=first_at - self.started, total_s=ended - self.started,
                            completion_tokens_per_s=rate),
        )


@dataclass(eq=False)
class ScoreItem:
    """A score request, tokenized: the prompt and each continuation."""

    index: int
    tokens: list[int]
    conts: list[list[int]]
    texts: tuple[str, ...]

    @property
    def label_cells(self) -> int:
        """Cells the longest continuation needs beyond the prompt."""
        return max((len(c) - 1 for c in self.conts), default=0)


@dataclass(eq=False)
class ScoreJob:
    item: ScoreItem
    seq: int
    reserve: int
    prefix: Prefix | None
    pending: list[int]
    n_past: int
    totals: list[float] = field(default_factory=list)


@dataclass(eq=False)
class LabelRun:
    """One continuation being decoded in a sibling sequence of its record."""

    job: ScoreJob
    label: int
    seq: int
    done: int = 0  # tokens of cont[:-1] decoded so far

    @property
    def tokens(self) -> list[int]:
        return self.job.item.conts[self.label][:-1]


def prompt_chunks(native: NativeContext, jobs: Sequence[GenJob | ScoreJob]
                  ) -> list[tuple[Any, int]]:
    """Add pending prompt tokens to the batch, in job order, as far as it has room.

    Returns (job, batch index) for each job whose prompt ends in this batch: the
    index of its last prompt token, the one with logits.
    """
    outputs: list[tuple[Any, int]] = []
    for job in jobs:
        room = native.room()
        if not job.pending or room <= 0:
            continue
        chunk, job.pending = job.pending[:room], job.pending[room:]
        at = native.add(job.seq, job.n_past, chunk, "none" if job.pending else "last")
        job.n_past += len(chunk)
        if not job.pending:
            outputs.append((job, at + len(chunk) - 1))
    return outputs


def score_labels(native: NativeContext, group: Sequence[ScoreJob], siblings: list[int],
                 max_outputs: int) -> None:
    """Add each continuation's log-probability (after its first token) to its job's totals.

    A continuation is decoded in a sibling sequence that shares its record's
    prompt (``seq_cp``), with logits at every token; as many continuations as
    the free siblings, the batch and the group's reserved cells allow go into
    one batch (at most ``max_outputs`` tokens, each a row of logits).
    """
    waiting = deque((job, j) for job in group for j, c in enumerate(job.item.conts)
                    if len(c) > 1)
    running: list[LabelRun] = []
    cells = sum(job.item.label_cells for job in group)  # what the group reserved for labels
    while waiting or running:
        held = sum(len(run.tokens) for run in running)
        while (waiting and siblings
               and held + len(waiting[0][0].item.conts[waiting[0][1]]) - 1 <= cells):
            job, j = waiting.popleft()
            run = LabelRun(job, j, siblings.pop())
            native.seq_cp(job.seq, run.seq, len(job.item.tokens))
            running.append(run)
            held += len(run.tokens)
        outputs: list[tuple[LabelRun, int, int, int]] = []
        budget = max(1, min(native.room(), max_outputs))
        for run in running:
            n = min(budget, len(run.tokens) - run.done)
            if n <= 0:
                break
            at = native.add(run.seq, len(run.job.item.tokens) + run.done,
                            run.tokens[run.done : run.done + n], "all")
            outputs.append((run, at, run.done, n))
            run.done += n
            budget -= n
        native.decode()
        for run, at, done, n in outputs:
            cont = run.job.item.conts[run.label]
            for k in range(n):
                run.job.totals[run.label] += float(native.logprobs(at + k)[cont[done + k + 1]])
            if run.done == len(run.tokens):
                native.seq_rm(run.seq)
                siblings.append(run.seq)
        running = [run for run in running if run.done < len(run.tokens)]
