"""Which rows a shard owns and what its files are called: pure functions, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

MANIFEST_PATTERN = re.compile(r"^shard-(\d+)-of-(\d+)\.manifest\.json$")
TEMP_MARK = ".tmp-"


def shard_range(rows: int, shard: int, shards: int) -> range:
    """Rows ``[shard*rows//shards, (shard+1)*rows//shards)``: contiguous, disjoint, covering.

    Shard sizes differ by at most one, and with fewer rows than shards some are empty.
    """
    if shards < 1 or not 0 <= shard < shards or rows < 0:
        raise ValueError(f"shard {shard} of {shards} over {rows} rows")
    return range(shard * rows // shards, (shard + 1) * rows // shards)


@dataclass(frozen=True)
class ShardNames:
    """File names of one shard in the output directory (``shard-00003-of-00008.*``)."""

    shard: int
    shards: int

    @property
    def stem(self) -> str:
        return f"shard-{self.shard:05d}-of-{self.shards:05d}"

    @property
    def output(self) -> str:
        return f"{self.stem}.jsonl"

    @property
    def errors(self) -> str:
        return f"{self.stem}.errors.jsonl"

    @property
    def manifest(self) -> str:
        return f"{self.stem}.manifest.json"

    def is_temp(self, name: str) -> bool:
        """A temporary file of this shard (see :func:`temp_name`), left by an earlier run."""
        return name.startswith(f".{self.stem}.") and TEMP_MARK in name


def temp_name(final: str, token: str) -> str:
    """Hidden, in the same directory (so the rename is atomic), never matching the final name."""
    return f".{final}{TEMP_MARK}{token}"


def parse_manifest_name(name: str) -> tuple[int, int] | None:
    """``(shard, shards)`` of a manifest file name, or None for any other file."""
    found = MANIFEST_PATTERN.match(name)
    return (int(found.group(1)), int(found.group(2))) if found else None
