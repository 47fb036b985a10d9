"""Load-blind baselines for the simulator: round-robin and (deterministic) random. Stateless.

Both index the list they are given, in its order, by the request's sequence number, so a
replay with the same requests makes the same choices; neither reads a global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiplane.policies.routing.base import ReplicaLoad, Route, RouteRequest
from aiplane.policies.routing.hashing import stable_hash


@dataclass(frozen=True)
class RoundRobin:
    """Replica ``seq mod n``: consecutive requests go to consecutive replicas."""

    name: str = "round-robin"

    def new_state(self) -> None:
        return None

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: object) -> Route | None:
        if not replicas:
            return None
        return Route(replicas[request.seq % len(replicas)].replica_id, "round robin")

    def forget(self, replica_id: str, state: object) -> None:
        return None


@dataclass(frozen=True)
class Random:
    """A uniform pick by a hash of ``seq`` (and ``seed``): random-looking, yet reproducible."""

    name: str = "random"
    seed: int = 0

    def new_state(self) -> None:
        return None

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: object) -> Route | None:
        if not replicas:
            return None
        h = stable_hash(f"random:{self.seed}:{request.seq}")
        return Route(replicas[h % len(replicas)].replica_id, "random")

    def forget(self, replica_id: str, state: object) -> None:
        return None
