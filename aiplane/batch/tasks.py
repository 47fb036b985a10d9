"""What a shard does to its rows. A task turns checked rows into output lines, in order.

Each task's ``outcomes(items)`` yields, for every item it is given and in the same
order, either the JSON line of a good row or a :class:`~aiplane.batch.rows.BadRow`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Iterator
from itertools import islice
from typing import Protocol, TypeVar

from aiplane.batch.rows import BadRow, Item

T = TypeVar("T")
Outcome = str | BadRow


class Task(Protocol):
    def outcomes(self, items: Iterator[Item | BadRow]) -> AsyncGenerator[Outcome, None]: ...


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` (the last shorter): ``itertools.batched`` before Python 3.12."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
