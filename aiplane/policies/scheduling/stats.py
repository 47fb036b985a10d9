"""What a scheduling cycle saw, summed for metrics: pending work by queue and cause,
quota used and borrowed per queue and GPU model, and the fleet's GPUs by state.

Pure (the runtimes export it; :mod:`aiplane.observe.catalogue` names the series). A
free GPU is *stranded* when it is fragment for the workloads that arrive: FGD's measure
with memory (the one aiplane's scorer places by), so "idle" counts only free GPUs that
the current shapes could use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aiplane.policies.scheduling.cycle import Candidate, Holder, Wait, usage_of
from aiplane.policies.scheduling.fleet import MILLI, Fleet, PodShape
from aiplane.policies.scheduling.fragmentation import Fragmentation, TargetWorkload
from aiplane.policies.scheduling.quota import QueueSpec

NO_QUEUE = "none"  # work that takes no quota (a Model replica) is still pending somewhere


@dataclass(frozen=True)
class QueueStats:
    pending: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, cause) -> workloads
    admitted: dict[str, int] = field(default_factory=dict)
    nominal: dict[tuple[str, str], float] = field(default_factory=dict)  # (queue, GPU model key)
    used: dict[tuple[str, str], float] = field(default_factory=dict)
    borrowed: dict[tuple[str, str], float] = field(default_factory=dict)
    gpus: dict[tuple[str, str], float] = field(default_factory=dict)  # (GPU model, state)


def target_workload(holders: Sequence[Holder], candidates: Sequence[Candidate]) -> TargetWorkload:
    """The pod shapes fragmentation is weighed by: what runs and what waits, now (one
    whole GPU when nothing asks for GPUs)."""
    shapes = [shape for h in holders for shape, _ in h.pods]
    shapes += [shape for c in candidates for shape in c.pods]
    gpu = [s for s in shapes if s.gpus and s.gpu_milli]
    return TargetWorkload.from_pods(gpu or [PodShape(gpus=1, gpu_milli=MILLI)])


def pending_of(waits: Sequence[Wait], candidates: Sequence[Candidate]) -> dict[tuple[str, str], int]:
    """Waiting workloads by (queue, cause); ``reserved`` when the wait holds nodes."""
    by_key = {c.key: c for c in candidates}
    pending: dict[tuple[str, str], int] = {}
    for wait in waits:
        cand = by_key.get(wait.key)
        queue = (cand.workload.queue if cand is not None and cand.queued else "") or NO_QUEUE
        cause = "reserved" if wait.reserved else wait.cause
        pending[queue, cause] = pending.get((queue, cause), 0) + 1
    return pending


def queue_stats(
    fleet: Fleet,
    queues: Mapping[str, QueueSpec],
    holders: Sequence[Holder],
    candidates: Sequence[Candidate],
    pending: Mapping[tuple[str, str], int],
) -> QueueStats:
    """``fleet`` has every running pod bound on it (the cycle's input, not its output);
    ``candidates`` shape the fragmentation measure; ``pending`` is :func:`pending_of`'s."""
    admitted = dict.fromkeys(queues, 0)
    for h in holders:
        if h.workload.queue in queues:
            admitted[h.workload.queue] = admitted.get(h.workload.queue, 0) + 1
    usage = usage_of(holders)
    nominal, used, borrowed = {}, {}, {}
    for name, spec in queues.items():
        for flavor, quota in spec.quota.items():
            nominal[name, flavor] = float(quota)
            used[name, flavor] = usage.gpus(name, flavor)
            borrowed[name, flavor] = usage.borrowed(spec, flavor)
    return QueueStats(
        dict(pending), admitted, nominal, used, borrowed, fleet_gpus(fleet, holders, candidates)
    )


def fleet_gpus(
    fleet: Fleet, holders: Sequence[Holder], candidates: Sequence[Candidate]
) -> dict[tuple[str, str], float]:
    """GPUs allocated, idle and stranded per GPU model (fractions for shared GPUs)."""
    out: dict[tuple[str, str], float] = {}
    if not len(fleet) or not fleet.gpu_count.any():
        return out
    frag = Fragmentation(fleet, target_workload(holders, candidates), memory=True)
    free = fleet.gpu_free.sum(axis=1) / MILLI
    allocated = fleet.gpu_count - free
    stranded = np.minimum(frag.node_frag / MILLI, free)
    for index, model in enumerate(fleet.model_names):
        nodes = fleet.model == index
        for state, values in (("allocated", allocated), ("idle", free - stranded), ("stranded", stranded)):
            out[model, state] = round(float(values[nodes].sum()), 3)
    return out
