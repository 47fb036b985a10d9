"""The oracle router: it knows every replica's true prefix cache and backlog, as only the simulator can.

Among the replicas within a load bound (a replica over ``load_factor`` x the mean
in-flight is passed over, as consistent hashing with bounded loads does), it sends a
request where its prefill would finish first: the replica's prefill backlog (running
prefills plus its queue) plus the request's own work after the longest prefix that
replica truly caches, or will once the prompts already sent there are prefilled. Ties
go to the longer cached prefix, then the least loaded. A router that estimates caches
from what it routed can approach it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from aiplane.policies.routing import ReplicaLoad, Route, RouteRequest
from aiplane.sim.serve.replica import Replica
from aiplane.sim.serve.traces import BLOCK_TOKENS


@dataclass(frozen=True)
class Oracle:
    replicas: Mapping[str, Replica]
    load_factor: float = 1.25
    name: str = "oracle"

    def new_state(self) -> None:
        return None

    def forget(self, replica_id: str, state: None) -> None:
        return None

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: None) -> Route | None:
        if not replicas:
            return None
        n = len(replicas)
        total = sum(r.in_flight for r in replicas) + 1
        bound = max(1, math.ceil(self.load_factor * total / n))
        candidates = [r for r in replicas if r.in_flight + 1 <= bound] or replicas
        full = request.prompt_tokens // BLOCK_TOKENS
        best: tuple[float, int, int, int] | None = None
        chosen = candidates[0]
        for i, load in enumerate(candidates):
            replica = self.replicas[load.replica_id]
            hit_blocks = replica.expected_hit(request.blocks[:full])
            hit = min(hit_blocks * BLOCK_TOKENS, max(0, request.prompt_tokens - 1))
            own = replica.profile.prefill_work(request.prompt_tokens, hit)
            backlog = replica.pending + replica.waiting_work + own
            key = (backlog, -hit_blocks, load.in_flight, (i - request.seq) % n)
            if best is None or key < best:
                best, chosen = key, load
        assert best is not None
        return Route(
            chosen.replica_id, f"prefill done soonest: {best[0]:.0f} tokens of work, {-best[1]} cached blocks"
        )
