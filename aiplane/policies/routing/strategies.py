"""Routing strategies: least-load, power-of-two-choices and prefix-hash.

Ties are broken by the request's sequence number, so equal replicas share work evenly
instead of the first one taking everything.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from aiplane.policies.routing.base import ReplicaLoad, Route, RouteRequest


@dataclass(frozen=True)
class LeastLoad:
    name: str = "least-load"

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest) -> Route | None:
        if not replicas:
            return None
        least = min(r.in_flight for r in replicas)
        tied = [r for r in replicas if r.in_flight == least]
        best = tied[request.seq % len(tied)]  # rotate among the tied only: an even share
        return Route(best.replica_id, f"least in flight ({best.in_flight})")


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class PowerOfTwo:
    """Two candidates picked by hashing the sequence number; the less loaded wins."""

    name: str = "power-of-two"

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest) -> Route | None:
        if not replicas:
            return None
        n = len(replicas)
        h = _hash(f"p2c:{request.seq}")
        a = replicas[h % n]
        b = replicas[(h // n) % n] if n > 1 else a
        if b.replica_id == a.replica_id and n > 1:
            b = replicas[(h % n + 1) % n]
        best = a if a.in_flight <= b.in_flight else b
        return Route(best.replica_id, f"power of two: {a.in_flight} vs {b.in_flight}")


@dataclass(frozen=True)
class PrefixHash:
    """Rendezvous hashing on the prompt prefix, so one prefix reuses one replica's KV cache.

    Bounded load: a replica more than ``load_factor`` times the mean in-flight is skipped
    (consistent hashing with bounded loads), so a hot prefix cannot swamp one replica.
    """

    name: str = "prefix-hash"
    load_factor: float = 1.25

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest) -> Route | None:
        if not replicas:
            return None
        ranked = sorted(replicas, key=lambda r: _hash(f"{r.replica_id}|{request.prefix}"))
        total = sum(r.in_flight for r in replicas) + 1
        bound = max(1, math.ceil(self.load_factor * total / len(replicas)))
        for replica in ranked:
            if replica.in_flight + 1 <= bound:
                return Route(replica.replica_id, "prefix owner within load bound")
        best = min(ranked, key=lambda r: r.in_flight)
        return Route(best.replica_id, "all owners over load bound; least loaded")
