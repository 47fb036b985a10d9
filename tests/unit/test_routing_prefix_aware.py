"""aiplane's prefix-aware router and its per-replica cache estimate (``BlockLRU``)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter, OrderedDict, deque

import pytest

from aiplane.policies.routing import PrefixAware, ReplicaLoad, Route, Router, RouteRequest, router_for
from aiplane.policies.routing.block_cache import BlockLRU
from aiplane.policies.routing.load import load_bound, load_of
from aiplane.policies.routing.prefix_aware import PrefixAwareState


def chain(*texts: str) -> tuple[int, ...]:
    """Chained block hashes, as the gateway makes them: block i covers blocks 0..i."""
    out: list[int] = []
    digest = b""
    for text in texts:
        digest = hashlib.blake2b(digest + text.encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "big"))
    return tuple(out)


SYSTEM = [f"system prompt block {i}" for i in range(6)]
CONVERSATION = chain(*SYSTEM, "user: hi", "assistant: hello")  # 8 blocks
NEXT_TURN = chain(*SYSTEM, "user: hi", "assistant: hello", "user: more")  # shares all 8


def served(router: PrefixAware, state: PrefixAwareState, replicas: list[ReplicaLoad], blocks, seq=0) -> Route:
    route = router.choose(replicas, RouteRequest(seq, blocks=blocks), state)
    assert route is not None
    return route


def owned(replicas: list[ReplicaLoad], blocks: tuple[int, ...] = CONVERSATION):
    """A router and state where the replica that served ``blocks`` is returned too."""
    router = PrefixAware()
    state = router.new_state()
    owner = served(router, state, replicas, blocks).replica_id
    return router, state, owner


# -- the cache estimate ------------------------------------------------------------


def test_lru_evicts_the_oldest_blocks_at_capacity_tails_first() -> None:
    cache = BlockLRU(4)
    cache.add((1, 2, 3))
    assert cache.oldest() == [3, 2, 1]  # the first block is the most recent
    cache.add((7, 8))
    assert cache.oldest() == [2, 1, 8, 7] and 3 not in cache  # the tail of the older chain went first
    assert cache.matched((1, 2, 3)) == 2


def test_lru_use_refreshes_blocks() -> None:
    cache = BlockLRU(3)
    cache.add((1, 2))
    cache.add((5,))
    cache.add((1, 2))  # used again: now newer than 5
    cache.add((9,))
    assert cache.oldest() == [2, 1, 9] and len(cache) == 3


def test_matched_is_the_longest_cached_prefix_not_the_overlap() -> None:
    cache = BlockLRU(10)
    cache.add((1, 2, 3))
    assert cache.matched((1, 2, 3, 4)) == 3
    assert cache.matched((1, 9, 3)) == 1
    assert cache.matched((5, 2, 3)) == 0  # two blocks in common, none leading
    assert cache.matched(()) == 0


def test_lru_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        BlockLRU(0)


# -- choosing ----------------------------------------------------------------------


def test_a_request_sharing_a_long_prefix_goes_where_the_prefix_went() -> None:
    idle = [ReplicaLoad(r, 0) for r in "abc"]
    router, state, owner = owned(idle)
    # Other conversations land elsewhere (least load rotates on seq), and the owner keeps its own.
    for seq in range(1, 7):
        served(router, state, idle, chain(f"other system prompt {seq}", "x"), seq)
    assert served(router, state, idle, NEXT_TURN, 10) == Route(owner, "cached prefix: 8/9 blocks")
    # Recorded: the same prompt again is a whole hit.
    assert served(router, state, idle, NEXT_TURN, 11) == Route(owner, "cached prefix: 9/9 blocks")


def test_a_shared_system_prompt_alone_is_a_shorter_match() -> None:
    idle = [ReplicaLoad(r, 0) for r in "abc"]
    router, state, owner = owned(idle)
    other = chain(*SYSTEM, "user: something else")
    assert served(router, state, idle, other, 1) == Route(owner, "cached prefix: 6/7 blocks")


def test_the_owner_keeps_the_prefix_up_to_the_load_bound_then_is_passed_over() -> None:
    idle = [ReplicaLoad(r, 0) for r in "abc"]
    router, state, owner = owned(idle)
    others = [r for r in "abc" if r != owner]

    def with_owner_at(in_flight: int) -> list[ReplicaLoad]:
        return [ReplicaLoad(r, in_flight if r == owner else 0) for r in "abc"]

    # Owner at 2, total 2: bound ceil(1.25 * 3 / 3) + 1 = 3, and 2 + 1 <= 3.
    assert load_bound(2, 3, 1.25, 1) == 3
    assert served(router, state, with_owner_at(2), NEXT_TURN, 1).replica_id == owner
    # Owner at 3, total 3: bound ceil(1.25 * 4 / 3) + 1 = 3, and 3 + 1 > 3: the least loaded instead.
    assert load_bound(3, 3, 1.25, 1) == 3
    route = served(router, state, with_owner_at(3), NEXT_TURN, 2)
    assert route.replica_id in others and route.reason == "cached prefix only over load bound; least load"
    # The spill is recorded there: the next turn can use either replica's cache.
    assert state.caches[route.replica_id].matched(NEXT_TURN) == 9


def test_a_short_match_on_a_busy_replica_is_not_worth_it_a_long_one_is() -> None:
    def replicas(owner: str) -> list[ReplicaLoad]:
        # Total 5 over 3: bound ceil(1.25 * 6 / 3) + 1 = 4; the owner's 3 + 1 is within it.
        return [ReplicaLoad(r, 3 if r == owner else 1, slots=4) for r in "abc"]

    idle = [ReplicaLoad(r, 0, slots=4) for r in "abc"]
    router, state, owner = owned(idle, chain("only this block matches", "tail"))
    # 1 of 8 blocks, minus 0.5 * 3/4 = -0.25; the least loaded scores -0.5 * 1/4 = -0.125.
    short = chain("only this block matches", *SYSTEM, "x")
    route = served(router, state, replicas(owner), short, 1)
    assert route.replica_id != owner and route.reason == "cached prefix not worth the load; least load"
    # The whole prompt cached: 1 - 0.375 beats -0.125.
    router, state, owner = owned(idle)
    assert served(router, state, replicas(owner), CONVERSATION, 1) == Route(
        owner, "cached prefix: 8/8 blocks"
    )


def test_the_engines_queue_counts_against_a_replica() -> None:
    idle = [ReplicaLoad(r, 0, slots=4) for r in "abc"]
    prompt = chain("s0", "s1", "u0", "u1", "u2", "u3", "u4", "u5")
    short = chain("s0", "s1", "other", "x", "y", "z", "w", "v")  # 2 of 8 blocks cached

    def replicas(owner: str, waiting: float | None) -> list[ReplicaLoad]:
        return [ReplicaLoad(r, 2, waiting=waiting if r == owner else None, slots=4) for r in "abc"]

    router, state, owner = owned(idle, prompt)
    # 2/8 - 0.5 * 2/4 = 0 beats the least loaded's -0.25 ...
    assert served(router, state, replicas(owner, None), short, 1).replica_id == owner
    router, state, owner = owned(idle, prompt)
    # ... but not with 2 waiting: 2/8 - 0.25 - 1.0 * 2/4 = -0.5.
    assert served(router, state, replicas(owner, 2), short, 1).replica_id != owner


def test_a_nearly_full_kv_cache_counts_against_a_replica() -> None:
    idle = [ReplicaLoad(r, 0) for r in "abc"]
    prompt = chain("s0", "s1", "u0", "u1", "u2", "u3", "u4", "u5")
    short = chain("s0", "s1", "other", "x", "y", "z", "w", "v")

    def replicas(owner: str, kv: float) -> list[ReplicaLoad]:
        return [ReplicaLoad(r, 0, kv_cache=kv if r == owner else 0.1) for r in "abc"]

    router, state, owner = owned(idle, prompt)
    assert served(router, state, replicas(owner, 0.85), short, 1).replica_id == owner  # below 0.9: no penalty
    router, state, owner = owned(idle, prompt)
    # 2/8 - 0.5 * (0.99 - 0.9) / 0.1 = -0.2 < 0.
    assert served(router, state, replicas(owner, 0.99), short, 1).replica_id != owner


def test_nothing_cached_goes_to_the_least_loaded_rotating_and_is_recorded_there() -> None:
    router = PrefixAware()
    state = router.new_state()
    idle = [ReplicaLoad(r, 0) for r in "abc"]
    chosen = Counter[str]()
    for seq in range(300):
        blocks = chain(f"prompt {seq}", "tail")
        route = served(router, state, idle, blocks, seq)
        assert route.reason == "no cached prefix; least load"
        assert state.caches[route.replica_id].matched(blocks) == 2
        chosen[route.replica_id] += 1
    assert chosen == {"a": 100, "b": 100, "c": 100}
    busy = [ReplicaLoad("a", 2), ReplicaLoad("b", 0, waiting=1), ReplicaLoad("c", 1, waiting=2)]
    assert served(router, state, busy, chain("new"), 0) == Route("b", "no cached prefix; least load")


def test_forget_drops_the_replicas_estimate() -> None:
    idle = [ReplicaLoad(r, 0) for r in "abc"]
    router, state, owner = owned(idle)
    router.forget(owner, state)
    assert owner not in state.caches
    assert served(router, state, idle, NEXT_TURN, 1).reason == "no cached prefix; least load"


def test_the_estimates_capacity_is_a_parameter() -> None:
    one = [ReplicaLoad("only", 0)]
    first, second = chain("a", "b", "c", "d"), chain("e", "f", "g", "h")
    for cache_blocks, reason in [(4, "no cached prefix; least load"), (8, "cached prefix: 4/4 blocks")]:
        router = router_for("aiplane", cache_blocks=cache_blocks)
        state = router.new_state()
        served(router, state, one, first)
        served(router, state, one, second)
        assert served(router, state, one, first).reason == reason


def test_a_prefix_string_alone_is_one_pseudo_block() -> None:
    router = PrefixAware()
    state = router.new_state()
    idle = [ReplicaLoad(r, 0) for r in "abc"]
    owner = router.choose(idle, RouteRequest(0, "system: be brief"), state)
    again = router.choose(idle, RouteRequest(1, "system: be brief"), state)
    other = router.choose(idle, RouteRequest(1, "system: be verbose"), state)
    assert owner is not None and again == Route(owner.replica_id, "cached prefix: 1/1 blocks")
    assert other is not None and other.reason == "no cached prefix; least load"
    # Neither blocks nor prefix: nothing to remember.
    fresh = router.new_state()
    assert router.choose(idle, RouteRequest(0), fresh) == Route("a", "no cached prefix; least load")
    assert fresh.caches == {}


@pytest.mark.parametrize(
    "params", [{"cache_blocks": 0}, {"load_factor": 0.9}, {"bound_slack": -1}, {"kv_threshold": 1.0}]
)
def test_invalid_parameters_raise(params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PrefixAware(**params)  # type: ignore[arg-type]


# -- a small synthetic workload against a simulated true cache --------------------


def workload(n: int, seed: int, hot: tuple[float, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """Requests of a few shared 16-block system prompts, each with 2 blocks of its own.

    ``prefix`` is what KubeAI's CHWBL hashes for a chat: the first user message.
    """
    rng = random.Random(seed)
    prompts = 6
    weights = [*hot, *[(1 - sum(hot)) / (prompts - len(hot))] * (prompts - len(hot))]
    requests = []
    for i in range(n):
        p = rng.choices(range(prompts), weights)[0]
        blocks = chain(*[f"system {p} block {b}" for b in range(16)], f"user {i} a", f"user {i} b")
        requests.append((f"user message {i}", blocks))
    return requests


def replay(router: Router, requests, replicas: int = 4, capacity: int = 48, duration: int = 8):
    """Route ``requests``; each engine is a true LRU of ``capacity`` blocks, and each
    request stays in flight for the next ``duration`` arrivals. Returns the leading
    blocks found cached, the most requests one replica got, and every decision's
    (load, bound) at the replica chosen."""
    ids = [f"r{i}" for i in range(replicas)]
    true_cache: dict[str, OrderedDict[int, None]] = {r: OrderedDict() for r in ids}
    in_flight = dict.fromkeys(ids, 0)
    active: deque[str] = deque()
    state = router.new_state()
    hits, got, loads_at_choice = 0, Counter[str](), []
    for seq, (prefix, blocks) in enumerate(requests):
        if len(active) == duration:
            in_flight[active.popleft()] -= 1
        view = [ReplicaLoad(r, in_flight[r]) for r in ids]
        route = router.choose(view, RouteRequest(seq, prefix, blocks), state)
        assert route is not None
        rid = route.replica_id
        loads_at_choice.append((in_flight[rid], load_bound(sum(map(load_of, view)), replicas, 1.25, 1)))
        cache = true_cache[rid]
        for block in blocks:
            if block not in cache:
                break
            hits += 1
        for block in reversed(blocks):
            cache[block] = None
            cache.move_to_end(block)
        while len(cache) > capacity:
            cache.popitem(last=False)
        got[rid] += 1
        in_flight[rid] += 1
        active.append(rid)
    return hits, max(got.values()), loads_at_choice


def test_prefix_aware_beats_chwbl_on_shared_system_prompts() -> None:
    # Two hot system prompts (35% of requests each) and four cold ones (7.5% each): 96 blocks
    # of system prompts, where one engine caches 48. CHWBL spreads by the user message, so
    # every engine must cache every prompt; aiplane gives each prompt a home.
    requests = workload(2000, seed=7, hot=(0.35, 0.35))
    total = sum(len(b) for _, b in requests)
    aiplane_hits, aiplane_most, _ = replay(router_for("aiplane"), requests)
    chwbl_hits, _, _ = replay(router_for("chwbl"), requests)
    least_hits, _, _ = replay(router_for("least-load"), requests)
    assert aiplane_hits > 1.25 * chwbl_hits, (aiplane_hits / total, chwbl_hits / total)
    assert aiplane_hits > 1.25 * least_hits
    # ... and not by piling onto one replica: at most 35% of requests where 25% is even.
    assert aiplane_most < 0.35 * len(requests)


def test_one_hot_prefix_cannot_swamp_its_replica() -> None:
    requests = workload(1000, seed=3, hot=(1.0,))  # every request shares one system prompt
    _, most, loads_at_choice = replay(router_for("aiplane"), requests, duration=12)
    assert all(load + 1 <= bound for load, bound in loads_at_choice)
    assert max(load for load, _ in loads_at_choice) <= 5  # bound: ceil(1.25 * 12 / 4) + 1 = 5
    assert most < 0.4 * len(requests)
