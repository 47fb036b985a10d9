"""KubeAI's ``PrefixHash`` strategy: consistent hashing with bounded loads (CHWBL) on the prompt prefix.

Reproduced from KubeAI (github.com/substratusai/kubeai), ``internal/loadbalancer/balance_chwbl.go``
(``chwblGetAddr``, ``chwblAddEndpoint``, ``chwblSearch``, ``chwblLoadOK``) and ``group.go``
(``getBestAddr``), with the defaults of ``api/k8s/v1/model_types.go`` (``PrefixHash``:
``meanLoadFactor`` 125, ``replication`` 256, ``prefixCharLength`` 100) and the strategy as
its docs describe it (``docs/concepts/load-balancing.md``: "Requests with the same hash
value are routed to the same replica, except when that replica's in-flight requests exceed
the overall average by a configurable percentage"). The algorithm is Mirrokni, Thorup and
Zadimoghaddam's, "Consistent Hashing with Bounded Loads" (SODA 2018; Google Research blog,
2017).

* Ring: each replica is hashed ``replication`` times, point ``i`` being the hash of the
  replica's name followed by ``i`` in decimal (KubeAI: ``fmt.Sprintf("%s%d", name, i)``).
* Lookup: hash the first ``prefix_char_length`` characters of the prompt (KubeAI hashes
  the LoRA adapter's name and that prefix; aiplane has no adapters), take the first point
  at or after it (wrapping), and walk clockwise to the first replica whose load is OK.
* Load OK (``chwbl_load_ok``): true when nothing is in flight anywhere; else
  ``load + 1 <= (total + 1) / n * mean_load_percentage / 100``, as floats. KubeAI does not
  round the threshold up (the paper's ``ceil``): with 9 in flight over 3 replicas the
  threshold is 4.17, so a replica with 4 is over it.
* Fallback: when every replica is over the bound, the prefix's owner (the first replica
  on the walk: KubeAI's "default endpoint"), not the least loaded.
* Load is the gateway's own in-flight count (KubeAI's ``inFlight``); the engine's queue
  is not consulted.

Differences, none of which changes a choice: xxHash64 is replaced by ``hashing.stable_hash``
(so the points differ from KubeAI's, the distribution does not); the walk skips replicas
it has already checked and stops once all were (KubeAI re-checks them, with the same result).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from aiplane.policies.routing.base import ReplicaLoad, Route, RouteRequest
from aiplane.policies.routing.hashing import stable_hash


def chwbl_load_ok(load: float, total: float, replicas: int, load_factor: float) -> bool:
    """KubeAI's ``chwblLoadOK``: may a replica with ``load`` take one more? The "+1"s count it."""
    if total == 0:
        return True
    return load + 1 <= (total + 1) / replicas * load_factor


def ring_points(replica_id: str, replication: int) -> list[tuple[int, str]]:
    """A replica's points on the ring (KubeAI's ``chwblHashEndpointReplica``)."""
    return [(stable_hash(f"{replica_id}{i}"), replica_id) for i in range(replication)]


@dataclass(frozen=True)
class HashRing:
    """Sorted points and, at the same index, the replica each belongs to."""

    points: tuple[int, ...] = ()
    owners: tuple[str, ...] = ()
    members: frozenset[str] = frozenset()

    @classmethod
    def of(cls, replica_ids: Iterable[str], replication: int) -> HashRing:
        return cls().with_members(replica_ids, replication)

    def with_members(self, replica_ids: Iterable[str], replication: int) -> HashRing:
        """This ring plus the points of the replicas it lacks (only those are hashed)."""
        new = set(replica_ids) - self.members
        if not new:
            return self
        pairs = [*zip(self.points, self.owners, strict=True)]
        for rid in sorted(new):
            pairs.extend(ring_points(rid, replication))
        pairs.sort()
        return HashRing(tuple(p for p, _ in pairs), tuple(o for _, o in pairs), self.members | new)

    def without(self, replica_id: str) -> HashRing:
        if replica_id not in self.members:
            return self
        kept = [(p, o) for p, o in zip(self.points, self.owners, strict=True) if o != replica_id]
        return HashRing(tuple(p for p, _ in kept), tuple(o for _, o in kept), self.members - {replica_id})

    def walk(self, key_hash: int) -> Iterable[str]:
        """Replica ids clockwise from the first point at or after ``key_hash``, each once."""
        n = len(self.points)
        start = bisect.bisect_left(self.points, key_hash)
        seen: set[str] = set()
        for step in range(n):
            owner = self.owners[(start + step) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.members):
                    return


@dataclass
class CHWBLState:
    """The ring, kept between requests and patched only when the replica set changes.

    It holds every replica seen and not forgotten, so a replica that drops out of one
    call's list (its slots full) and comes back costs no rehash; a lookup skips ring
    members not in the call's list, which gives exactly the ring of that list. Once more
    than half the members are absent, the ring is rebuilt from the list.
    """

    ring: HashRing = field(default_factory=HashRing)

    def ring_for(self, replica_ids: Collection[str], replication: int) -> HashRing:
        ring = self.ring
        if not ring.members.issuperset(replica_ids):
            if len(ring.members | set(replica_ids)) > 2 * len(replica_ids):
                ring = HashRing()
            ring = self.ring = ring.with_members(replica_ids, replication)
        return ring


@dataclass(frozen=True)
class CHWBL:
    """Consistent hashing with bounded loads over the prompt prefix, as KubeAI's ``PrefixHash``.

    ``mean_load_percentage`` (KubeAI's ``meanLoadFactor``, default 125): how far above the
    mean a replica may go, in percent; 125 is the paper's and KubeAI's widely used value.
    ``replication`` (default 256): points per replica; more spreads prefixes more evenly,
    at a larger ring. ``prefix_char_length`` (default 100): characters of the prompt hashed.
    """

    name: str = "chwbl"
    mean_load_percentage: int = 125
    replication: int = 256
    prefix_char_length: int = 100

    def __post_init__(self) -> None:
        if self.mean_load_percentage < 100:  # KubeAI's CRD: Minimum=100
            raise ValueError(f"mean_load_percentage must be at least 100 (got {self.mean_load_percentage})")
        if self.replication < 1 or self.prefix_char_length < 0:
            raise ValueError("replication must be at least 1 and prefix_char_length not negative")

    def new_state(self) -> CHWBLState:
        return CHWBLState()

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: CHWBLState) -> Route | None:
        if not replicas:
            return None
        by_id = {r.replica_id: r for r in replicas}
        ring = state.ring_for(by_id.keys(), self.replication)
        total = sum(r.in_flight for r in by_id.values())
        factor = self.mean_load_percentage / 100
        owner: str | None = None
        checked = 0
        for rid in ring.walk(stable_hash(request.prefix[: self.prefix_char_length])):
            replica = by_id.get(rid)
            if replica is None:  # on the ring, not offered this time
                continue
            if owner is None:
                owner = rid
            if chwbl_load_ok(replica.in_flight, total, len(by_id), factor):
                if rid == owner:
                    return Route(rid, "prefix owner within load bound")
                return Route(rid, "prefix owner over load bound; next on ring")
            checked += 1
            if checked == len(by_id):
                break
        assert owner is not None  # every offered replica is on the ring
        return Route(owner, "all over load bound; prefix owner")

    def forget(self, replica_id: str, state: CHWBLState) -> None:
        state.ring = state.ring.without(replica_id)
