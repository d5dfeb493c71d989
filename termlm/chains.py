"""Chains of dependent model calls, run side by side on one engine.

A chain is a generator that yields a ChatRequest, is sent its Completion (or
has the engine's error for it thrown in), and so on until it returns its
result; each call may depend on the replies before it. ``run_chains`` keeps
as many chains in flight as the engine has slots and hands each reply back
to its own chain as soon as it is ready, so one slow call does not hold up
the chains beside it. ``run_groups`` does the same for groups of chains (a
document's stretches), taking the next group as soon as slots free up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from termlm.engine.types import ChatRequest, Completion, Engine, complete_each

T = TypeVar("T")
K = TypeVar("K")
Chain = Generator[ChatRequest, Completion, T]


def run_chains(engine: Engine, chains: Sequence[Chain[T]]) -> list[T]:
    """Each chain's result, in the order of ``chains``.

    An exception a chain raises (or lets through from the engine) stops all
    of them and propagates; the other chains are closed.
    """
    for _key, out in run_groups(engine, [(None, chains)], slots=1):
        if isinstance(out, Exception):
            raise out
        return out
    raise AssertionError("run_groups yields every group")  # pragma: no cover


@dataclass(eq=False)
class _Group(Generic[K, T]):
    key: K
    chains: Sequence[Chain[T]]
    results: dict[int, T] = field(default_factory=dict)
    live: set[int] = field(default_factory=set)  # chains started and not finished
    error: Exception | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or len(self.results) == len(self.chains)

    def stop(self, error: Exception) -> int:
        """Fail the group: close its chains; return how many were still running."""
        self.error = error
        for c in self.live:
            self.chains[c].close()
        stopped = len(self.live)
        self.live.clear()
        return stopped


def run_groups(engine: Engine, groups: Iterable[tuple[K, Sequence[Chain[T]]]], *,
               slots: int) -> Iterator[tuple[K, list[T] | Exception]]:
    """Groups of chains (say, the stretches of one document each), run side by side.

    Yields each group's key with its chains' results, or with the exception
    that stopped it (its other chains are closed; the other groups go on), in
    the order of ``groups``. The next group is taken from ``groups`` whenever
    fewer than ``slots`` chains are running, so the engine's slots stay busy
    across groups. A BaseException that is not an Exception (Ctrl-C) stops all.
    """
    source = iter(groups)
    pending: deque[_Group[K, T]] = deque()  # taken, not yet handed back
    ready: deque[tuple[_Group[K, T], int, ChatRequest]] = deque()
    owner: dict[int, tuple[_Group[K, T], int]] = {}  # request index -> its chain
    running = 0
    exhausted = False

    def advance(group: _Group[K, T], c: int, step: Callable[[], ChatRequest]) -> None:
        nonlocal running
        if group.error is not None:
            return
        try:
            ready.append((group, c, step()))
        except StopIteration as stop:
            group.results[c] = stop.value
            group.live.discard(c)
            running -= 1
        except Exception as exc:
            group.live.discard(c)
            running -= 1 + group.stop(exc)

    def fill() -> None:
        nonlocal exhausted, running
        while not exhausted and running < slots and len(pending) <= 4 * slots:
            try:
                key, chains = next(source)
            except StopIteration:
                exhausted = True
                return
            group: _Group[K, T] = _Group(key, chains)
            pending.append(group)
            for c, chain in enumerate(chains):
                group.live.add(c)
                running += 1
                advance(group, c, chain.__next__)

    def requests() -> Iterator[ChatRequest | None]:
        sent = 0
        while True:
            fill()
            while ready and ready[0][0].error is not None:
                ready.popleft()
            if ready:
                group, c, request = ready.popleft()
                owner[sent] = (group, c)
                sent += 1
                yield request
            elif running == 0:
                return  # nothing in flight: hand back what is done, then go on
            else:
                yield None  # every running chain waits for a reply

    def finished() -> Iterator[tuple[K, list[T] | Exception]]:
        while pending and pending[0].done:
            group = pending.popleft()
            yield group.key, (group.error if group.error is not None
                              else [group.results[c] for c in range(len(group.chains))])

    try:
        while not exhausted or pending:
            owner.clear()
            stream = complete_each(engine, requests())
            try:
                for index, result in stream:
                    group, c = owner.pop(index)
                    chain = group.chains[c]
                    if isinstance(result, Exception):
                        advance(group, c, lambda chain=chain, exc=result: chain.throw(exc))  # type: ignore[misc]
                    else:
                        advance(group, c, lambda chain=chain, done=result: chain.send(done))  # type: ignore[misc]
                    yield from finished()
            finally:
                stream.close()
            yield from finished()  # groups that needed no model call
    finally:
        for group in pending:
            for chain in group.chains:
                chain.close()


def stretches(items: Sequence[T], n: int, weight: Callable[[T], int]) -> list[list[T]]:
    """``items`` cut into at most ``n`` consecutive runs of about equal total weight."""
    n = max(1, min(n, len(items)))
    total = sum(weight(x) for x in items)
    runs: list[list[T]] = []
    run: list[T] = []
    acc = 0
    for i, item in enumerate(items):
        run.append(item)
        acc += weight(item)
        left = n - len(runs) - 1  # runs still to start after this one
        if left > 0 and (acc * n >= total * (len(runs) + 1) or len(items) - i - 1 == left):
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs
