"""Which admitted workloads to evict so that a pending one fits: the fewest needed, by rule.

Two kinds of victims, as in Kueue: lower-priority workloads of the preemptor's own
queue, and (reclaim) workloads of cohort queues that borrow, whatever their priority,
when the preemptor only wants its own quota back. Victims are added one by one to a
hypothetical removal, computed on a copy of the usage, until the preemptor fits; then
every victim not needed is dropped again, so no more is evicted than needed. Pure:
only ``Usage`` and ``QueueSpec`` methods are called, so this module needs ``quota``
for types only (``quota.admit`` calls it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from aiplane.policies.scheduling.workload import EPS, Workload

if TYPE_CHECKING:
    from aiplane.policies.scheduling.quota import QueueSpec, Usage


def plan_preemption(
    preemptor: Workload, admitted: Sequence[Workload], queues: Mapping[str, QueueSpec], usage: Usage
) -> tuple[str, ...] | None:
    """Keys of the workloads to evict, among ``admitted``, so that ``preemptor`` fits.

    ``()`` when it fits already, None when evicting every allowed candidate is not enough.
    Quota keys are tried in the queue's order of preference, as ``admit`` does.
    """
    need = preemptor.demand.gpu
    spec = queues.get(preemptor.queue)
    if need <= EPS:
        return ()
    if spec is None:
        return None
    flavors = spec.flavors_for(preemptor.demand)
    if any(usage.room(spec, flavor, queues).fits(need) for flavor in flavors):
        return ()
    for flavor in flavors:
        victims = plan_for_flavor(preemptor, flavor, admitted, queues, usage)
        if victims is not None:
            return victims
    return None


def plan_for_flavor(
    preemptor: Workload,
    flavor: str,
    admitted: Sequence[Workload],
    queues: Mapping[str, QueueSpec],
    usage: Usage,
) -> tuple[str, ...] | None:
    """The minimal victim set that makes ``preemptor`` fit in quota key ``flavor``, or None.

    Minimal: without any one of the victims the plan no longer works. A plan that
    reclaims from other queues must leave the preemptor's queue within its nominal
    quota: a lender takes back what it lent, a borrower cannot preempt to borrow more.
    """
    spec = queues[preemptor.queue]
    need = preemptor.demand.gpu
    quota = spec.quota.get(flavor, 0.0)
    held = [
        w for w in admitted if w.key != preemptor.key and w.key in usage and usage.flavor_of(w.key) == flavor
    ]
    own = sorted(
        (w for w in held if w.queue == spec.name and w.priority < preemptor.priority),
        key=lambda w: (w.priority, -w.created, w.key),
    )

    def works(removed: Sequence[Workload]) -> bool:
        after = usage.without(w.key for w in removed)
        if not after.room(spec, flavor, queues).fits(need):
            return False
        reclaims = any(w.queue != spec.name for w in removed)
        return not reclaims or after.gpus(spec.name, flavor) + need <= quota + EPS

    removed: list[Workload] = []
    current = usage
    for candidate in [*own, *_reclaimable(preemptor, flavor, held, own, queues, usage)]:
        if candidate.queue != spec.name and current.borrowed(queues[candidate.queue], flavor) <= EPS:
            continue  # that queue no longer borrows: the rest of its usage is its own quota
        removed.append(candidate)
        current = current.without([candidate.key])
        if works(removed):
            break
    else:
        return None
    shrinking = True
    while shrinking:  # drop, newest candidate first, every victim the plan works without
        shrinking = False
        for victim in reversed(removed):
            rest = [w for w in removed if w.key != victim.key]
            if works(rest):
                removed, shrinking = rest, True
                break
    return tuple(w.key for w in removed)


def _reclaimable(
    preemptor: Workload,
    flavor: str,
    held: Sequence[Workload],
    own: Sequence[Workload],
    queues: Mapping[str, QueueSpec],
    usage: Usage,
) -> list[Workload]:
    """Workloads of borrowing cohort queues: most-over-quota queue first, then lowest
    priority, newest first. None when even evicting all ``own`` candidates would leave
    the preemptor's queue above its nominal quota."""
    spec = queues[preemptor.queue]
    if spec.cohort is None:
        return []
    best_case = usage.gpus(spec.name, flavor) - sum(w.demand.gpu for w in own) + preemptor.demand.gpu
    if best_case > spec.quota.get(flavor, 0.0) + EPS:
        return []
    over = {
        q.name: usage.borrowed(q, flavor)
        for q in queues.values()
        if q.cohort == spec.cohort and q.name != spec.name
    }
    candidates = [w for w in held if over.get(w.queue, 0.0) > EPS]
    return sorted(candidates, key=lambda w: (-over[w.queue], w.queue, w.priority, -w.created, w.key))
