"""Property tests of the routers (hypothesis): against reference models, over any loads."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from aiplane.policies.routing import (
    CHWBL,
    PrefixAware,
    ReplicaLoad,
    RouteRequest,
    SessionAffinity,
    router_for,
)
from aiplane.policies.routing import ROUTING_STRATEGIES as NAMES
from aiplane.policies.routing.block_cache import BlockLRU
from aiplane.policies.routing.chwbl import chwbl_load_ok, ring_points
from aiplane.policies.routing.hashing import stable_hash
from aiplane.policies.routing.load import load_bound, load_of


def chain(texts: list[str]) -> tuple[int, ...]:
    out: list[int] = []
    digest = b""
    for text in texts:
        digest = hashlib.blake2b(digest + text.encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "big"))
    return tuple(out)


# A prompt: a path in a small tree of texts, so prompts share prefixes often.
prompts = st.lists(st.sampled_from("abc"), min_size=0, max_size=8).map(lambda path: chain(list(path)))
replica_sets = st.lists(
    st.builds(
        ReplicaLoad,
        replica_id=st.sampled_from([f"r{i}" for i in range(6)]),
        in_flight=st.integers(0, 20),
        waiting=st.none() | st.integers(0, 5).map(float),
        kv_cache=st.none() | st.floats(0, 1),
        slots=st.none() | st.integers(1, 8),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda r: r.replica_id,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 12), requests=st.lists(prompts, max_size=30), probe=prompts)
def test_block_lru_matches_a_reference_lru(capacity: int, requests: list[tuple[int, ...]], probe) -> None:
    cache = BlockLRU(capacity)
    reference: list[int] = []  # least recent first
    for blocks in requests:
        cache.add(blocks)
        for block in reversed(blocks):
            if block in reference:
                reference.remove(block)
            reference.append(block)
        del reference[: max(0, len(reference) - capacity)]
    assert cache.oldest() == reference
    leading = 0
    while leading < len(probe) and probe[leading] in reference:
        leading += 1
    assert cache.matched(probe) == leading
    # What is cached of any chain is a prefix of it, as in the engine.
    for blocks in requests:
        held = [b in cache for b in blocks]
        assert held == sorted(held, reverse=True)


def kubeai_chwbl(replicas: list[ReplicaLoad], prefix: str, replication: int, factor: float) -> str:
    """KubeAI's chwblGetAddr transliterated: every ring position walked, re-checks included."""
    hashes = {}
    for r in replicas:
        hashes.update(ring_points(r.replica_id, replication))
    ring = sorted(hashes)
    h = stable_hash(prefix[:100])
    i = next((k for k, point in enumerate(ring) if point >= h), 0)
    total = sum(r.in_flight for r in replicas)
    by_id = {r.replica_id: r for r in replicas}
    default = None
    for _ in range(len(ring)):
        name = hashes[ring[i]]
        default = default or name
        if chwbl_load_ok(by_id[name].in_flight, total, len(replicas), factor):
            return name
        i = (i + 1) % len(ring)
    assert default is not None
    return default


@settings(max_examples=150, deadline=None)
@given(
    replicas=replica_sets,
    prefixes=st.lists(st.text(max_size=120), min_size=1, max_size=5),
    percentage=st.integers(100, 300),
)
def test_chwbl_is_kubeais_lookup(replicas: list[ReplicaLoad], prefixes: list[str], percentage: int) -> None:
    router = CHWBL(mean_load_percentage=percentage, replication=8)
    state = router.new_state()
    for seq, prefix in enumerate(prefixes):
        route = router.choose(replicas, RouteRequest(seq, prefix), state)
        assert route is not None
        assert route.replica_id == kubeai_chwbl(replicas, prefix, 8, percentage / 100)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from([*NAMES, "sessions"]),
    steps=st.lists(
        st.tuples(replica_sets, prompts, st.none() | st.sampled_from("xyz")), min_size=1, max_size=25
    ),
)
def test_every_router_picks_a_given_replica(name: str, steps) -> None:
    router = SessionAffinity(PrefixAware()) if name == "sessions" else router_for(name)
    state = router.new_state()
    for seq, (replicas, blocks, session) in enumerate(steps):
        route = router.choose(replicas, RouteRequest(seq, str(blocks[:1]), blocks, session), state)
        assert route is not None and route.replica_id in {r.replica_id for r in replicas}


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(replica_sets, prompts), min_size=1, max_size=25))
def test_prefix_aware_stays_within_its_load_bound(steps) -> None:
    router = PrefixAware()
    state = router.new_state()
    for seq, (replicas, blocks) in enumerate(steps):
        route = router.choose(replicas, RouteRequest(seq, blocks=blocks), state)
        assert route is not None
        chosen = next(r for r in replicas if r.replica_id == route.replica_id)
        bound = load_bound(sum(map(load_of, replicas)), len(replicas), 1.25, 1)
        assert load_of(chosen) + 1 <= bound
        # What was routed is now in the chosen replica's estimate.
        assert not blocks or state.caches[chosen.replica_id].matched(blocks) == len(blocks)
