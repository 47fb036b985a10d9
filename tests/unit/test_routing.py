"""Routing: what every router promises, the load-only routers, the baselines and the registry.

CHWBL, the prefix-aware router and session affinity have their own files
(``test_routing_chwbl.py``, ``test_routing_prefix_aware.py``, ``test_routing_session.py``).
"""

from __future__ import annotations

import itertools
import typing
from collections import Counter
from collections.abc import Callable

import pytest

from aiplane.api.model import RoutingStrategy
from aiplane.policies import routing
from aiplane.policies.routing import (
    CHWBL,
    ROUTING_STRATEGIES,
    LeastLoad,
    PowerOfTwo,
    PrefixAware,
    Random,
    ReplicaLoad,
    RoundRobin,
    Route,
    Router,
    RouteRequest,
    SessionAffinity,
    router_for,
    routers,
)

EVERY_ROUTER: dict[str, Callable[[], Router]] = {
    **{name: (lambda name=name: router_for(name)) for name in ROUTING_STRATEGIES},
    "aiplane+sessions": lambda: SessionAffinity(PrefixAware()),
    "chwbl+sessions": lambda: SessionAffinity(CHWBL()),
}


def loads(**in_flight: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(rid, n) for rid, n in in_flight.items()]


def picks(router: Router, replicas: list[ReplicaLoad], n: int, prefix: str = "") -> Counter[str]:
    state = router.new_state()
    chosen = Counter[str]()
    for seq in range(n):
        route = router.choose(replicas, RouteRequest(seq, prefix), state)
        assert route is not None
        chosen[route.replica_id] += 1
    return chosen


# -- every router ------------------------------------------------------------------


@pytest.mark.parametrize("make", EVERY_ROUTER.values(), ids=EVERY_ROUTER.keys())
def test_no_replicas_gives_none(make: Callable[[], Router]) -> None:
    router = make()
    state = router.new_state()
    request = RouteRequest(0, "p", (1, 2), session="s")
    assert router.choose([], request, state) is None
    # ... also once the router has memory of replicas that are gone now.
    assert router.choose(loads(a=0, b=0), request, state) is not None
    assert router.choose([], RouteRequest(1, "p", (1, 2), session="s"), state) is None


@pytest.mark.parametrize("make", EVERY_ROUTER.values(), ids=EVERY_ROUTER.keys())
def test_only_replicas_given_are_chosen(make: Callable[[], Router]) -> None:
    router = make()
    state = router.new_state()
    everyone = [ReplicaLoad("a", 0), ReplicaLoad("b", 2, waiting=1), ReplicaLoad("c", 1, slots=4)]
    served: set[str] = set()
    for seq in range(200):
        # Each request sees a different subset; the router remembers the others (cache,
        # ring, sessions) but may only answer with one it was given now.
        given = [r for i, r in enumerate(everyone) if (seq >> i) % 2 or i == seq % 3]
        request = RouteRequest(seq, f"prefix {seq % 5}", (seq % 5, 100 + seq % 5), session=f"s{seq % 4}")
        route = router.choose(given, request, state)
        assert route is not None and route.replica_id in {r.replica_id for r in given}, (seq, route)
        assert route.reason
        served.add(route.replica_id)
    assert served == {"a", "b", "c"}


@pytest.mark.parametrize("make", EVERY_ROUTER.values(), ids=EVERY_ROUTER.keys())
def test_a_single_replica_is_always_chosen(make: Callable[[], Router]) -> None:
    assert picks(make(), loads(only=50), 20) == {"only": 20}


@pytest.mark.parametrize("make", EVERY_ROUTER.values(), ids=EVERY_ROUTER.keys())
def test_forget_a_replica_never_seen_is_harmless(make: Callable[[], Router]) -> None:
    router = make()
    state = router.new_state()
    router.forget("never-seen", state)
    assert router.choose(loads(a=0), RouteRequest(0, "p", (1,)), state) is not None


# -- least-load --------------------------------------------------------------------


def test_least_load_picks_the_least_loaded() -> None:
    replicas = loads(a=3, b=1, c=2)
    for seq in range(10):
        assert LeastLoad().choose(replicas, RouteRequest(seq), None) == Route("b", "least load: 1")


def test_least_load_counts_the_engines_queue() -> None:
    replicas = [
        ReplicaLoad("a", 1, waiting=3),
        ReplicaLoad("b", 2, waiting=None),
        ReplicaLoad("c", 2, waiting=1),
    ]
    assert LeastLoad().choose(replicas, RouteRequest(0), None) == Route("b", "least load: 2")


def test_least_load_ties_rotate_evenly_over_seq() -> None:
    assert picks(LeastLoad(), loads(a=0, b=0, c=0), 300) == {"a": 100, "b": 100, "c": 100}


def test_least_load_ties_rotate_evenly_among_the_least_loaded_only() -> None:
    assert picks(LeastLoad(), loads(a=0, b=5, c=0, d=0), 300) == {"a": 100, "c": 100, "d": 100}


# -- power of two ------------------------------------------------------------------


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


def test_power_of_two_counts_the_engines_queue() -> None:
    replicas = [ReplicaLoad("queued", 0, waiting=50), ReplicaLoad("b", 1), ReplicaLoad("c", 1)]
    assert picks(PowerOfTwo(), replicas, 300)["queued"] == 0


# -- baselines ---------------------------------------------------------------------


def test_round_robin_cycles_in_the_given_order() -> None:
    replicas = loads(a=9, b=0, c=0)
    chosen = [RoundRobin().choose(replicas, RouteRequest(seq), None) for seq in range(6)]
    assert [r.replica_id for r in chosen if r] == ["a", "b", "c", "a", "b", "c"]


def test_random_is_a_function_of_seq_and_seed() -> None:
    replicas = loads(a=0, b=0, c=0, d=0)
    first = [Random().choose(replicas, RouteRequest(seq), None) for seq in range(200)]
    again = [Random().choose(replicas, RouteRequest(seq), None) for seq in range(200)]
    other = [Random(seed=1).choose(replicas, RouteRequest(seq), None) for seq in range(200)]
    assert first == again
    assert first != other
    chosen = picks(Random(), replicas, 4000)
    assert set(chosen) == {"a", "b", "c", "d"} and min(chosen.values()) > 850  # 1000 each expected
    # Not a rotation in disguise: consecutive requests repeat a replica about 1 time in 4.
    ids = [r.replica_id for r in first if r]
    repeats = sum(x == y for x, y in itertools.pairwise(ids))
    assert 25 < repeats < 80


# -- registry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "canonical"),
    [
        ("least-load", LeastLoad, "least-load"),
        ("power-of-two", PowerOfTwo, "power-of-two"),
        ("round-robin", RoundRobin, "round-robin"),
        ("random", Random, "random"),
        ("chwbl", CHWBL, "chwbl"),
        ("prefix-hash", CHWBL, "chwbl"),
        ("aiplane", PrefixAware, "aiplane"),
        ("prefix-aware", PrefixAware, "aiplane"),
    ],
)
def test_router_for_known_names(name: str, kind: type, canonical: str) -> None:
    router = router_for(name)
    assert type(router) is kind and router.name == canonical


def test_the_strategy_names_are_the_registry_and_the_api() -> None:
    assert tuple(routers()) == ROUTING_STRATEGIES
    assert set(typing.get_args(RoutingStrategy)) == set(ROUTING_STRATEGIES)


def test_router_for_passes_parameters() -> None:
    router = router_for("chwbl", replication=8, mean_load_percentage=150)
    assert router == CHWBL(mean_load_percentage=150, replication=8)
    assert router_for("prefix-aware", cache_blocks=64) == PrefixAware(cache_blocks=64)


def test_router_for_unknown_name_raises_naming_the_known() -> None:
    with pytest.raises(
        ValueError, match=r"unknown routing strategy 'fastest' \(known: least-load, power-of-two, "
    ):
        router_for("fastest")


def test_router_for_unknown_parameter_raises_naming_the_accepted() -> None:
    with pytest.raises(
        ValueError, match=r"'chwbl' has no parameter cache_blocks \(takes: mean_load_percentage, "
    ):
        router_for("chwbl", cache_blocks=3)
    with pytest.raises(ValueError, match=r"'least-load' has no parameter seed \(takes: no parameters\)"):
        router_for("least-load", seed=3)


def test_the_rendezvous_prefix_hash_is_gone() -> None:
    assert not hasattr(routing, "PrefixHash")
    assert "PrefixHash" not in routing.__all__
