"""BatchedEngine: many requests decoded together in one llama.cpp context.

llama-cpp-python's ``Llama`` decodes one sequence at a time. This engine uses
the low-level API instead: ``parallel`` sequence slots share one unified KV
cache, and every decode step puts one token per generating slot, plus prompt
chunks of newly admitted requests, into a single ``llama_batch`` (continuous
batching: a finished slot takes the next request at once). A prompt prefix
shared by consecutive requests (system prompt, instructions, template head) is
evaluated once into a dedicated sequence and copied into each slot.
Each slot samples with its own native sampler chain, straight from the
context's logits. Scoring puts a record's prompt in one sequence and each
label in a sibling sequence, all label tokens decoded in one batch.

Numerics: a request alone (``stream``/``complete``, or ``parallel`` 1) is
evaluated exactly as LlamaEngine evaluates it, so greedy output is identical.
In a batch, llama.cpp's CPU kernels round differently depending on where a
sequence's cells sit in the shared KV cache and what shares its micro-batch
(the logits move by up to ~1 on small models, flash attention or not), so a
request's output can differ from its output alone wherever two tokens were
nearly tied. Runs repeat exactly for the same requests, settings and
``parallel``: scheduling is deterministic.

llama.cpp aborts the process on misuse, so every call is checked first in
Python (``batch_sched.KvMirror``); a failed check raises EngineError.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

from termlm.engine.backend import extra_buffers
from termlm.engine.batch_sched import (
    NO_PREFIX,
    Chat,
    Failed,
    GenJob,
    InOrder,
    Prefix,
    PrefixPlan,
    PrefixTracker,
    ScoreItem,
    ScoreJob,
    common_prefix,
    prompt_chunks,
    record_seed,
    score_labels,
)
from termlm.engine.llama_common import (
    NativeContext,
    PromptFormat,
    StopScanner,
    Vocab,
    bindings,
    json_schema_gbnf,
    resolve_gpu_layers,
    route_llama_logs,
)
from termlm.engine.types import (
    ChatRequest,
    Completion,
    Delta,
    Message,
    ModelInfo,
    Score,
    ScoreRequest,
    StreamEvent,
    TurnFormat,
    collect,
)
from termlm.errors import ContextOverflow, EngineError, TermlmError

_SIBLINGS = 16  # extra sequences for scoring several continuations of a record at once
_LABEL_OUTPUTS = 64  # continuation tokens per scoring batch (each gets a row of logits)

Pending = Chat | Failed
T = TypeVar("T")
_END: Any = object()  # the end of an iterator, for next(it, _END)


def _pull(items: Iterator[T | None], ahead: deque[T], size: int) -> tuple[bool, bool]:
    """Read ``items`` into ``ahead`` until it holds ``size``; return (exhausted, waiting):
    whether ``items`` ended, or gave None (nothing to send yet)."""
    while len(ahead) < size:
        item = next(items, _END)
        if item is _END:
            return True, False
        if item is None:
            return False, True
        ahead.append(item)
    return False, False


def _or_failed(index: int, prepare: Callable[[], T]) -> T | Failed:
    """``prepare()``, or the request's failure as a result of its own."""
    try:
        return prepare()
    except TermlmError as exc:
        return Failed(index, exc)
    except Exception as exc:  # a chat template that rejects these messages
        return Failed(index, EngineError(f"cannot format the prompt: {exc}"))


class BatchedEngine:
    """The Engine and BatchingEngine protocols on llama.cpp's multi-sequence API."""

    def __init__(
        self,
        path: str,
        *,
        name: str,
        n_ctx: int,
        n_ctx_train: int,
        parallel: int,
        threads: int | None = None,
        n_gpu_layers: int | str = "auto",
        seed: int | None = None,
        turn_format: TurnFormat | None = None,
        notify: Any = None,
        flash_attn: str = "auto",
        cpu_extra_buffers: str = "auto",
    ) -> None:
        started = time.perf_counter()
        if parallel < 1:
            raise EngineError(f"parallel must be at least 1, not {parallel}")
        llama_cpp = bindings()

        route_llama_logs(llama_cpp)
        self.parallel = parallel
        self._prefix_seq = parallel  # slots are 0 .. parallel-1
        n_siblings = max(1, min(_SIBLINGS, int(llama_cpp.llama_max_parallel_sequences())
                                - parallel - 1))
        self._siblings = list(range(parallel + n_siblings, parallel, -1))
        self._native = NativeContext(
            llama_cpp, path, n_ctx=n_ctx, n_seq_max=parallel + 1 + n_siblings,
            threads=threads, n_gpu_layers=resolve_gpu_layers(n_gpu_layers),
            flash_attn=flash_attn, extra_buffers=extra_buffers(cpu_extra_buffers).use)
        if parallel > self._native.n_batch:
            self._native.close()
            raise EngineError(f"parallel {parallel} is more than the batch of "
                              f"{self._native.n_batch} tokens")
        self._vocab = Vocab(llama_cpp, self._native.vocab_ptr)
        self._prompts = PromptFormat(self._vocab, self._native.chat_template(), turn_format,
                                     name=name, notify=notify)
        self._info = ModelInfo(name=name, path=path, n_ctx=self._native.n_ctx,
                               n_ctx_train=n_ctx_train, chat_format=self._prompts.chat_format)
        self._seed = seed
        self._prefixes = self._new_prefixes()
        self._reserved = 0  # KV cells counted for requests holding slots
        self._kept: list[int] = []  # what slot 0 still holds after stream(), for reuse
        self._busy = False
        self._load_s = time.perf_counter() - started

    # -- Engine protocol ----------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def load_s(self) -> float:
        return self._load_s

    def close(self) -> None:
        native: NativeContext | None = getattr(self, "_native", None)
        if native is not None:  # later calls raise EngineError: closed
            self._vocab.close()
            native.close()

    def count_tokens(self, text: str) -> int:
        return self._prompts.count_tokens(text)

    @property
    def tokens_evaluated(self) -> int:
        """Tokens decoded so far: prompts after any reused prefix, and generated ones."""
        return int(self._native.n_decoded)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._prompts.prompt_tokens(messages))

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """One request in slot 0, reusing what slot 0 kept from the previous call."""
        chat = self._prepare(0, request, derive_seed=False)  # errors raise here, as LlamaEngine
        return self._stream(chat)

    def complete(self, request: ChatRequest) -> Completion:
        return collect(self.stream(request))

    def score(self, request: ScoreRequest) -> list[Score]:
        (result,) = list(self.score_many([request]))
        if isinstance(result, Exception):
            raise result
        return result

    # -- BatchingEngine protocol --------------------------------------------
    def complete_many(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[Completion | Exception]:
        for _index, result in self._results(requests, ordered=True):
            yield result

    def complete_each(self, requests: Iterable[ChatRequest | None]
                      ) -> Iterator[tuple[int, Completion | Exception]]:
        return self._results(requests, ordered=False)

    def _results(self, requests: Iterable[ChatRequest | None], *, ordered: bool
                 ) -> Iterator[tuple[int, Completion | Exception]]:
        # one slot: run them as stream() does, each reusing what the last one left
        run = self._generate(self._items(requests), keep=self.parallel == 1, ordered=ordered)
        try:
            for event in run:
                if not isinstance(event, Delta):
                    yield event
        finally:
            run.close()

    def score_many(self, requests: Iterable[ScoreRequest | None]
                   ) -> Iterator[list[Score] | Exception]:
        return self._score(self._score_items(requests))

    # -- preparing requests ---------------------------------------------------
    def _prepare(self, index: int, request: ChatRequest, *, derive_seed: bool) -> Chat:
        prompt, stops = self._prompts.format(request.messages)
        tokens = self._prompts.tokenize_prompt(prompt)
        n_ctx = self._info.n_ctx
        if len(tokens) >= n_ctx:
            raise ContextOverflow(len(tokens), n_ctx)
        gbnf = json_schema_gbnf(request.json_schema) if request.json_schema else None
        seed = request.sampling.seed
        if seed is None and self._seed is not None:
            seed = record_seed(self._seed, index) if derive_seed else self._seed
        if seed is None:
            seed = secrets.randbits(31)
        return Chat(index, tokens, list(request.sampling.stop) + stops, request.sampling, gbnf,
                    seed)

    def _items(self, requests: Iterable[ChatRequest | None]) -> Iterator[Pending | None]:
        """Each request prepared (or failed), numbered; None passes through (wait)."""
        index = 0
        for request in requests:
            if request is None:
                yield None
                continue
            yield self._prepare_or_fail(index, request)
            index += 1

    def _prepare_or_fail(self, index: int, request: ChatRequest) -> Pending:
        return _or_failed(index, lambda: self._prepare(index, request, derive_seed=True))

    def _score_items(self, requests: Iterable[ScoreRequest | None]
                     ) -> Iterator[ScoreItem | Failed | None]:
        """Each score request prepared (or failed), numbered; None passes through (wait)."""
        index = 0
        for request in requests:
            if request is None:
                yield None
                continue
            yield self._prepare_score(index, request)
            index += 1

    def _prepare_score(self, index: int, request: ScoreRequest) -> ScoreItem | Failed:
        def prepare() -> ScoreItem:
            tokens, conts = self._prompts.score_tokens(request, self._info.n_ctx)
            return ScoreItem(index, tokens, conts, request.continuations)

        return _or_failed(index, prepare)

    # -- slots, prefix and cells ------------------------------------------------
    def _enter(self) -> None:
        if self._busy:
            raise EngineError("the engine is busy with another batch; finish or close it first")
        if not self._native.ctx:
            raise EngineError("the engine is closed")
        self._busy = True

    def _leave(self, failed: bool) -> None:
        if failed and self._native.ctx:  # the cache may not be what we think: start over
            self._native.clear()
            self._siblings = list(range(self._native.kv.n_seq_max - 1, self.parallel, -1))
            self._prefixes = self._new_prefixes()
            self._reserved = 0
            self._kept = []
        self._busy = False

    def _new_prefixes(self) -> PrefixTracker:
        return PrefixTracker() if self._native.partial_copies else PrefixTracker(min_len=1 << 30)

    def _drop_kept(self) -> None:
        if self._native.kv.next_pos[0]:
            self._native.seq_rm(0)
        self._kept = []

    def _fits(self, cells: int) -> bool:
        return self._reserved + self._prefixes.held() + cells <= self._info.n_ctx

    def _plan(self, tokens: list[int], upcoming: list[int] | None, extra: int, *,
              busy: bool, keep: bool = False) -> PrefixPlan | None:
        """How to start a request needing ``extra`` cells past its prompt; None: wait."""
        plan = NO_PREFIX if keep else self._prefixes.plan(tokens, upcoming)
        if self._fits(len(tokens) - plan.length + extra + self._prefixes.extra_cells(plan)):
            return plan
        if self._fits(len(tokens) + extra):
            return NO_PREFIX
        if busy:
            return None
        self._native.seq_rm(self._prefix_seq)  # idle and still no room: drop the prefix
        self._prefixes.retire()
        return NO_PREFIX

    def _start(self, seq: int, tokens: list[int], plan: PrefixPlan) -> Prefix | None:
        """Give the empty slot ``seq`` the first ``plan.length`` tokens via the prefix."""
        native = self._native
        if plan.kind == "new":
            native.seq_rm(self._prefix_seq)
            for at in range(0, plan.length, native.n_batch):
                chunk = tokens[at : min(plan.length, at + native.n_batch)]
                native.add(self._prefix_seq, at, chunk, "none")
                native.decode()
        elif plan.kind == "truncate":
            native.seq_rm(self._prefix_seq, plan.length)
        prefix = self._prefixes.commit(plan, tokens)
        if plan.length:
            native.seq_cp(self._prefix_seq, seq, plan.length)
        return prefix

    def _release(self, seq: int, prefix: Prefix | None, reserve: int, free: list[int]) -> None:
        self._native.seq_rm(seq)
        self._prefixes.release(prefix)
        self._reserved -= reserve
        free.append(seq)

    # -- generation -------------------------------------------------------------
    def _stream(self, chat: Chat) -> Iterator[StreamEvent]:
        run = self._generate(iter([chat]), keep=True)
        try:
            for event in run:
                if isinstance(event, Delta):
                    yield event
                    continue
                result = event[1]
                if isinstance(result, Exception):  # pragma: no cover - prepared already
                    raise result
                yield result
        finally:
            run.close()

    def _generate(self, items: Iterator[Pending | None], *, keep: bool, ordered: bool = True
                  ) -> Generator[Delta | tuple[int, Completion | Exception], None, None]:
        """Run chat requests through the slots; (index, result) pairs.

        ``ordered``: results in request order; otherwise as they finish. ``keep``
        (stream, and everything at parallel 1): requests run one by one in slot 0,
        which reuses and then keeps its tokens, as Llama does; Deltas are yielded as
        text arrives. A None from ``items`` means the caller has nothing to send
        yet: no more is pulled until the next decode step (or result), so waiting
        for input never holds up the requests in flight.
        """
        self._enter()
        native = self._native
        active: list[GenJob] = []
        free = list(range(self.parallel - 1, -1, -1))
        order: InOrder[Completion | Exception] = InOrder()
        ahead: deque[Chat | Failed] = deque()
        window = 4 * self.parallel  # how far admission may run ahead of the oldest result
        exhausted = waiting = failed = False

        def ready() -> list[tuple[int, Completion | Exception]]:
            nonlocal waiting
            first = order.next
            out = list(enumerate(order.pop_ready(), first)) if ordered else order.pop_all()
            waiting = waiting and not out
            return out

        try:
            if not keep:
                self._drop_kept()
            while True:
                if not exhausted and not waiting:
                    exhausted, waiting = _pull(items, ahead, self.parallel + 2)
                while ahead and free and (not ordered or ahead[0].index < order.next + window):
                    head = ahead[0]
                    if isinstance(head, Failed):
                        order.put(head.index, head.error)
                        ahead.popleft()
                        continue
                    upcoming = next((a.tokens for a in islice(ahead, 1, None)
                                     if isinstance(a, Chat)), None)
                    budget = min(head.sampling.max_tokens, self._info.n_ctx - len(head.tokens))
                    plan = self._plan(head.tokens, upcoming, budget, busy=bool(active), keep=keep)
                    if plan is None:
                        break
                    ahead.popleft()
                    try:  # the one per-request failure here: a grammar llama.cpp rejects
                        sampler = native.sampler(head.sampling, head.seed, head.gbnf)
                    except EngineError as exc:
                        order.put(head.index, exc)
                        continue
                    try:
                        active.append(self._admit(head, plan, budget, sampler, free, keep))
                    except BaseException:
                        native.free_sampler(sampler)
                        raise
                yield from ready()
                if not active:
                    if exhausted and not ahead:
                        return
                    if waiting and not ahead:
                        raise EngineError("internal: the requests wait for a result, but none "
                                          "is in flight")
                    if ahead and free and (not ordered or ahead[0].index < order.next + window):
                        raise EngineError("internal: a request could not be scheduled")
                    continue
                finished = self._step(active)
                waiting = False  # ask for more again after every step
                for job in finished:
                    active.remove(job)
                    order.put(job.chat.index, self._finish(job, free, keep))
                if keep:
                    for job in [*active, *finished]:
                        for piece in job.fresh:
                            yield Delta(piece)
                        job.fresh.clear()
                yield from ready()
        except GeneratorExit:  # the consumer stopped early: let the slots go in order
            raise
        except BaseException:
            failed = True
            raise
        finally:
            for job in active:
                native.free_sampler(job.sampler)
                job.sampler = None
            if not failed:
                try:
                    for job in active:
                        self._let_go(job, free, keep)
                except TermlmError:
                    failed = True
            self._leave(failed)

    def _admit(self, chat: Chat, plan: PrefixPlan, budget: int, sampler: Any, free: list[int],
               keep: bool) -> GenJob:
        tokens = chat.tokens
        if keep:  # reuse what slot 0 holds, as Llama.generate does
            seq = 0
            n_past = common_prefix(self._kept, tokens)
            n_past -= n_past == len(tokens)  # re-decode the last token for fresh logits
            self._native.seq_rm(0, n_past)
            n_past = self._native.kv.next_pos[0]  # 0 if it could not be trimmed
            prefix, reserve = None, len(tokens) + budget
        else:
            seq = free[-1]
            n_past = plan.length
            prefix = self._start(seq, tokens, plan)
            reserve = len(tokens) - n_past + budget
        free.remove(seq)
        self._reserved += reserve
        return GenJob(chat, seq, sampler, budget, reserve, prefix, tokens[n_past:], n_past,
                      time.perf_counter(), scanner=StopScanner(chat.stops))

    def _step(self, active: list[GenJob]) -> list[GenJob]:
        """One decode: a token per generating job, then prompt chunks; sample; return the done."""
        native = self._native
        outputs: list[tuple[GenJob, int]] = []
        for job in active:
            if job.last >= 0:
                outputs.append((job, native.add_one(job.seq, job.n_past, job.last)))
                job.n_past += 1
        outputs += prompt_chunks(native, active)
        native.decode()
        now = time.perf_counter()
        vocab = self._vocab
        return [job for job, i in outputs if job.accept(native.sample(job.sampler, i), vocab, now)]

    def _finish(self, job: GenJob, free: list[int], keep: bool) -> Completion:
        self._native.free_sampler(job.sampler)
        job.sampler = None
        self._let_go(job, free, keep)
        return job.completion(time.perf_counter())

    def _let_go(self, job: GenJob, free: list[int], keep: bool) -> None:
        if keep:  # slot 0 keeps what it decoded, for the next stream()
            self._kept = (job.chat.tokens + job.generated)[: self._native.kv.next_pos[0]]
            self._reserved -= job.reserve
            free.append(job.seq)
        else:
            self._release(job.seq, job.prefix, job.reserve, free)

    # -- scoring ----------------------------------------------------------------
    def _score(self, items: Iterator[ScoreItem | Failed | None]
               ) -> Iterator[list[Score] | Exception]:
        """Score records a group of ``parallel`` at a time; results in request order.

        A None from ``items`` (nothing to send yet) ends the pulling for this group."""
        self._enter()
        free = list(range(self.parallel - 1, -1, -1))
        order: InOrder[list[Score] | Exception] = InOrder()
        ahead: deque[ScoreItem | Failed] = deque()
        group: list[ScoreJob] = []
        exhausted = waiting = failed = False
        try:
            self._drop_kept()
            while True:
                if not exhausted and not waiting:
                    exhausted, waiting = _pull(items, ahead, self.parallel + 2)
                while ahead and free:
                    head = ahead[0]
                    if isinstance(head, Failed):
                        order.put(head.index, head.error)
                        ahead.popleft()
                        continue
                    upcoming = next((a.tokens for a in islice(ahead, 1, None)
                                     if isinstance(a, ScoreItem)), None)
                    plan = self._plan(head.tokens, upcoming, head.label_cells, busy=bool(group))
                    if plan is None:
                        break
                    ahead.popleft()
                    seq = free.pop()
                    reserve = len(head.tokens) - plan.length + head.label_cells
                    self._reserved += reserve
                    group.append(ScoreJob(head, seq, reserve, None, head.tokens[plan.length:],
                                          plan.length))
                    group[-1].prefix = self._start(seq, head.tokens, plan)
                ready = order.pop_ready()
                waiting = waiting and not ready  # a result handed back: ask again
                yield from ready
                if not group:
                    if exhausted and not ahead:
                        return
                    if waiting and not ahead:
                        raise EngineError("internal: the requests wait for a result, but none "
                                          "is in flight")
                    continue
                while any(job.pending for job in group):  # the prompts, in chunks
                    outputs = prompt_chunks(self._native, group)
                    self._native.decode()
                    for job, i in outputs:
                        first = self._native.logprobs(i)
                        job.totals = [float(first[c[0]]) if c else 0.0 for c in job.item.conts]
                score_labels(self._native, group, self._siblings, _LABEL_OUTPUTS)
                for job in group:
                    scores = [Score(text, total, len(cont)) for text, total, cont
                              in zip(job.item.texts, job.totals, job.item.conts, strict=True)]
                    order.put(job.item.index, scores)
                    self._release(job.seq, job.prefix, job.reserve, free)
                group = []
                waiting = False  # ask for more again after every group
                yield from order.pop_ready()
        except GeneratorExit:
            raise
        except BaseException:
            failed = True
            raise
        finally:
            if not failed:
                try:
                    for job in group:
                        self._release(job.seq, job.prefix, job.reserve, free)
                except TermlmError:
                    failed = True
            self._leave(failed)
