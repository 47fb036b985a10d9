"""A replica's prefix cache, as vLLM's block pool keeps it: 512-token KV blocks keyed by id.

A block is *pinned* while running sequences use it (a reference count) and *free* once
none does; free blocks stay cached, least recently used evicted first, until their space
is needed. A block hits only if every block before it hits (ids stand for chained
hashes), whether pinned (another running request computed it) or free. Blocks enter the
cache when their sequence's prefill computes them; a finished sequence's blocks are
freed tail first (vLLM frees in reverse order), so a shared system prompt outlives the
conversations behind it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    def __init__(self) -> None:
        self.pinned: dict[int, int] = {}  # block -> running sequences using it
        self.free: OrderedDict[int, None] = OrderedDict()  # cached, unused; oldest first

    def __len__(self) -> int:
        return len(self.pinned) + len(self.free)

    def __contains__(self, block: int) -> bool:
        return block in self.pinned or block in self.free

    def peek(self, blocks: Sequence[int]) -> int:
        """How many leading blocks are cached, without touching them."""
        n = 0
        for b in blocks:
            if b not in self.pinned and b not in self.free:
                break
            n += 1
        return n

    def free_among(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` (cached ones) are free, i.e. not yet counted as used."""
        return sum(1 for b in blocks if b in self.free)

    def pin(self, blocks: Sequence[int]) -> None:
        """A running sequence uses ``blocks`` (hit or just computed)."""
        for b in blocks:
            if b in self.pinned:
                self.pinned[b] += 1
            else:
                self.free.pop(b, None)
                self.pinned[b] = 1

    def release(self, blocks: Sequence[int]) -> None:
        """A sequence finished: blocks no sequence uses become free, its head the most recent."""
        for b in reversed(blocks):
            count = self.pinned.get(b)
            if count is None:
                continue
            if count > 1:
                self.pinned[b] = count - 1
            else:
                del self.pinned[b]
                self.free[b] = None

    def evict_to(self, blocks: int) -> None:
        """Evict free blocks, least recently used first, until at most ``blocks`` are cached."""
        while len(self.pinned) + len(self.free) > blocks and self.free:
            self.free.popitem(last=False)
