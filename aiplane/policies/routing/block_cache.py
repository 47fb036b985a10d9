"""An estimate of one replica's prefix cache: an LRU of the block hashes routed to it.

The blocks of a request are chained hashes (block ``i``'s hash covers blocks ``0..i``, as
vLLM keys its prefix cache), so holding block ``i`` means holding the prefix up to it.
``add`` touches a request's blocks last to first, so the first block is the most recent:
whenever block ``i`` is touched, blocks ``0..i-1`` are touched after it, so an earlier
block is never older than a later one of the same chain and eviction takes tails first
(vLLM frees a finished request's blocks in the same reverse order, for the same reason).
The cached blocks of any chain are therefore a prefix of it, as in the engine.

``matched`` counts leading blocks up to the first one not cached: the longest cached
prefix, exact even for blocks that are not chained (a block cached at another position
does not count). It costs one lookup per matched block, plus one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class BlockLRU:
    """At most ``capacity`` block hashes, the least recently routed evicted first."""

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least one block (got {capacity})")
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def oldest(self) -> list[int]:
        """The blocks, least recently used first (for tests and reports)."""
        return list(self._blocks)

    def add(self, blocks: Sequence[int]) -> None:
        """Record a request's blocks as cached here: O(len(blocks))."""
        cache = self._blocks
        for block in reversed(blocks):
            if block in cache:
                cache.move_to_end(block)
            else:
                cache[block] = None
        while len(cache) > self.capacity:
            cache.popitem(last=False)

    def matched(self, blocks: Sequence[int]) -> int:
        """How many leading blocks of ``blocks`` are cached (the longest cached prefix)."""
        cache = self._blocks
        for i, block in enumerate(blocks):
            if block not in cache:
                return i
        return len(blocks)
