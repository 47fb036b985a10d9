"""Load-only routers: least-load and power-of-two-choices. Stateless.

Load is the gateway's in-flight count plus the engine's own queue when it reports one
(``load.load_of``). Ties are broken by the request's sequence number, so equal replicas
share work evenly instead of the first one taking everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiplane.policies.routing.base import ReplicaLoad, Route, RouteRequest
from aiplane.policies.routing.hashing import stable_hash
from aiplane.policies.routing.load import least_loaded, load_of


@dataclass(frozen=True)
class LeastLoad:
    """The replica with the fewest requests (in flight + engine queue); ties rotate on ``seq``."""

    name: str = "least-load"

    def new_state(self) -> None:
        return None

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: object) -> Route | None:
        if not replicas:
            return None
        best = least_loaded(replicas, request.seq)
        return Route(best.replica_id, f"least load: {load_of(best):g}")

    def forget(self, replica_id: str, state: object) -> None:
        return None


@dataclass(frozen=True)
class PowerOfTwo:
    """Two distinct candidates drawn by hashing ``seq``; the less loaded wins (the first on a tie).

    Mitzenmacher's power of two choices: near least-load's balance from two looks, and no
    herd onto one replica when every gateway's load view is equally stale.
    """

    name: str = "power-of-two"

    def new_state(self) -> None:
        return None

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: object) -> Route | None:
        if not replicas:
            return None
        n = len(replicas)
        h = stable_hash(f"p2c:{request.seq}")
        a = replicas[h % n]
        b = replicas[(h // n) % n] if n > 1 else a
        if b.replica_id == a.replica_id and n > 1:
            b = replicas[(h % n + 1) % n]
        best = a if load_of(a) <= load_of(b) else b
        return Route(best.replica_id, f"power of two: {load_of(a):g} vs {load_of(b):g}")

    def forget(self, replica_id: str, state: object) -> None:
        return None
