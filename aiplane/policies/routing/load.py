"""Load measures the routers share: a replica's load, the least loaded, the load bound."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aiplane.policies.routing.base import ReplicaLoad


def load_of(replica: ReplicaLoad) -> float:
    """Requests at a replica: the gateway's in flight plus the engine's own queue, if reported."""
    return replica.in_flight + (replica.waiting or 0.0)


def least_loaded(replicas: Sequence[ReplicaLoad], seq: int) -> ReplicaLoad:
    """The least loaded replica; ties rotate over ``seq`` so equal replicas share evenly.

    ``replicas`` must not be empty. One pass for the minimum, one for the tied.
    """
    least = min(load_of(r) for r in replicas)
    tied = [r for r in replicas if load_of(r) == least]
    return tied[seq % len(tied)]


def load_bound(total: float, replicas: int, load_factor: float, slack: int = 0) -> int:
    """The most requests a replica may hold, this one included, under a bounded-load rule.

    ``ceil(load_factor * (total + 1) / replicas) + slack``: consistent hashing with bounded
    loads (Mirrokni, Thorup and Zadimoghaddam, SODA 2018) caps every bin at ``(1 + eps)``
    times the mean, rounded up, counting the ball being placed. ``slack`` lets a replica
    hold a few more than that at low load, where the rounding alone would move a prefix
    off its owner at the second concurrent request.
    """
    return math.ceil(load_factor * (total + 1) / replicas) + slack
