"""Queue quotas with cohorts, borrowing and reclaim: may a workload's GPUs be admitted now?

A queue has nominal GPU quota per model key (``*`` = any model). Queues of one cohort
lend each other their idle quota, so a busy team runs on a quiet team's GPUs; when
the quiet team's own work arrives it takes its quota back by preemption (reclaim).
Accounting follows Kueue: what a queue uses above its quota is borrowed, borrowed
quota only ever comes from idle quota of lending queues, and a gang's demand counts
whole. Everything here is a pure function of a frozen snapshot (``Usage``) and
returns an ``Outcome`` with the reasons users see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from aiplane.policies.scheduling.gpumodel import ANY, parse_spec, spec_matches
from aiplane.policies.scheduling.outcome import Mode, Outcome
from aiplane.policies.scheduling.preemption import plan_for_flavor
from aiplane.policies.scheduling.workload import EPS, RESOURCES, Demand, Workload

W = TypeVar("W", bound=Workload)


@dataclass(frozen=True)
class QueueSpec:
    """A queue's quota and how it shares within its cohort.

    ``borrowing_limit`` caps what the queue may use above its quota (None: no cap);
    ``lending=False`` keeps its idle quota for itself.
    """

    name: str
    quota: Mapping[str, float]
    cohort: str | None = None
    weight: float = 1.0
    borrowing: bool = True
    lending: bool = True
    borrowing_limit: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "quota", MappingProxyType(dict(self.quota)))
        bad = [k for k, v in self.quota.items() if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise ValueError(f"queue {self.name}: quota for {', '.join(bad)} must be a finite amount >= 0")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"queue {self.name}: weight must be > 0 (got {self.weight!r})")
        if self.borrowing_limit is not None and not self.borrowing_limit >= 0:
            raise ValueError(
                f"queue {self.name}: borrowing limit must be >= 0 (got {self.borrowing_limit!r})"
            )

    def flavors_for(self, demand: Demand) -> tuple[str, ...]:
        return flavors_for(demand, self.quota)


def flavors_for(demand: Demand, quota: Mapping[str, float]) -> tuple[str, ...]:
    """The quota keys a demand may count against, best first.

    Keys naming a model the demand accepts come first, in the queue's order, then ``*``.
    A demand without a model counts against ``*`` only: counting it against one model's
    quota would guess which GPUs its pods land on.
    """
    named: tuple[str, ...] = ()
    if parse_spec(demand.gpu_model):
        named = tuple(k for k in quota if k != ANY and spec_matches(demand.gpu_model, k))
    return (*named, ANY) if ANY in quota else named


def flavor_for(demand: Demand, quota: Mapping[str, float]) -> str | None:
    """The quota key a demand counts against first: its model's key, else ``*``, else None."""
    found = flavors_for(demand, quota)
    return found[0] if found else None


@dataclass(frozen=True)
class Room:
    """What one queue may still take of one quota key, and what stops it taking more."""

    queue: str
    flavor: str
    quota: float
    used: float
    own: float  # free nominal quota it may use now (its idle quota not lent out)
    borrow: float  # what it may take on top from the cohort's idle lending quota
    lent: float  # its idle quota that other queues of the cohort are using
    note: str  # why borrowing stops where it does, for reasons

    def fits(self, gpus: float) -> bool:
        return gpus <= self.own + self.borrow + EPS

    def borrowed_for(self, gpus: float) -> float:
        """How much of ``gpus`` would be borrowed (0 when its own quota covers them)."""
        extra = gpus - self.own
        return extra if extra > EPS else 0.0


@dataclass(frozen=True)
class Admitted:
    workload: Workload
    flavor: str | None  # the quota key its GPUs count against; None without GPUs


@dataclass(frozen=True)
class Usage:
    """What admitted workloads hold, per queue: GPUs per quota key, and every resource.

    Immutable: ``add`` and ``without`` return a new Usage, so what-ifs (preemption) run on
    a copy, never on the runtime's. The nominal and borrowed parts are derived as in
    Kueue: a queue borrows whatever it uses above its quota.
    """

    admitted: tuple[Admitted, ...] = ()
    _index: dict[str, Admitted] = field(init=False, repr=False, compare=False)
    _gpus: dict[tuple[str, str], float] = field(init=False, repr=False, compare=False)
    _totals: dict[tuple[str, str], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, Admitted] = {}
        gpus: dict[tuple[str, str], float] = {}
        totals: dict[tuple[str, str], float] = {}
        for entry in self.admitted:
            w = entry.workload
            if w.key in index:
                raise ValueError(f"workload {w.key} is admitted twice")
            if entry.flavor is None and w.demand.gpu > EPS:
                raise ValueError(f"workload {w.key} holds GPUs without a quota key")
            index[w.key] = entry
            if entry.flavor is not None:
                gpus[w.queue, entry.flavor] = gpus.get((w.queue, entry.flavor), 0.0) + w.demand.gpu
            for resource in RESOURCES:
                totals[w.queue, resource] = totals.get((w.queue, resource), 0.0) + w.demand[resource]
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_gpus", gpus)
        object.__setattr__(self, "_totals", totals)

    def add(self, workload: Workload, flavor: str | None) -> Usage:
        """With ``workload`` admitted, its whole demand counted against ``flavor``."""
        if workload.key in self._index:
            raise ValueError(f"workload {workload.key} is admitted twice")
        if flavor is None and workload.demand.gpu > EPS:
            raise ValueError(f"workload {workload.key} holds GPUs without a quota key")
        return self._derive((*self.admitted, Admitted(workload, flavor)), [Admitted(workload, flavor)], 1.0)

    def without(self, keys: Iterable[str]) -> Usage:
        gone = set(keys) & self._index.keys()
        if not gone:
            return self
        kept = tuple(a for a in self.admitted if a.workload.key not in gone)
        return self._derive(kept, [self._index[k] for k in gone], -1.0)

    def _derive(self, admitted: tuple[Admitted, ...], changed: list[Admitted], sign: float) -> Usage:
        """A new Usage from this one's totals updated by ``changed`` (O(changed), not O(all)):
        the runtime and the simulator add and remove one workload at a time."""
        out = object.__new__(Usage)
        index, gpus, totals = dict(self._index), dict(self._gpus), dict(self._totals)
        for entry in changed:
            w = entry.workload
            if sign > 0:
                index[w.key] = entry
            else:
                del index[w.key]
            if entry.flavor is not None:
                gpus[w.queue, entry.flavor] = gpus.get((w.queue, entry.flavor), 0.0) + sign * w.demand.gpu
            for resource in RESOURCES:
                totals[w.queue, resource] = totals.get((w.queue, resource), 0.0) + sign * w.demand[resource]
        object.__setattr__(out, "admitted", admitted)
        object.__setattr__(out, "_index", index)
        object.__setattr__(out, "_gpus", gpus)
        object.__setattr__(out, "_totals", totals)
        return out

    def __contains__(self, key: object) -> bool:
        return key in self._index

    @property
    def workloads(self) -> tuple[Workload, ...]:
        return tuple(a.workload for a in self.admitted)

    def flavor_of(self, key: str) -> str | None:
        return self._index[key].flavor

    def gpus(self, queue: str, flavor: str) -> float:
        return self._gpus.get((queue, flavor), 0.0)

    def total(self, queue: str, resource: str) -> float:
        """All of ``resource`` (gpu, cpu, memory) the queue's admitted workloads hold."""
        return self._totals.get((queue, resource), 0.0)

    def nominal(self, spec: QueueSpec, flavor: str) -> float:
        return min(self.gpus(spec.name, flavor), spec.quota.get(flavor, 0.0))

    def borrowed(self, spec: QueueSpec, flavor: str) -> float:
        return max(0.0, self.gpus(spec.name, flavor) - spec.quota.get(flavor, 0.0))

    def room(self, spec: QueueSpec, flavor: str, queues: Mapping[str, QueueSpec]) -> Room:
        """The queue's room in ``flavor``: its idle quota not lent out, plus what it may borrow.

        Borrowed GPUs come out of the idle quota of lending queues. So the queue can
        take at most ``pool`` = its own idle plus the other lenders' idle, minus all
        that is borrowed in the cohort. Its own idle is capped by that: idle quota that
        others borrowed is not free, and the lender takes it back by preemption.
        """
        peers = _peers(spec, queues)
        quota = spec.quota.get(flavor, 0.0)
        used = self.gpus(spec.name, flavor)
        idle = max(0.0, quota - used)
        lendable = sum(
            max(0.0, p.quota.get(flavor, 0.0) - self.gpus(p.name, flavor)) for p in peers if p.lending
        )
        borrowed_all = self.borrowed(spec, flavor) + sum(self.borrowed(p, flavor) for p in peers)
        pool = max(0.0, idle + lendable - borrowed_all)
        own = min(idle, pool)
        lent = idle - own
        notes = [f"{lent:g} of it lent within cohort {spec.cohort}"] if lent > EPS else []
        borrow = 0.0
        if spec.cohort is None:
            notes.append("no cohort to borrow from")
        elif not spec.borrowing:
            notes.append("borrowing disabled")
        else:
            by_cohort = pool - own
            limit = math.inf if spec.borrowing_limit is None else spec.borrowing_limit
            by_limit = limit - self.borrowed(spec, flavor)
            if by_limit < by_cohort:
                notes.append(f"borrowing limit {limit:g}, {self.borrowed(spec, flavor):g} borrowed")
                borrow = max(0.0, by_limit)
            else:
                notes.append(f"borrowing: cohort {spec.cohort} has {by_cohort:g} idle")
                borrow = by_cohort
        return Room(spec.name, flavor, quota, used, own, borrow, lent, ", ".join(notes))


def _peers(spec: QueueSpec, queues: Mapping[str, QueueSpec]) -> list[QueueSpec]:
    """The other queues of ``spec``'s cohort (none without a cohort)."""
    if spec.cohort is None:
        return []
    return [q for q in queues.values() if q.cohort == spec.cohort and q.name != spec.name]


def _label(flavor: str) -> str:
    return "GPU" if flavor == ANY else flavor


def _state(room: Room, need: float) -> str:
    """``queue team-a: H100 quota 16/16 in use, needs 4 (borrowing: cohort research has 0 idle)``."""
    text = (
        f"queue {room.queue}: {_label(room.flavor)} quota {room.used:g}/{room.quota:g} in use, needs {need:g}"
    )
    return f"{text} ({room.note})" if room.note else text


def _fit(room: Room, need: float, spec: QueueSpec) -> Outcome:
    borrowed = room.borrowed_for(need)
    head = f"queue {room.queue}: {need:g} {_label(room.flavor)}"
    in_use = f"quota {room.used:g}/{room.quota:g} in use"
    if borrowed:
        reason = f"{head}, {borrowed:g} borrowed from cohort {spec.cohort} ({in_use})"
    else:
        reason = f"{head} fit its quota ({in_use})"
    return Outcome(Mode.Fit, (reason,), room.flavor, borrowed)


def admit(workload: Workload, queues: Mapping[str, QueueSpec], usage: Usage) -> Outcome:
    """Whether ``workload`` may be admitted now, against which quota key, and why.

    Fit when the whole demand fits the queue's free quota, or with ``borrowed > 0`` its
    free quota plus idle quota of its cohort; Preempt when evicting ``victims`` makes it
    fit (see ``preemption``); NoFit otherwise. A gang is all or nothing: its demand is
    the total of its pods and is never admitted in part.
    """
    need = workload.demand.gpu
    if need <= EPS:
        return Outcome(Mode.Fit, ("no GPUs requested",))
    if workload.key in usage:
        return Outcome(Mode.Fit, ("already admitted",), usage.flavor_of(workload.key))
    spec = queues.get(workload.queue)
    if spec is None:
        return Outcome(Mode.NoFit, (f"queue {workload.queue!r} does not exist",))
    flavors = spec.flavors_for(workload.demand)
    if not flavors:
        model = workload.demand.gpu_model or "GPUs of any model"
        return Outcome(Mode.NoFit, (f"queue {spec.name!r} has no quota for {model}",))
    rooms = [usage.room(spec, flavor, queues) for flavor in flavors]
    fitting = [r for r in rooms if r.fits(need)]
    if fitting:  # the first key that needs no borrowing, else the first key
        return _fit(min(fitting, key=lambda r: r.borrowed_for(need) > 0), need, spec)
    for room in rooms:
        victims = plan_for_flavor(workload, room.flavor, usage.workloads, queues, usage)
        if victims:
            return _preempt(workload, room, victims, queues, usage)
    return Outcome(Mode.NoFit, (*(_state(r, need) for r in rooms), "preemption cannot make room"))


def _preempt(
    workload: Workload, room: Room, victims: tuple[str, ...], queues: Mapping[str, QueueSpec], usage: Usage
) -> Outcome:
    spec = queues[workload.queue]
    need = workload.demand.gpu
    after = usage.without(victims).room(spec, room.flavor, queues)
    by_key = {w.key: w for w in usage.workloads}
    freed = sum(by_key[k].demand.gpu for k in victims)
    what = f"preempting {len(victims)} workload(s) frees {freed:g} {_label(room.flavor)}"
    if any(by_key[k].queue != spec.name for k in victims):
        what += f", reclaiming quota lent within cohort {spec.cohort}"
    return Outcome(Mode.Preempt, (_state(room, need), what), room.flavor, after.borrowed_for(need), victims)


def dominant_share(
    queue: str, queues: Mapping[str, QueueSpec], usage: Usage, capacity: Mapping[str, float] | None = None
) -> float:
    """The queue's DRF share in its cohort, divided by its weight (inf for an unknown queue).

    The share of a resource is the queue's usage over the cohort's total of it: for GPUs
    the cohort's quota, for CPU and memory (which have no quota) what the cohort uses.
    ``capacity`` overrides those totals (a runtime that knows its nodes passes them).
    """
    spec = queues.get(queue)
    if spec is None:
        return math.inf
    members = [spec, *_peers(spec, queues)]
    shares = []
    for resource in RESOURCES:
        if capacity is not None and resource in capacity:
            total = capacity[resource]
        elif resource == "gpu":
            total = sum(sum(m.quota.values()) for m in members)
        else:
            total = sum(usage.total(m.name, resource) for m in members)
        if total > EPS:
            shares.append(usage.total(spec.name, resource) / total)
    return max(shares, default=0.0) / spec.weight


def fair_order(
    pending: Iterable[W],
    queues: Mapping[str, QueueSpec],
    usage: Usage,
    capacity: Mapping[str, float] | None = None,
) -> list[W]:
    """Pending workloads in the order to try them: priority (high first), then the queue's
    weighted dominant share (queues below their share first), then age, then key."""
    shares: dict[str, float] = {}

    def share(queue: str) -> float:
        if queue not in shares:
            shares[queue] = dominant_share(queue, queues, usage, capacity)
        return shares[queue]

    return sorted(pending, key=lambda w: (-w.priority, share(w.queue), w.created, w.key))
