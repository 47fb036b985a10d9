"""``aiplane sim schedule --departures``: the trace in time, through the shared scheduling cycle.

Pods arrive at their ``creation_time`` and run for ``deletion_time - creation_time``.
The pod list is a sample of a big cluster's pods: replayed on the whole node list it
would barely touch it (the default list peaks at 66 GPUs in use of 6,212). So it is
replayed on a random slice of the node list whose GPUs are the trace's peak demand
divided by ``load``: at 1.25, peaks queue and preempt, as on a cluster sized for the
average rather than the peak. Each QoS class of the trace is a queue
(``LS`` and ``Guaranteed`` high priority, ``Burstable`` middle, ``BE`` low) whose GPU
quota is its share of the trace's GPU-seconds, all in one cohort that lends idle quota.

After every event (simultaneous ones together) the simulator runs
:func:`aiplane.policies.scheduling.cycle.schedule`, the cycle the Kubernetes scheduler
and the local runtime run, so what is measured here is what they decide: running pods
are its holders (each pod one workload), pending pods its candidates, and its starts,
evictions and reservations are applied. The checkpoint grace period is the runtimes'
concern; here an eviction is immediate: the victim is requeued with the run time it had
left (it resumes from its checkpoint), and the cycle runs again at the same instant,
first without that instant's victims, so their preemptors start and a preemption is
never undone at once, then with them, so a victim that fits elsewhere restarts at once.

A cycle over every pending pod after every event would make the replay O(events x
pending): after a lone arrival only the newcomer is new, so it is the only candidate;
otherwise the first ``MAX_ATTEMPTS`` pending pods in fair order are. A pod holding a
reservation is always a candidate, since the cycle keeps (and enforces) a reservation
only while its workload is one. Reported per policy: time-averaged GPU utilisation,
queueing delay, and preemptions.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from aiplane.policies.scheduling import cycle, scorers
from aiplane.policies.scheduling.cycle import Candidate, CycleResult, Holder
from aiplane.policies.scheduling.fleet import MILLI, Fleet, NodeShape
from aiplane.policies.scheduling.fragmentation import TargetWorkload
from aiplane.policies.scheduling.quota import QueueSpec, fair_order
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo
from aiplane.sim.traces import TraceError, TracePod

QOS_QUEUES = {"LS": ("ls", 100), "Guaranteed": ("ls", 100), "Burstable": ("burstable", 50), "BE": ("be", 0)}
COHORT = "trace"
LOAD = 1.25  # the trace's peak GPU demand, x the capacity of the slice it is replayed on
MAX_ATTEMPTS = 64  # pending workloads tried per cycle: a full queue does not make a cycle O(pending)
MAX_ROUNDS = 8  # cycles at one instant: evictions, their preemptors' starts, the victims' restarts


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
    # a pod no node of the slice takes even empty never starts, and the cycle never evicts
    # or reserves for it: it is kept out of the queue, not searched victims for after every event
    hopeless = {i for i, p in enumerate(pods) if not fleet.feasible(p.shape).any()}
    remaining = [_duration(p) for p in pods]
    events: list[tuple[float, int, int, int]] = [(w.created, 1, i, 0) for i, w in enumerate(work)]
    heapq.heapify(events)  # (time, 0 = departure before 1 = arrival, workload, generation)
    generation = [0] * len(work)
    running: dict[int, tuple[Holder, float]] = {}  # pod -> its holder, when it (re)started
    pending: dict[int, float] = {}  # pod -> since when it waits (arrival or last eviction)
    reservations: dict[str, tuple[int, ...]] = {}
    waits: dict[int, float] = {}
    preemptions = 0
    now = area = 0.0
    first = events[0][0] if events else 0.0

    def stop(i: int) -> None:
        holder, since = running.pop(i)
        for shape, placement in holder.pods:
            fleet.unbind(shape, placement)
            scorer.bound(placement.node)
        remaining[i] = max(0.0, remaining[i] - (now - since))

    def decide(tried: Iterable[int]) -> CycleResult:
        nonlocal reservations
        keys = [*dict.fromkeys([*tried, *(int(k) for k in reservations)])]
        candidates = [
            Candidate(work[i], (pods[i].shape,), waiting_s=now - pending[i]) for i in keys if i in pending
        ]
        if not candidates:
            return CycleResult()  # what the cycle decides for no one, without its set-up
        holders = [h for h, _ in running.values()]
        # no ``preempting``: victims are gone before the next cycle, so no preemptor waits on one
        result = cycle.schedule(fleet, queues, holders, candidates, scorer, rng, reservations=reservations)
        reservations = result.reservations
        return result

    def apply(result: CycleResult) -> set[int]:
        """Bind the starts, evict the victims at once (no grace here); returns the victims."""
        nonlocal preemptions
        for s in result.starts:
            i = int(s.key)
            (placement,) = s.placements
            fleet.bind(pods[i].shape, placement)
            scorer.bound(placement.node)
            running[i] = (Holder(work[i], s.flavor, ((pods[i].shape, placement),)), now)
            del pending[i]
            waits[i] = now - work[i].created
            generation[i] += 1
            heapq.heappush(events, (now + remaining[i], 0, i, generation[i]))
        victims = {int(e.key) for e in result.evictions}
        for v in victims:
            stop(v)
            generation[v] += 1  # its departure event is void
            pending[v] = now
        preemptions += len(victims)
        return victims

    def step(arrived: list[int], freed: bool) -> None:
        tried = arrived
        if freed and pending:
            usage = cycle.usage_of([h for h, _ in running.values()])
            ordered = fair_order([work[i] for i in pending], queues, usage)
            tried = [*dict.fromkeys([*(int(w.key) for w in ordered[:MAX_ATTEMPTS]), *arrived])]
        # a victim sits out until its preemptor had its turn, or it could take its room back
        out: set[int] = set()
        for _ in range(MAX_ROUNDS):
            victims = apply(decide(i for i in tried if i not in out))
            if victims:
                out |= victims
            elif out:
                tried, out = [*tried, *out], set()
            else:
                return

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
            stop(i)
            remaining[i] = 0.0
            freed = True
        elif i not in hopeless:
            pending[i] = now
            arrived.append(i)
        if events and events[0][0] == now:
            continue  # simultaneous events make one cycle
        if arrived or freed:
            step(arrived, freed)
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
        len(pending) + len(hopeless),
        len(pods),
        time.perf_counter() - started_at,
    )
