"""Requests above every replica's concurrency wait here, first come, first served.

A replica takes ``ModelRoute.concurrency`` requests at once (llama.cpp: its slots).
Sending it more would only queue them inside the engine, out of sight of routing and
autoscaling, or worse (llama-cpp-python) interrupt the stream in progress. So the
gateway holds the rest in a per-model FIFO: the autoscaler counts them as queued, and
the head of the line takes the first slot that frees up on any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
# A waiter looks again at least this often, so a replica that becomes ready (which frees
# no slot) is seen without the runtime having to tell the gateway.
RECHECK_S = 0.25


class SlotQueue:
    def __init__(self) -> None:
        self._lines: dict[str, deque[asyncio.Event]] = {}

    def waiting(self, model: str) -> int:
        return len(self._lines.get(model, ()))

    async def take(self, model: str, pick: Callable[[], T | None], timeout: float) -> T | None:
        """``pick()`` as soon as it finds a free slot and no one is ahead; None on timeout.

        ``pick`` must claim what it returns before returning (no await in between), so
        two waiters never take the same slot.
        """
        line = self._lines.setdefault(model, deque())
        if not line and (got := pick()) is not None:
            return got
        me = asyncio.Event()
        line.append(me)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                if line[0] is me and (got := pick()) is not None:
                    return got
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return None
                me.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, RECHECK_S)):
                        await me.wait()
        finally:
            line.remove(me)
            if line:
                line[0].set()  # the next in line looks now
            else:
                self._lines.pop(model, None)

    def released(self, model: str) -> None:
        """A slot of ``model`` freed up: the head of its line looks at once."""
        if line := self._lines.get(model):
            line[0].set()
