"""``aiplane sim schedule --departures``: the trace in time, through queues, quotas and preemption.

Pods arrive at their ``creation_time`` and run for ``deletion_time - creation_time``.
The pod list is a sample of a big cluster's pods: replayed on the whole node list it
would barely touch it (the default list peaks at 66 GPUs in use of 6,212). So it is
replayed on a random slice of the node list whose GPUs are the trace's peak demand
divided by ``load``: at 1.25, peaks queue and preempt, as on a cluster sized for the
average rather than the peak. Each QoS class of the trace is a queue
(``LS`` and ``Guaranteed`` high priority, ``Burstable`` middle, ``BE`` low) whose GPU
quota is its share of the trace's GPU-seconds, all in one cohort that lends idle quota.
A scheduling cycle runs after every event, as aiplane's scheduler does:

1. pending workloads in :func:`~aiplane.policies.scheduling.quota.fair_order`;
2. quota admission (:func:`~aiplane.policies.scheduling.quota.admit`): a Preempt outcome
   evicts its victims (reclaim of lent quota, or lower priority in the same queue);
3. placement by the policy; when no node fits, evicting lower-priority pods from the one
   node where the fewest must go (kube-scheduler's priority preemption).

An evicted workload is requeued with the run time it had left (it resumes from its
checkpoint) and is not tried again in the cycle that evicted it, so a preemption is never
undone at once. The checkpoint grace period is the runtimes' concern; here eviction is
immediate. Reported per policy: time-averaged GPU utilisation, queueing delay, and
preemptions.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aiplane.policies.scheduling import scorers
from aiplane.policies.scheduling.fleet import MILLI, Fleet, NodeShape, Placement
from aiplane.policies.scheduling.fragmentation import TargetWorkload
from aiplane.policies.scheduling.gangs import GangFit, place_gang
from aiplane.policies.scheduling.outcome import Mode
from aiplane.policies.scheduling.quota import QueueSpec, Usage, admit, fair_order
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo
from aiplane.sim.traces import TraceError, TracePod

QOS_QUEUES = {"LS": ("ls", 100), "Guaranteed": ("ls", 100), "Burstable": ("burstable", 50), "BE": ("be", 0)}
COHORT = "trace"
LOAD = 1.25  # the trace's peak GPU demand, x the capacity of the slice it is replayed on
MAX_ATTEMPTS = 64  # pending workloads tried per cycle: a full queue does not make a cycle O(pending)


@dataclass(frozen=True)
class DepartureStats:
    policy: str
    seed: int
    gpu_utilisation: float  # time-averaged allocated share of GPU capacity, 0..1
    mean_wait_s: float  # from arrival to (last) start, over started pods
    p95_wait_s: float
    preemptions: int
    never_started: int
    pods: int
    seconds: float


def queues_for(pods: Sequence[TracePod], capacity_gpus: float) -> dict[str, QueueSpec]:
    """One queue per QoS class, its quota its share of the trace's GPU-seconds, one cohort."""
    demand: dict[str, float] = {}
    for p in pods:
        name = QOS_QUEUES.get(p.qos, ("default", 0))[0]
        demand[name] = demand.get(name, 0.0) + p.shape.total_milli / MILLI * _duration(p)
    total = sum(demand.values()) or 1.0
    return {
        name: QueueSpec(name, {"*": round(capacity_gpus * d / total, 3)}, cohort=COHORT)
        for name, d in sorted(demand.items())
    }


def _duration(p: TracePod) -> float:
    assert p.created is not None and p.deleted is not None
    return max(0.0, p.deleted - p.created)


def peak_demand_milli(pods: Sequence[TracePod]) -> float:
    """The most GPU (milli) the trace's pods ask for at one moment, were all started on arrival."""
    events = sorted(
        [(p.created or 0.0, p.shape.total_milli) for p in pods]
        + [(p.deleted or 0.0, -p.shape.total_milli) for p in pods]
    )
    level = peak = 0.0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def cluster_slice(
    nodes: Sequence[NodeShape], demand_milli: float, rng: np.random.Generator
) -> list[NodeShape]:
    """Random GPU nodes (all CPU-only ones kept) until their GPUs cover ``demand_milli``."""
    gpu = [n for n in nodes if n.gpus > 0]
    chosen, total = [], 0
    for i in rng.permutation(len(gpu)):
        if total >= demand_milli:
            break
        chosen.append(gpu[i])
        total += gpu[i].gpus * MILLI
    return [n for n in nodes if n.gpus == 0] + chosen


def replay_departures(
    nodes: Sequence[NodeShape], pods: Sequence[TracePod], policy: str, seed: int, *, load: float = LOAD
) -> DepartureStats:
    started_at = time.perf_counter()
    if any(p.created is None or p.deleted is None for p in pods):
        raise TraceError("departures need creation_time and deletion_time for every pod")
    rng = np.random.default_rng(seed)
    fleet = Fleet(cluster_slice(nodes, peak_demand_milli(pods) / load, rng))
    capacity = fleet.gpu_capacity_milli
    (scorer,) = scorers.make([policy], TargetWorkload.from_pods([p.shape for p in pods]))
    queues = queues_for(pods, capacity / MILLI)
    work = [
        WorkloadInfo(
            key=f"{i}",
            queue=QOS_QUEUES.get(p.qos, ("default", 0))[0],
            priority=QOS_QUEUES.get(p.qos, ("default", 0))[1],
            created=float(p.created or 0.0),
            demand=Demand(
                gpu=p.shape.total_milli / MILLI,
                cpu=p.shape.cpu_milli / 1000,
                memory=p.shape.memory_mib * 2**20,
                gpu_model=p.shape.gpu_spec or None,
            ),
        )
        for i, p in enumerate(pods)
    ]
    remaining = [_duration(p) for p in pods]
    events: list[tuple[float, int, int, int]] = [(w.created, 1, i, 0) for i, w in enumerate(work)]
    heapq.heapify(events)  # (time, 0 = departure before 1 = arrival, workload, generation)
    generation = [0] * len(work)
    running: dict[int, tuple[Placement, float]] = {}
    pending: dict[int, None] = {}
    usage = Usage()
    waits: dict[int, float] = {}
    preemptions = 0
    now = area = 0.0
    first = events[0][0] if events else 0.0

    def stop(i: int, at: float) -> None:
        nonlocal usage
        placement, since = running.pop(i)
        fleet.unbind(pods[i].shape, placement)
        scorer.bound(placement.node)
        usage = usage.without([work[i].key])
        remaining[i] = max(0.0, remaining[i] - (at - since))

    def start(i: int, placement: Placement, flavor: str | None) -> None:
        nonlocal usage
        fleet.bind(pods[i].shape, placement)
        scorer.bound(placement.node)
        usage = usage.add(work[i], flavor)
        running[i] = (placement, now)
        pending.pop(i, None)
        waits[i] = now - work[i].created
        generation[i] += 1
        heapq.heappush(events, (now + remaining[i], 0, i, generation[i]))

    def evict(victims: Sequence[int], evicted: set[int]) -> None:
        nonlocal preemptions
        for v in victims:
            stop(v, now)
            generation[v] += 1  # its departure event is void
            pending[v] = None
            evicted.add(v)
            preemptions += 1

    def node_victims(i: int) -> list[int] | None:
        """The fewest lower-priority pods to evict from one node so that pod ``i`` fits there."""
        pod = pods[i].shape
        prio = work[i].priority
        by_node: dict[int, list[int]] = {}
        for j, (placement, _) in running.items():
            if work[j].priority < prio:
                by_node.setdefault(placement.node, []).append(j)
        best: list[int] | None = None
        for node, cands in by_node.items():
            if not fleet.access(pod.gpu_spec)[node] and pod.total_milli:
                continue
            cands.sort(key=lambda j: (work[j].priority, -running[j][1]))  # lowest priority, newest first
            trial = fleet.copy()
            chosen: list[int] = []
            for j in cands:
                if trial.feasible(pod)[node]:
                    break
                trial.unbind(pods[j].shape, running[j][0])
                chosen.append(j)
            if trial.feasible(pod)[node] and (best is None or len(chosen) < len(best)):
                best = chosen
        return best

    def cycle(only: int | None) -> None:
        evicted: set[int] = set()
        candidates = (
            [work[only]] if only is not None else fair_order([work[i] for i in pending], queues, usage)
        )
        for w in candidates[:MAX_ATTEMPTS]:
            i = int(w.key)
            if i in evicted or i not in pending:
                continue
            outcome = admit(w, queues, usage)
            if outcome.mode == Mode.Preempt:
                victims = [int(k) for k in outcome.victims]
                if not any(v in evicted for v in victims):
                    evict(victims, evicted)
                    outcome = admit(w, queues, usage)
            if outcome.mode != Mode.Fit:
                continue
            placed = place_gang(fleet, [pods[i].shape], scorer, rng)
            if not isinstance(placed, GangFit) and (on_node := node_victims(i)):
                evict(on_node, evicted)
                placed = place_gang(fleet, [pods[i].shape], scorer, rng)
            if isinstance(placed, GangFit):
                start(i, placed.placements[0], outcome.flavor)

    freed = False
    arrived: list[int] = []
    horizon = max(w.created for w in work)  # utilisation is measured while pods arrive
    while events:
        at, kind, i, gen = heapq.heappop(events)
        area += fleet.gpu_allocated_milli * max(0.0, min(at, horizon) - min(now, horizon))
        now = at
        if kind == 0:
            if gen != generation[i] or i not in running:
                continue
            stop(i, now)
            remaining[i] = 0.0
            freed = True
        else:
            pending[i] = None
            arrived.append(i)
        if events and events[0][0] == now:
            continue  # simultaneous events make one cycle
        # after a departure everyone may fit; after one arrival, only the newcomer is new
        cycle(arrived[0] if not freed and len(arrived) == 1 else None)
        freed, arrived = False, []
    elapsed = max(horizon - first, 1e-9)
    started = np.array(list(waits.values())) if waits else np.zeros(1)
    return DepartureStats(
        policy,
        seed,
        area / (elapsed * capacity),
        float(started.mean()),
        float(np.percentile(started, 95)),
        preemptions,
        len(pending),
        len(pods),
        time.perf_counter() - started_at,
    )
