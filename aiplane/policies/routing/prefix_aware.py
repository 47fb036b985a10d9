"""aiplane's router: to the replica likely caching the longest prefix of the prompt, within a load bound.

Each replica's prefix cache is estimated from the requests routed to it (``BlockLRU``
over the chained block hashes of ``RouteRequest.blocks``). A request scores each replica
by the fraction of its leading blocks the replica probably holds, minus a load penalty;
replicas over a bounded-load cap (as in consistent hashing with bounded loads) are not
candidates, so a hot prefix cannot swamp the replica that caches it. llm-d's finding
(prefix-cache scoring needs load scorers beside it or it fails under load) and SGLang's
cache-aware router (cache affinity unless the load is imbalanced) make the same point.

Per decision: one lookup per replica plus one per block it matches to score (typically
one replica matches long, so about blocks + replicas), and O(blocks) to record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aiplane.policies.routing.base import ReplicaLoad, Route, RouteRequest
from aiplane.policies.routing.block_cache import BlockLRU
from aiplane.policies.routing.hashing import stable_hash
from aiplane.policies.routing.load import least_loaded, load_bound, load_of


@dataclass
class PrefixAwareState:
    """Each replica's estimated prefix cache, by replica id."""

    caches: dict[str, BlockLRU] = field(default_factory=dict)


def request_blocks(request: RouteRequest) -> Sequence[int]:
    """The request's blocks; with none, its ``prefix`` hashed into one pseudo-block."""
    if request.blocks:
        return request.blocks
    if request.prefix:
        return (stable_hash(f"prefix:{request.prefix}"),)
    return ()


@dataclass(frozen=True)
class PrefixAware:
    """Longest estimated cached prefix minus load, among the replicas within a load bound.

    A replica is a candidate when ``load + 1 <= ceil(load_factor * (total + 1) / n) +
    bound_slack`` (load = in flight + the engine's queue). Its score is
    ``matched / len(blocks)`` (0..1; longest cached prefix, not set overlap) minus

        load_weight * in_flight / cap + waiting_weight * waiting / cap
        + kv_weight * (kv_cache - kv_threshold) / (1 - kv_threshold)   [when kv_cache > kv_threshold]

    where ``cap`` is the replica's ``slots`` when known, else the load bound. The best
    score wins; when it is a replica with nothing cached (or no replica has any of the
    prompt), the least loaded candidate does, ties rotating on ``seq``. The chosen replica
    then records the request's blocks.

    Defaults, and why:

    * ``cache_blocks`` 512: 262,144 tokens at 512 tokens a block, the KV cache of an 8B
      model (128 KiB a token in fp16) in about 32 GiB, a large share of an 80 GB GPU after
      weights. Set it to the engine's real KV capacity divided by the block size the
      gateway hashes with; an estimate larger than the real cache claims hits it lost.
    * ``load_factor`` 1.25: CHWBL's (the paper's and KubeAI's 125%): at most 25% over the
      mean, which bounds how much a hot prefix piles onto one replica.
    * ``bound_slack`` 1: one request on top of the rounded bound. Without it, at low load
      the second concurrent request sharing a prefix leaves the replica caching it though
      that replica is nowhere near busy; at high load it adds only 1/mean to the factor.
    * ``load_weight`` 0.5: a replica with every slot busy gives up half a prompt's worth of
      hits, so a near-full prefix match still beats an idle replica, a one-block match
      (say, just the system prompt) does not beat a replica that is half as busy.
    * ``waiting_weight`` 1.0: a request queued inside the engine delays every request behind
      it by a whole service time, worse than a busy slot; a full batch waiting outweighs
      any hit, since a prefill skipped saves less than a queue's wait.
    * ``kv_threshold`` 0.9, ``kv_weight`` 0.5: above 90% KV use an engine starts evicting
      (its cached prefixes too, so the estimate overclaims) and soon preempting; full KV
      costs as much as a fully busy replica.
    """

    name: str = "aiplane"
    cache_blocks: int = 512
    load_factor: float = 1.25
    bound_slack: int = 1
    load_weight: float = 0.5
    waiting_weight: float = 1.0
    kv_threshold: float = 0.9
    kv_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.cache_blocks < 1:
            raise ValueError(f"cache_blocks must be at least 1 (got {self.cache_blocks})")
        if self.load_factor < 1 or self.bound_slack < 0:
            raise ValueError("load_factor must be at least 1 and bound_slack not negative")
        if not 0 <= self.kv_threshold < 1:
            raise ValueError(f"kv_threshold must be in [0, 1) (got {self.kv_threshold})")

    def new_state(self) -> PrefixAwareState:
        return PrefixAwareState()

    def penalty(self, replica: ReplicaLoad, bound: int) -> float:
        """The load part of the score, in the same unit as a whole prompt's hit (1.0)."""
        cap = replica.slots if replica.slots else bound
        cost = self.load_weight * replica.in_flight / cap
        if replica.waiting:
            cost += self.waiting_weight * replica.waiting / cap
        if replica.kv_cache is not None and replica.kv_cache > self.kv_threshold:
            cost += self.kv_weight * (replica.kv_cache - self.kv_threshold) / (1 - self.kv_threshold)
        return cost

    def choose(
        self, replicas: list[ReplicaLoad], request: RouteRequest, state: PrefixAwareState
    ) -> Route | None:
        if not replicas:
            return None
        blocks = request_blocks(request)
        bound = load_bound(
            sum(load_of(r) for r in replicas), len(replicas), self.load_factor, self.bound_slack
        )
        caches = state.caches
        matched = {
            r.replica_id: caches[r.replica_id].matched(blocks) if blocks and r.replica_id in caches else 0
            for r in replicas
        }
        candidates = [r for r in replicas if load_of(r) + 1 <= bound] or replicas
        fallback = least_loaded(candidates, request.seq)
        best: list[ReplicaLoad] = []
        best_score = -self.penalty(fallback, bound)  # what the least loaded, cache or not, scores
        for r in candidates:
            if m := matched[r.replica_id]:
                score = m / len(blocks) - self.penalty(r, bound)
                if score > best_score:
                    best, best_score = [r], score
                elif score == best_score and best:
                    best.append(r)
        if best:
            chosen = best[request.seq % len(best)]  # equal scores rotate, like equal loads
            reason = f"cached prefix: {matched[chosen.replica_id]}/{len(blocks)} blocks"
            return self._routed(chosen, blocks, state, reason)
        top = max(matched.values())
        if top and all(matched[r.replica_id] < top for r in candidates):
            reason = "cached prefix only over load bound; least load"
        elif top:
            reason = "cached prefix not worth the load; least load"
        else:
            reason = "no cached prefix; least load"
        return self._routed(fallback, blocks, state, reason)

    def _routed(
        self, replica: ReplicaLoad, blocks: Sequence[int], state: PrefixAwareState, reason: str
    ) -> Route:
        if blocks:
            cache = state.caches.get(replica.replica_id)
            if cache is None:
                cache = state.caches[replica.replica_id] = BlockLRU(self.cache_blocks)
            cache.add(blocks)
        return Route(replica.replica_id, reason)

    def record(self, replica_id: str, request: RouteRequest, state: PrefixAwareState) -> None:
        """``replica_id`` got ``request`` by another's decision: it caches the blocks now."""
        self._routed(ReplicaLoad(replica_id, 0), request_blocks(request), state, "")

    def forget(self, replica_id: str, state: PrefixAwareState) -> None:
        state.caches.pop(replica_id, None)
