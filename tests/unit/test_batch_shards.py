"""Shard ranges and names: every row in exactly one shard, sizes within one of each other."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiplane.batch.shards import ShardNames, parse_manifest_name, shard_range, temp_name


@given(rows=st.integers(0, 100_000), shards=st.integers(1, 5_000))
def test_shards_cover_every_row_exactly_once_in_order(rows: int, shards: int) -> None:
    ranges = [shard_range(rows, i, shards) for i in range(shards)]
    assert ranges[0].start == 0 and ranges[-1].stop == rows
    for before, after in itertools.pairwise(ranges):
        assert before.stop == after.start  # contiguous: no gap, no overlap
    sizes = {len(r) for r in ranges}
    assert max(sizes) - min(sizes) <= 1
    assert sum(len(r) for r in ranges) == rows


def test_known_ranges() -> None:
    assert [shard_range(10, i, 4) for i in range(4)] == [range(0, 2), range(2, 5), range(5, 7), range(7, 10)]
    assert [len(shard_range(2, i, 4)) for i in range(4)] == [0, 1, 0, 1]
    assert shard_range(0, 0, 1) == range(0, 0)


@pytest.mark.parametrize(("rows", "shard", "shards"), [(10, 4, 4), (10, -1, 4), (10, 0, 0), (-1, 0, 1)])
def test_impossible_shards_are_refused(rows: int, shard: int, shards: int) -> None:
    with pytest.raises(ValueError):
        shard_range(rows, shard, shards)


def test_names_and_temporaries() -> None:
    names = ShardNames(3, 8)
    assert (names.output, names.errors, names.manifest) == (
        "shard-00003-of-00008.jsonl",
        "shard-00003-of-00008.errors.jsonl",
        "shard-00003-of-00008.manifest.json",
    )
    temp = temp_name(names.manifest, "123-abc")
    assert temp == ".shard-00003-of-00008.manifest.json.tmp-123-abc"
    assert names.is_temp(temp) and names.is_temp(temp_name(names.output, "9"))
    assert not names.is_temp(names.output)
    assert not ShardNames(3, 80).is_temp(temp) and not ShardNames(13, 8).is_temp(temp)
    assert parse_manifest_name(names.manifest) == (3, 8)
    assert parse_manifest_name(temp) is None and parse_manifest_name(names.output) is None
    assert ShardNames(7, 100000).stem == "shard-00007-of-100000"
