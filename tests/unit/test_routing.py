"""Routing strategies: least-load, power-of-two-choices, prefix-hash with bounded load."""

from __future__ import annotations

from collections import Counter

import pytest

from aiplane.policies.routing import (
    LeastLoad,
    PowerOfTwo,
    PrefixHash,
    ReplicaLoad,
    Route,
    RouteRequest,
    router_for,
)


def loads(**in_flight: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(rid, n) for rid, n in in_flight.items()]


def picks(router, replicas: list[ReplicaLoad], n: int, prefix: str = "") -> Counter[str]:
    chosen = Counter[str]()
    for seq in range(n):
        route = router.choose(replicas, RouteRequest(seq, prefix))
        assert route is not None
        chosen[route.replica_id] += 1
    return chosen


def test_least_load_picks_the_least_loaded() -> None:
    replicas = loads(a=3, b=1, c=2)
    for seq in range(10):
        route = LeastLoad().choose(replicas, RouteRequest(seq))
        assert route is not None
        assert route.replica_id == "b"
        assert route.reason == "least in flight (1)"


def test_least_load_ties_rotate_over_seq() -> None:
    assert picks(LeastLoad(), loads(a=0, b=0, c=0), 300) == {"a": 100, "b": 100, "c": 100}


def test_least_load_ties_never_go_to_a_busier_replica() -> None:
    chosen = picks(LeastLoad(), loads(a=0, b=5, c=0, d=0), 300)
    assert set(chosen) == {"a", "c", "d"} and sum(chosen.values()) == 300


def test_least_load_ties_rotate_evenly_among_the_least_loaded() -> None:
    assert picks(LeastLoad(), loads(a=0, b=5, c=0, d=0), 300) == {"a": 100, "c": 100, "d": 100}


@pytest.mark.parametrize("router", [LeastLoad(), PowerOfTwo(), PrefixHash()], ids=lambda r: r.name)
def test_empty_replicas_gives_none(router) -> None:
    assert router.choose([], RouteRequest(0, "p")) is None


@pytest.mark.parametrize("router", [LeastLoad(), PowerOfTwo(), PrefixHash()], ids=lambda r: r.name)
def test_a_single_replica_is_always_chosen(router) -> None:
    assert picks(router, loads(only=50), 20) == {"only": 20}


def test_power_of_two_never_picks_the_most_loaded_of_three() -> None:
    chosen = picks(PowerOfTwo(), loads(idle=0, busy=10, swamped=100), 3000)
    assert chosen["swamped"] == 0
    # Two distinct candidates per request: the idle one wins whenever it is drawn (2 of 3 pairs).
    assert 0.55 < chosen["idle"] / 3000 < 0.78
    assert chosen["busy"] > 0


def test_power_of_two_spreads_equal_replicas() -> None:
    chosen = picks(PowerOfTwo(), loads(a=0, b=0, c=0), 3000)
    assert set(chosen) == {"a", "b", "c"}
    assert min(chosen.values()) > 700


def owner_order(prefix: str, ids: str = "abc") -> list[str]:
    """Replica ids in the prefix's rendezvous order, found through the router itself."""
    order: list[str] = []
    while len(order) < len(ids):
        # Replicas already ranked are swamped, so the next owner is the first one within the bound.
        replicas = [ReplicaLoad(r, 100 if r in order else 0) for r in ids]
        route = PrefixHash().choose(replicas, RouteRequest(0, prefix))
        assert route is not None and route.reason == "prefix owner within load bound"
        order.append(route.replica_id)
    return order


def test_prefix_hash_keeps_one_prefix_on_one_replica_under_the_bound() -> None:
    prefix = "You are a helpful assistant"
    first, second, third = owner_order(prefix)
    for in_flight in ({first: 0, second: 0, third: 0}, {first: 0, second: 3, third: 4}):
        routes = {PrefixHash().choose(loads(**in_flight), RouteRequest(seq, prefix)) for seq in range(50)}
        assert routes == {Route(first, "prefix owner within load bound")}


def test_prefix_hash_keeps_the_owner_at_mean_load() -> None:
    prefix = "You are a helpful assistant"
    first, second, third = owner_order(prefix)
    route = PrefixHash().choose(loads(**{first: 1, second: 2, third: 0}), RouteRequest(0, prefix))
    assert route == Route(first, "prefix owner within load bound")


def test_prefix_hash_spreads_different_prefixes() -> None:
    replicas = loads(a=0, b=0, c=0)
    chosen = Counter[str]()
    for i in range(300):
        route = PrefixHash().choose(replicas, RouteRequest(0, f"system prompt #{i}"))
        assert route is not None
        chosen[route.replica_id] += 1
    assert set(chosen) == {"a", "b", "c"}
    assert min(chosen.values()) > 60


def test_prefix_hash_spills_when_the_owner_is_over_the_bound() -> None:
    prefix = "hot prefix"
    first, second, third = owner_order(prefix)
    hot = loads(**{first: 9, second: 0, third: 0})  # bound 1.25 * 10 / 3 = 4.2
    for seq in range(20):  # every spilled request goes to the next owner: the order is stable
        assert PrefixHash().choose(hot, RouteRequest(seq, prefix)) == Route(
            second, "prefix owner within load bound"
        )
    # Once the first owner is back under the bound, the prefix returns to it.
    calm = loads(**{first: 2, second: 3, third: 2})  # bound 1.25 * 8 / 3 = 3.3
    assert PrefixHash().choose(calm, RouteRequest(0, prefix)) == Route(
        first, "prefix owner within load bound"
    )


def test_prefix_hash_all_over_bound_goes_to_least_loaded() -> None:
    route = PrefixHash(load_factor=0.1).choose(loads(a=5, b=3, c=4), RouteRequest(0, "x"))
    assert route is not None
    assert (route.replica_id, route.reason) == ("b", "all owners over load bound; least loaded")


@pytest.mark.parametrize(
    ("name", "kind"), [("least-load", LeastLoad), ("power-of-two", PowerOfTwo), ("prefix-hash", PrefixHash)]
)
def test_router_for_known_names(name: str, kind: type) -> None:
    router = router_for(name)
    assert isinstance(router, kind) and router.name == name


def test_router_for_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match=r"unknown routing strategy 'random' \(known: \['least-load'"):
        router_for("random")
