"""CHWBL, KubeAI's PrefixHash: ring, bounded-load lookup, fallbacks, minimal movement."""

from __future__ import annotations

from collections import Counter

import pytest

from aiplane.policies.routing import CHWBL, ReplicaLoad, Route, RouteRequest
from aiplane.policies.routing.chwbl import CHWBLState, HashRing, chwbl_load_ok
from aiplane.policies.routing.hashing import stable_hash

OWNER = "prefix owner within load bound"
NEXT = "prefix owner over load bound; next on ring"
FALLBACK = "all over load bound; prefix owner"


def loads(**in_flight: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(rid, n) for rid, n in in_flight.items()]


def walk_order(prefix: str, ids: str = "abc") -> list[str]:
    """The replicas in the prefix's clockwise order on a ring of ``ids``, read off the ring."""
    return list(HashRing.of(ids, 256).walk(stable_hash(prefix[:100])))


def choose(replicas: list[ReplicaLoad], prefix: str, seq: int = 0, router: CHWBL | None = None) -> Route:
    router = router or CHWBL()
    route = router.choose(replicas, RouteRequest(seq, prefix), router.new_state())
    assert route is not None
    return route


def prefix_owned_by(owner: str, ids: str = "abc") -> str:
    return next(p for i in range(1000) if walk_order(p := f"prompt {i}", ids)[0] == owner)


def test_load_bound_by_hand() -> None:
    # Nothing in flight anywhere: always OK.
    assert chwbl_load_ok(0, 0, 3, 1.25)
    # 9 in flight over 3 replicas: threshold (9 + 1) / 3 * 1.25 = 4.17 (not rounded up).
    assert chwbl_load_ok(3, 9, 3, 1.25)  # 3 + 1 = 4 <= 4.17
    assert not chwbl_load_ok(4, 9, 3, 1.25)  # 4 + 1 = 5 > 4.17 (the paper's ceil would allow 5)
    # 7 over 4: threshold 8 / 4 * 1.25 = 2.5.
    assert chwbl_load_ok(1, 7, 4, 1.25) and not chwbl_load_ok(2, 7, 4, 1.25)
    # 1 over 3: threshold 2 / 3 * 1.25 = 0.83, so even an idle replica is "over" it.
    assert not chwbl_load_ok(0, 1, 3, 1.25)
    # meanLoadFactor 200: threshold 10 / 3 * 2 = 6.67.
    assert chwbl_load_ok(5, 9, 3, 2.0) and not chwbl_load_ok(6, 9, 3, 2.0)


def test_the_ring_has_replication_points_per_replica_sorted() -> None:
    ring = HashRing.of(["a", "b", "c"], 256)
    assert Counter(ring.owners) == {"a": 256, "b": 256, "c": 256}
    assert list(ring.points) == sorted(ring.points)
    # Point i of a replica is the hash of its name followed by i (KubeAI's "%s%d").
    assert ring.points[ring.owners.index("b")] == min(stable_hash(f"b{i}") for i in range(256))


def test_same_prefix_same_replica_while_under_the_bound() -> None:
    prefix = "You are a helpful assistant"
    first, second, third = walk_order(prefix)
    for in_flight in ({first: 0, second: 0, third: 0}, {first: 2, second: 3, third: 4}):
        routes = {choose(loads(**in_flight), prefix, seq) for seq in range(50)}
        assert routes == {Route(first, OWNER)}


def test_the_owner_moves_to_the_next_on_the_ring_over_the_bound() -> None:
    prefix = "hot prefix"
    first, second, third = walk_order(prefix)
    # Total 9: threshold 4.17. The owner (4) is over it, the next (3) is not.
    assert choose(loads(**{first: 4, second: 3, third: 2}), prefix) == Route(second, NEXT)
    # Both the owner and the next over it: the third.
    assert choose(loads(**{first: 5, second: 4, third: 0}), prefix) == Route(third, NEXT)
    # Back under the bound, the prefix returns to its owner.
    assert choose(loads(**{first: 3, second: 3, third: 3}), prefix) == Route(first, OWNER)


def test_all_over_the_bound_falls_back_to_the_owner_not_the_least_loaded() -> None:
    prefix = prefix_owned_by("a")
    # Total 1 over 3: threshold 0.83, no replica qualifies; KubeAI returns the owner.
    assert choose(loads(a=1, b=0, c=0), prefix) == Route("a", FALLBACK)


def test_mean_load_percentage_moves_the_bound() -> None:
    prefix = prefix_owned_by("a")
    replicas = loads(a=5, b=2, c=2)  # total 9: threshold 4.17 at 125%, 6.67 at 200%
    assert choose(replicas, prefix).replica_id != "a"
    assert choose(replicas, prefix, router=CHWBL(mean_load_percentage=200)) == Route("a", OWNER)


def test_only_the_first_prefix_char_length_characters_count() -> None:
    base = "x" * 100
    owners = {choose(loads(a=0, b=0, c=0), base + f" then {i}").replica_id for i in range(50)}
    assert len(owners) == 1
    longer = CHWBL(prefix_char_length=200)
    owners = {choose(loads(a=0, b=0, c=0), base + f" then {i}", router=longer).replica_id for i in range(50)}
    assert owners == {"a", "b", "c"}


def test_different_prefixes_spread() -> None:
    chosen = Counter(choose(loads(a=0, b=0, c=0), f"system prompt #{i}").replica_id for i in range(300))
    assert set(chosen) == {"a", "b", "c"} and min(chosen.values()) > 60


def test_adding_a_replica_moves_few_prefixes_and_only_to_it() -> None:
    router = CHWBL()
    state = router.new_state()
    prefixes = [f"conversation {i}: hello" for i in range(2000)]
    four = loads(a=0, b=0, c=0, d=0)
    before = {p: router.choose(four, RouteRequest(0, p), state) for p in prefixes}
    after = {p: router.choose([*four, ReplicaLoad("e", 0)], RouteRequest(0, p), state) for p in prefixes}
    moved = [p for p in prefixes if before[p] != after[p]]
    kept = 1 - len(moved) / len(prefixes)
    assert 0.74 < kept < 0.86  # 4/5 expected: the new replica takes its fair share and no more
    assert {after[p].replica_id for p in moved if after[p]} == {"e"}


def test_removing_a_replica_moves_only_its_prefixes() -> None:
    router = CHWBL()
    state = router.new_state()
    prefixes = [f"conversation {i}: hello" for i in range(1000)]
    before = {p: router.choose(loads(a=0, b=0, c=0, d=0), RouteRequest(0, p), state) for p in prefixes}
    router.forget("c", state)
    after = {p: router.choose(loads(a=0, b=0, d=0), RouteRequest(0, p), state) for p in prefixes}
    moved = {p for p in prefixes if before[p] != after[p]}
    assert moved == {p for p in prefixes if before[p] and before[p].replica_id == "c"}
    assert 150 < len(moved) < 350


def test_the_ring_is_kept_patched_and_pruned_in_the_state() -> None:
    router = CHWBL(replication=16)
    state = router.new_state()
    assert isinstance(state, CHWBLState)
    router.choose(loads(a=0, b=0), RouteRequest(0, "p"), state)
    ring = state.ring
    assert ring.members == {"a", "b"} and len(ring.points) == 32
    router.choose(loads(a=0, b=0), RouteRequest(1, "q"), state)
    assert state.ring is ring  # same replica set: not rebuilt
    router.choose(loads(a=0), RouteRequest(2, "q"), state)
    assert state.ring is ring  # b left this call's list only: kept, skipped in the walk
    router.choose(loads(a=0, b=0, c=0), RouteRequest(3, "q"), state)
    assert state.ring.members == {"a", "b", "c"} and len(state.ring.points) == 48
    router.forget("b", state)
    assert state.ring.members == {"a", "c"} and Counter(state.ring.owners) == {"a": 16, "c": 16}
    # More than half the ring absent from the list: rebuilt from the list.
    router.choose(loads(x=0), RouteRequest(4, "q"), state)
    assert state.ring.members == {"x"}


def test_a_replica_on_the_ring_but_not_offered_is_skipped_exactly() -> None:
    """Skipping an absent ring member gives the same answer as a ring without it."""
    router = CHWBL()
    warm = router.new_state()
    router.choose(loads(a=0, b=0, c=0, d=0), RouteRequest(0, "warm"), warm)
    for i in range(300):
        subset = loads(a=i % 3, b=1, d=2)
        request = RouteRequest(i, f"prefix {i}")
        assert router.choose(subset, request, warm) == router.choose(subset, request, router.new_state())


@pytest.mark.parametrize(
    "params", [{"mean_load_percentage": 99}, {"replication": 0}, {"prefix_char_length": -1}]
)
def test_invalid_parameters_raise(params: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        CHWBL(**params)
