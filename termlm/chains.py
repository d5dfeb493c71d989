"""Chains of dependent model calls, run side by side on one engine.

A chain is a generator that yields a ChatRequest, is sent its Completion (or
has the engine's error for it thrown in), and so on until it returns its
result; each call may depend on the replies before it. ``run_chains`` keeps
as many chains in flight as the engine has slots and hands each reply back
to its own chain as soon as it is ready, so one slow call does not hold up
the chains beside it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TypeVar

from termlm.engine.types import ChatRequest, Completion, Engine, complete_each

T = TypeVar("T")
Chain = Generator[ChatRequest, Completion, T]


def run_chains(engine: Engine, chains: Sequence[Chain[T]]) -> list[T]:
    """Each chain's result, in the order of ``chains``.

    An exception a chain raises (or lets through from the engine) stops all
    of them and propagates; the other chains are closed.
    """
    results: dict[int, T] = {}
    ready: deque[tuple[int, ChatRequest]] = deque()
    owner: dict[int, int] = {}  # request index -> its chain

    def advance(c: int, step: Callable[[], ChatRequest]) -> None:
        try:
            ready.append((c, step()))
        except StopIteration as stop:
            results[c] = stop.value

    def requests() -> Iterator[ChatRequest | None]:
        sent = 0
        while len(results) < len(chains):
            if not ready:
                yield None  # every unfinished chain waits for a reply
                continue
            c, request = ready.popleft()
            owner[sent] = c
            sent += 1
            yield request

    for c, chain in enumerate(chains):
        advance(c, chain.__next__)
    stream = complete_each(engine, requests())
    try:
        for index, result in stream:
            c = owner.pop(index)
            chain = chains[c]
            if isinstance(result, Exception):
                advance(c, lambda chain=chain, exc=result: chain.throw(exc))  # type: ignore[misc]
            else:
                advance(c, lambda chain=chain, done=result: chain.send(done))  # type: ignore[misc]
    finally:
        stream.close()
        for chain in chains:
            chain.close()
    return [results[c] for c in range(len(chains))]


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
