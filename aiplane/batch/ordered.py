"""Run awaitables concurrently, yield their results in the order they were given."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def ready(value: T) -> T:
    """An awaitable of a value already known (a bad row passing through in its place)."""
    return value


async def in_order(jobs: Iterable[Awaitable[T]], window: int) -> AsyncGenerator[T, None]:
    """Start up to ``window`` jobs ahead of the one awaited; yield results in input order.

    Output order is input order whatever finishes first, and memory stays bounded by
    ``window``. If a job raises, the ones still running are cancelled and it re-raises.
    """
    pending: deque[asyncio.Future[T]] = deque()
    try:
        for job in jobs:
            pending.append(asyncio.ensure_future(job))
            while len(pending) >= window:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
