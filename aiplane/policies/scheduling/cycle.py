"""One scheduling cycle: admit by queue, preempt, reserve, place. Pure, for every runtime.

The Kubernetes scheduler, the local runtime and the simulator hand over the same
snapshot, a :class:`Fleet` with every running pod bound on it, the queues, what runs
(:class:`Holder`) and what waits (:class:`Candidate`), and get decisions back as data:

* :class:`Start`: admit the workload (its quota key, what it borrows) and bind its pods
  where the placements say;
* :class:`Evict`: tell a victim to stop (the runtime gives it its checkpoint grace);
* :class:`Wait`: the one "why pending" line, quota and placement together, and the
  nodes reserved for it if it starved.

Order is Kueue's: workloads whose quota is already held first, then everything else by
:func:`~aiplane.policies.scheduling.quota.fair_order`'s key (priority, the queue's
weighted dominant share, with quota-free work at 0, then age). A workload must fit its
quota *and* the nodes at once, so an admitted gang never waits for GPUs its quota
promised. When it fits neither way by itself:

* quota short, :func:`~aiplane.policies.scheduling.quota.admit` may name victims (lower
  priority in its queue, or borrowers when it reclaims lent quota);
* nodes short, the fewest lower-priority workloads whose eviction lets the gang fit are
  chosen on a scratch copy (kube-scheduler's priority preemption, whole workloads);
* victims that are already stopping (:attr:`Holder.evicting`) are never chosen again, and
  a preemptor whose victims are still stopping waits instead of evicting more: the same
  eviction is never decided twice, and nothing is undone within a cycle;
* once they are gone, the preemptor is tried before any other new admission, so the room
  goes to it and not back to a victim that outranks it (a lender reclaiming from a
  higher-priority borrower): no eviction loop across cycles. The runtimes pass
  ``preempting`` for one cycle after the victims are gone for this.

Backfill is bounded. Smaller work may pass a gang that does not fit, but once the gang
has waited ``reserve_after_s`` it gets a reservation: the nodes where it fits once they
drain, those whose oldest workload is youngest first (job lengths are heavy-tailed: what
has run long tends to run on), then those closest to free. No workload of its priority
or lower may land there, so as their pods end the gang's room grows and it starts; it
can no longer starve behind its peers. Higher-priority work ignores the reservation, as
kube-scheduler's higher-priority pods ignore a lower one's nominated node: a
reservation never delays, nor shields from preemption, what outranks it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aiplane.policies.scheduling.fleet import MILLI, Eligibility, Fleet, Placement, PodShape
from aiplane.policies.scheduling.gangs import GangFit, place_gang
from aiplane.policies.scheduling.outcome import Mode
from aiplane.policies.scheduling.quota import Admitted, QueueSpec, Usage, admit, dominant_share
from aiplane.policies.scheduling.scorers import BestFit, Scorer
from aiplane.policies.scheduling.workload import EPS, Workload

RESERVE_AFTER_S = 300.0  # how long a gang may be passed by smaller work before it reserves nodes
MAX_VICTIM_CANDIDATES = 64  # bounds the what-ifs of one preemption search
MAX_RESERVATION_NODES = 256


@dataclass(frozen=True)
class Candidate:
    """A workload waiting to start: its quota identity and the pods it will run.

    ``eligible[i]`` says where pod ``i`` may go at all (taints, selectors, affinity);
    ``admitted`` means its quota is held already (its pods only need nodes); ``queued``
    False means it takes no quota (a Model replica): it is only placed.
    """

    workload: Workload
    pods: tuple[PodShape, ...]
    eligible: tuple[Eligibility | None, ...] = ()
    admitted: bool = False
    queued: bool = True
    waiting_s: float = 0.0

    @property
    def key(self) -> str:
        return self.workload.key


@dataclass(frozen=True)
class Holder:
    """A workload holding resources: its pods are bound on the fleet the cycle gets.

    ``flavor`` is the quota key it counts against (None: it takes no quota);
    ``evicting`` means it was told to stop and still holds what it had until it is gone.
    """

    workload: Workload
    flavor: str | None
    pods: tuple[tuple[PodShape, Placement], ...] = ()
    evicting: bool = False
    preemptible: bool = True

    @property
    def key(self) -> str:
        return self.workload.key


@dataclass(frozen=True)
class Start:
    key: str
    flavor: str | None
    borrowed: float
    placements: tuple[Placement, ...]
    reason: str


@dataclass(frozen=True)
class Evict:
    key: str
    by: str
    reason: str


@dataclass(frozen=True)
class Wait:
    """Why a workload waits. ``cause`` is what stops it: ``quota``, ``placement``,
    ``preemption`` (its victims are being evicted or still stopping) or ``stopping``
    (its own previous run still holds resources)."""

    key: str
    reason: str
    cause: str = "placement"
    reserved: tuple[int, ...] = ()  # node indexes held for it


@dataclass
class CycleResult:
    starts: list[Start] = field(default_factory=list)
    evictions: list[Evict] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    reservations: dict[str, tuple[int, ...]] = field(default_factory=dict)


def usage_of(holders: Sequence[Holder]) -> Usage:
    """Quota usage of the holders that take quota (stopping ones too, until they are gone)."""
    return Usage(tuple(Admitted(h.workload, h.flavor) for h in holders if h.flavor is not None))


def schedule(
    fleet: Fleet,
    queues: Mapping[str, QueueSpec],
    holders: Sequence[Holder],
    candidates: Sequence[Candidate],
    scorer: Scorer,
    rng: np.random.Generator,
    *,
    reservations: Mapping[str, tuple[int, ...]] | None = None,
    preempting: Mapping[str, Sequence[str]] | None = None,
    reserve_after_s: float = RESERVE_AFTER_S,
    max_reservations: int = 1,
) -> CycleResult:
    """Decide one cycle. ``fleet`` is not changed (starts are bound on a copy).

    ``reservations`` are those of earlier cycles (workload key -> node indexes): kept
    while their workload still waits. ``preempting`` maps a preemptor to the victims it
    already evicted in earlier cycles; while any of them still holds resources, it waits.
    """
    fleet = fleet.copy()
    usage = usage_of(holders)
    holding = {h.key: h for h in holders}
    result = CycleResult()
    priority_of = {c.key: c.workload.priority for c in candidates}
    reserved = {k: v for k, v in (reservations or {}).items() if k in priority_of}
    evicting = {h.key for h in holders if h.evicting}
    # who could be a victim, lowest priority first: a gang that fits nowhere looks only at
    # the prefix below its own priority, not at every holder (thousands of bound pods)
    victims_by_priority = sorted((h for h in holders if h.preemptible), key=lambda h: h.workload.priority)
    victim_priorities = [h.workload.priority for h in victims_by_priority]
    ready = sorted(
        (c for c in candidates if c.admitted), key=lambda c: (-c.workload.priority, c.workload.created, c.key)
    )
    # a preemptor whose victims are gone has the first turn at the room it made: otherwise a
    # victim that outranks it (a borrower reclaimed by a lender) takes it back, and is
    # reclaimed again the cycle after
    due = {k for k, vs in (preempting or {}).items() if vs and not any(v in holding for v in vs)}
    rest = _order([c for c in candidates if not c.admitted], queues, usage)
    rest.sort(key=lambda c: c.key not in due)  # stable: the fair order within each part
    for c in [*ready, *rest]:
        if c.key in holding and not c.admitted:  # its last run still holds what it had
            result.waits.append(Wait(c.key, "waiting for its previous run to stop", "stopping"))
            continue
        blocked_by = [v for v in (preempting or {}).get(c.key, ()) if v in holding]
        if blocked_by:
            result.waits.append(
                Wait(
                    c.key,
                    f"waiting for {len(blocked_by)} preempted workload(s) to stop: {', '.join(blocked_by)}",
                    "preemption",
                )
            )
            continue
        quota_victims: tuple[str, ...] = ()
        flavor: str | None = None
        borrowed = 0.0
        quota_reason = ""
        if c.queued and not c.admitted:
            outcome = admit(c.workload, queues, usage)
            if outcome.mode == Mode.NoFit:
                result.waits.append(Wait(c.key, outcome.reason, "quota"))
                continue
            if outcome.mode == Mode.Preempt:
                if evicting & set(outcome.victims):
                    result.waits.append(
                        Wait(c.key, f"{outcome.reason}; waiting for them to stop", "preemption")
                    )
                    continue
                # a victim started in this very cycle, or one that may not be preempted: no
                if any(v not in holding or not holding[v].preemptible for v in outcome.victims):
                    result.waits.append(Wait(c.key, f"{outcome.reason}; not preemptible now", "quota"))
                    continue
                quota_victims = outcome.victims
            flavor, borrowed, quota_reason = outcome.flavor, outcome.borrowed, outcome.reason
        elif c.admitted and c.key in holding:
            flavor = holding[c.key].flavor
        # kube-scheduler's rule for nominated pods: a reservation binds only work of
        # its own priority or lower; higher priority may land there (or preempt there)
        binding = {k: v for k, v in reserved.items() if k != c.key and priority_of[k] >= c.workload.priority}
        where = _eligibility(c, len(fleet), binding)
        scratch = _without(fleet, [holding[v] for v in quota_victims]) if quota_victims else fleet
        placed = place_gang(scratch, c.pods, scorer, rng, where)
        node_victims: list[str] = []
        if not isinstance(placed, GangFit):
            below = victims_by_priority[: bisect_left(victim_priorities, c.workload.priority)]
            found = _node_victims(scratch, c, where, below, evicting | set(quota_victims), scorer, rng)
            if found is not None:
                node_victims = found
            elif quota_victims:  # evicting them would free quota the gang could not use anyway
                quota_victims = ()
                placed = place_gang(fleet, c.pods, scorer, rng, where)
        victims = [*quota_victims, *node_victims]
        if victims:
            for v in victims:
                why = f"preempted by {c.key} (priority {c.workload.priority}"
                why += f" > {holding[v].workload.priority})" if v in node_victims else ", quota)"
                result.evictions.append(Evict(v, c.key, why))
                evicting.add(v)
            reason = f"preempting {len(victims)} workload(s): {', '.join(victims)}"
            result.waits.append(
                Wait(c.key, f"{quota_reason}; {reason}" if quota_reason else reason, "preemption")
            )
            continue
        if isinstance(placed, GangFit):
            for pod, placement in zip(c.pods, placed.placements, strict=True):
                fleet.bind(pod, placement)
                scorer.bound(placement.node)
            if c.queued and not c.admitted:
                usage = usage.add(c.workload, flavor)
            reserved.pop(c.key, None)
            nodes = sorted({fleet.names[p.node] for p in placed.placements})
            where_text = f"on {', '.join(nodes[:8])}" + (f" (+{len(nodes) - 8})" if len(nodes) > 8 else "")
            reason = f"{quota_reason}; {where_text}" if quota_reason else where_text
            result.starts.append(Start(c.key, flavor, borrowed, placed.placements, reason))
            continue
        reason = f"{quota_reason}; {placed.reason}" if quota_reason else placed.reason
        if c.key not in reserved and c.waiting_s >= reserve_after_s and len(reserved) < max_reservations:
            nodes_for = reserve(fleet, c, where, drain_order(fleet, holders))
            if nodes_for:
                reserved[c.key] = nodes_for
        if c.key in reserved:
            names = [fleet.names[i] for i in reserved[c.key]]
            shown = ", ".join(names[:8]) + (f" (+{len(names) - 8})" if len(names) > 8 else "")
            reason += f"; waited {c.waiting_s:.0f}s, reserved {shown}"
        result.waits.append(Wait(c.key, reason, "placement", reserved.get(c.key, ())))
    result.reservations = reserved
    return result


def _order(candidates: Sequence[Candidate], queues: Mapping[str, QueueSpec], usage: Usage) -> list[Candidate]:
    """Priority first, whether or not a workload takes quota; then the queue's weighted
    dominant share (quota-free work counts as 0), then age: ``fair_order``'s key."""
    shares: dict[str, float] = {}

    def share(c: Candidate) -> float:
        if not c.queued:
            return 0.0
        if c.workload.queue not in shares:
            shares[c.workload.queue] = dominant_share(c.workload.queue, queues, usage)
        return shares[c.workload.queue]

    return sorted(candidates, key=lambda c: (-c.workload.priority, share(c), c.workload.created, c.key))


def _eligibility(
    c: Candidate, nodes: int, binding: Mapping[str, tuple[int, ...]]
) -> list[Eligibility | None]:
    """Where ``c``'s pods may go: their own eligibility, off the GPU nodes ``binding`` holds."""
    where: list[Eligibility | None] = list(c.eligible) if c.eligible else [None] * len(c.pods)
    held = [key for key, at in binding.items() if at]
    if not held:
        return where
    others = np.zeros(nodes, dtype=bool)
    for key in held:
        others[list(binding[key])] = True
    holder = held[0]
    out: list[Eligibility | None] = []
    for pod, e in zip(c.pods, where, strict=True):
        if not (pod.gpus and pod.gpu_milli):  # a reservation holds GPUs; CPU-only pods pass
            out.append(e)
            continue
        base = e or Eligibility(np.ones(len(others), dtype=bool))
        out.append(base.restricted(~others, f"reserved for {holder}"))
    return out


def _without(fleet: Fleet, gone: Sequence[Holder]) -> Fleet:
    scratch = fleet.copy()
    for h in gone:
        for pod, placement in h.pods:
            scratch.unbind(pod, placement)
    return scratch


def _node_victims(
    fleet: Fleet,
    c: Candidate,
    where: Sequence[Eligibility | None],
    lower: Sequence[Holder],
    taken: set[str],
    scorer: Scorer,
    rng: np.random.Generator,
) -> list[str] | None:
    """The fewest lower-priority workloads whose eviction lets ``c``'s gang fit, or None.

    ``lower`` are the preemptible holders of lower priority than ``c``. Candidates are
    those with a pod on a node some pod of ``c`` may use, lowest priority first, then
    newest; added until the gang fits on the scratch copy, then every victim the fit does
    not need is dropped again (newest first).
    """
    if not lower:
        return None
    usable = np.zeros(len(fleet), dtype=bool)
    for pod, e in zip(c.pods, where, strict=True):
        ok = fleet.access(pod.gpu_spec) if pod.gpus and pod.gpu_milli else np.ones(len(fleet), dtype=bool)
        usable |= ok & (e.mask if e is not None else True)
    pool = [h for h in lower if h.key not in taken and any(usable[p.node] for _, p in h.pods)]
    if not pool:
        return None
    pool.sort(key=lambda h: (h.workload.priority, -h.workload.created, h.key))
    pool = pool[:MAX_VICTIM_CANDIDATES]
    if not isinstance(
        place_gang(_without(fleet, pool), c.pods, scorer, rng, where, explained=False), GangFit
    ):
        return None  # not even with all of them gone: one what-if, not one per candidate
    scratch = fleet.copy()
    removed: list[Holder] = []
    for h in pool:
        for pod, placement in h.pods:
            scratch.unbind(pod, placement)
        removed.append(h)
        if isinstance(place_gang(scratch, c.pods, scorer, rng, where, explained=False), GangFit):
            break
    else:
        return None
    for h in reversed(list(removed)):  # drop what the fit does not need
        trial = scratch.copy()
        for pod, placement in h.pods:
            trial.bind(pod, placement)
        if isinstance(place_gang(trial, c.pods, scorer, rng, where, explained=False), GangFit):
            scratch = trial
            removed.remove(h)
    return [h.key for h in removed]


def drain_order(fleet: Fleet, holders: Sequence[Holder]) -> np.ndarray:
    """Per node, a key that is lower the sooner the node is likely to drain.

    Run times are not known in advance, and GPU job lengths are heavy-tailed (the Alibaba
    trace's run from seconds to days): the longer a job has run, the longer it is likely
    to go on. So a node's key is the age of the oldest workload holding GPUs there (by
    its creation time); nodes without one (empty, or holding only work started this
    cycle) come first.
    """
    oldest = np.full(len(fleet), np.inf)
    for h in holders:
        for node in {p.node for pod, p in h.pods if pod.gpus and pod.gpu_milli}:
            oldest[node] = min(oldest[node], h.workload.created)
    return -oldest


def reserve(
    fleet: Fleet, c: Candidate, where: Sequence[Eligibility | None], drain: np.ndarray
) -> tuple[int, ...]:
    """The fewest nodes on which ``c``'s gang fits once they drain, those likely to drain
    first (``drain``, lower first: :func:`drain_order`), then with most GPUs free.

    () when it would not fit even on empty nodes (wrong model, too big): a reservation
    would only block others for nothing.
    """
    usable = np.ones(len(fleet), dtype=bool)
    for pod, e in zip(c.pods, where, strict=True):
        if pod.gpus and pod.gpu_milli:
            usable &= fleet.access(pod.gpu_spec) & (fleet.gpu_count >= pod.gpus)
        if e is not None:
            usable &= e.mask
    order = [int(i) for i in np.flatnonzero(usable)]
    if not order:
        return ()
    free = fleet.gpu_free.sum(axis=1)
    order.sort(key=lambda i: (float(drain[i]), -int(free[i]), int(fleet.rank[i])))
    order = order[:MAX_RESERVATION_NODES]
    need = sum(p.total_milli for p in c.pods)
    per_node = max(int(fleet.gpu_count[order].max()) * MILLI, 1)
    k = max(1, math.ceil(need / per_node - EPS))
    first_fit = BestFit()  # any fit will do: the nodes are only held, not bound
    while k <= len(order):
        prefix = order[:k]
        trial = fleet.emptied(prefix)
        only = np.zeros(len(fleet), dtype=bool)
        only[prefix] = True
        limited = [
            (e or Eligibility(np.ones(len(fleet), dtype=bool))).restricted(only, "not reserved")
            for e in where
        ]
        fit = place_gang(trial, c.pods, first_fit, np.random.default_rng(0), limited, explained=False)
        if isinstance(fit, GangFit):
            return tuple(sorted(prefix))
        k += 1
    return ()
