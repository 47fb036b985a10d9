"""The shared scheduling cycle on a one-node snapshot of this machine: decisions as data.

The local runtime does not schedule on its own: it hands
:func:`aiplane.policies.scheduling.cycle.schedule`, the cycle the Kubernetes scheduler
and the simulator run, a snapshot of this machine and maps the decisions back to GPU
indices. So what is benchmarked is what runs here, for jobs and Model replicas alike.

* This machine's GPUs are a :class:`Fleet` of one node (a machine with mixed GPU models
  is one node per model, since a fleet node has one model).
* What holds GPUs is a :class:`Holder` bound on it: the Model replicas (one holder, no
  quota, never preempted) and every running job, with the quota key it counts against
  when Queues exist. A job whose workers are still stopping holds its GPUs too
  (``evicting``), until they are gone.
* :func:`schedule`: every pending job is a :class:`Candidate`. It takes quota when Queues
  exist, except a job of queue ``default`` while no Queue is named so (as on Kubernetes).
* :func:`place_replica`: one new Model replica is a candidate that takes no quota, as a
  Model pod is on Kubernetes, placed on the same fleet with the jobs runner's
  reservations: a replica cannot take the GPUs held for a starving job, and replicas and
  jobs follow one placement rule. It never preempts, and is never preempted.

The cycle orders them, admits them by quota, places their slots all or nothing with the
``aiplane`` scorer, picks victims when a higher-priority job needs their GPUs or its
quota, and reserves the machine for a gang that has waited too long. Only GPUs are
accounted: local jobs and replicas share CPU and memory as ordinary processes do. No
I/O and no clock here; the runner and the controller apply the decisions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aiplane.api import Queue
from aiplane.policies.scheduling import Gpu
from aiplane.policies.scheduling import cycle as shared
from aiplane.policies.scheduling.cycle import RESERVE_AFTER_S, Candidate, Evict, Holder
from aiplane.policies.scheduling.fleet import MILLI, Fleet, NodeShape, Placement, PodShape
from aiplane.policies.scheduling.fragmentation import TargetWorkload
from aiplane.policies.scheduling.gpumodel import spec_matches
from aiplane.policies.scheduling.quota import QueueSpec, flavor_for
from aiplane.policies.scheduling.scorers import make
from aiplane.policies.scheduling.stats import QueueStats, queue_stats
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo
from aiplane.runtime.local.workloads import LocalJob

__all__ = [
    "RESERVE_AFTER_S",
    "Decisions",
    "Evict",
    "OneNode",
    "Running",
    "Snapshot",
    "Start",
    "Wait",
    "machine_stats",
    "one_node",
    "place_replica",
    "queue_specs",
    "replica_pod",
    "schedule",
]

SCORER = "aiplane"
DEFAULT_QUEUE = "default"
NODE = "local"
REPLICAS = "Models/replicas"  # the holder of what Model replicas hold


@dataclass(frozen=True)
class Start:
    """Run ``key`` now: ``devices[i]`` are the GPU indices of its slot (worker) ``i``."""

    key: str
    devices: tuple[tuple[int, ...], ...]
    flavor: str | None
    reason: str


@dataclass(frozen=True)
class Wait:
    """``key`` stays Pending; ``cause`` is ``quota``, ``placement``, ``preemption`` or ``unsupported``."""

    key: str
    reason: str
    cause: str


@dataclass(frozen=True)
class Running:
    """A job whose workers hold GPUs: ``devices[i]`` of slot ``i``; ``stopping`` once told to stop."""

    job: LocalJob
    devices: tuple[tuple[int, ...], ...]
    flavor: str | None = None
    stopping: bool = False


@dataclass(frozen=True)
class Snapshot:
    """This machine as the cycle sees it.

    ``held`` is the share of each device (by GPU index) that Model replicas hold;
    ``running`` the jobs whose workers hold theirs; ``queues`` None when no Queue exists
    here (then there is no quota). ``waiting`` is how long each pending job has waited
    (key -> seconds; its age when absent), ``reservations`` and ``preempting`` what
    earlier cycles decided (see :func:`aiplane.policies.scheduling.cycle.schedule`).
    """

    gpus: tuple[Gpu, ...]
    held: Mapping[int, float] = field(default_factory=dict)
    pending: tuple[LocalJob, ...] = ()
    running: tuple[Running, ...] = ()
    queues: Mapping[str, QueueSpec] | None = None
    now: float = 0.0
    waiting: Mapping[str, float] = field(default_factory=dict)
    reservations: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    preempting: Mapping[str, Sequence[str]] = field(default_factory=dict)
    reserve_after_s: float = RESERVE_AFTER_S


@dataclass
class Decisions:
    """One decision per pending job (in the cycle's order), the jobs to stop for them, and
    the reservations to hand the next cycle."""

    decisions: list[Start | Wait] = field(default_factory=list)
    evictions: list[Evict] = field(default_factory=list)
    reservations: dict[str, tuple[int, ...]] = field(default_factory=dict)


def queue_specs(queues: Sequence[Queue]) -> dict[str, QueueSpec] | None:
    """The quota core's view of the stored Queues; None when there are none."""
    if not queues:
        return None
    return {
        q.name: QueueSpec(q.name, q.spec.quota, q.spec.cohort, q.spec.weight, q.spec.borrowing)
        for q in queues
    }


@dataclass(frozen=True)
class OneNode:
    """A fleet of this machine, and which GPU index each fleet column stands for."""

    fleet: Fleet
    columns: tuple[tuple[int, ...], ...]  # per fleet node: GPU index of each device column

    def gpu_indices(self, node: int, devices: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.columns[node][d] for d in devices)

    def where(self, index: int) -> tuple[int, int] | None:
        """(node, column) of GPU ``index``; None for a GPU this machine does not have."""
        for node, columns in enumerate(self.columns):
            if index in columns:
                return node, columns.index(index)
        return None

    def hold(self, pod: PodShape, devices: Sequence[int]) -> tuple[PodShape, Placement] | None:
        """Bind ``pod`` on GPUs ``devices`` (indices); what was bound, clamped to what is free
        (a snapshot read while a GPU changes hands must not over-commit it)."""
        if pod.gpus <= 0 or pod.gpu_milli <= 0:
            return pod, Placement(0, ())  # nothing the fleet accounts: nothing to bind
        spots = [s for s in (self.where(d) for d in devices) if s is not None]
        if not spots or len({n for n, _ in spots}) > 1:
            return None  # its GPUs are gone (or span models): it holds nothing the cycle sees
        node = spots[0][0]
        columns = tuple(c for _, c in spots)
        milli = min(pod.gpu_milli, *(int(self.fleet.gpu_free[node, c]) for c in columns))
        if milli <= 0:
            return None
        shape = PodShape(pod.name, pod.cpu_milli, pod.memory_mib, len(columns), milli, pod.gpu_spec)
        placement = Placement(node, columns)
        self.fleet.bind(shape, placement)
        return shape, placement


def one_node(gpus: Sequence[Gpu]) -> OneNode:
    """This machine as an empty fleet: one node per GPU model (one node on most machines)."""
    models: dict[str, list[int]] = {}
    for gpu in gpus:
        models.setdefault(gpu.model, []).append(gpu.index)
    if not models:
        return OneNode(Fleet([NodeShape(NODE, 0, 0)]), ((),))
    names = [NODE] if len(models) == 1 else [f"{NODE}/{m}" for m in models]
    fleet = Fleet([NodeShape(n, 0, 0, len(ix), m) for n, (m, ix) in zip(names, models.items(), strict=True)])
    return OneNode(fleet, tuple(tuple(ix) for ix in models.values()))


def _replicas(node: OneNode, held: Mapping[int, float]) -> Holder:
    """What Model replicas hold, as one holder: a share of each device, no quota, not preemptible."""
    pods = []
    for index, share in sorted(held.items()):
        milli = round(min(max(share, 0.0), 1.0) * MILLI)
        if milli > 0 and (
            bound := node.hold(PodShape(f"replicas-gpu{index}", gpus=1, gpu_milli=milli), (index,))
        ):
            pods.append(bound)
    return Holder(WorkloadInfo(REPLICAS, queue=""), None, tuple(pods), preemptible=False)


def _takes_quota(job: LocalJob, queues: Mapping[str, QueueSpec]) -> bool:
    """A job takes quota when Queues exist, unless it is in queue ``default`` and none is named so."""
    return bool(queues) and (job.queue in queues or job.queue != DEFAULT_QUEUE)


def _holder(node: OneNode, run: Running, queues: Mapping[str, QueueSpec]) -> Holder:
    job = run.job
    flavor = None
    if job.demand.gpu > 0 and job.queue in queues:
        # admitted before its Queue existed: counted against the key it would get now
        flavor = run.flavor or flavor_for(job.demand, queues[job.queue].quota)
    pods = []
    for pod, devices in zip(job.pods(), run.devices, strict=False):
        if (bound := node.hold(pod, devices)) is not None:
            pods.append(bound)
    return Holder(job, flavor, tuple(pods), evicting=run.stopping)


def _machine(snapshot: Snapshot, queues: Mapping[str, QueueSpec]) -> tuple[OneNode, list[Holder]]:
    """This machine as a fleet with what holds GPUs bound on it: the replicas, then every job."""
    node = one_node(snapshot.gpus)
    holders = [_replicas(node, snapshot.held)]
    holders += [_holder(node, run, queues) for run in snapshot.running]
    return node, holders


def _candidate(job: LocalJob, snapshot: Snapshot, queues: Mapping[str, QueueSpec]) -> Candidate:
    waiting_s = snapshot.waiting.get(job.key, max(0.0, snapshot.now - job.created))
    return Candidate(job, job.pods(), queued=_takes_quota(job, queues), waiting_s=waiting_s)


def _cycle(
    snapshot: Snapshot,
    node: OneNode,
    queues: Mapping[str, QueueSpec],
    holders: Sequence[Holder],
    candidates: Sequence[Candidate],
    reserve_after_s: float,
) -> shared.CycleResult:
    """The shared cycle with the ``aiplane`` scorer, fitted to what waits and what runs here."""
    shapes = [p for c in candidates for p in c.pods]
    shapes += [p for run in snapshot.running for p in run.job.pods()]
    (scorer,) = make([SCORER], TargetWorkload.from_pods(shapes))
    return shared.schedule(
        node.fleet,
        queues,
        holders,
        candidates,
        scorer,
        np.random.default_rng(0),  # the aiplane scorer is deterministic; the API takes one
        reservations=snapshot.reservations,
        preempting=snapshot.preempting,
        reserve_after_s=reserve_after_s,
    )


def machine_stats(snapshot: Snapshot, pending: Mapping[tuple[str, str], int]) -> QueueStats:
    """This machine's quota use and GPUs by state, for metrics (``pending`` as the job
    runner last decided it)."""
    queues = dict(snapshot.queues or {})
    node, holders = _machine(snapshot, queues)
    candidates = [
        _candidate(job, snapshot, queues) for job in snapshot.pending if not (job.unsupported or job.finished)
    ]
    return queue_stats(node.fleet, queues, holders, candidates, pending)


def schedule(snapshot: Snapshot) -> Decisions:
    """One shared-cycle run over this machine: start these jobs on these devices, stop
    these to make room, and why the rest wait."""
    out = Decisions()
    runnable = []
    for job in snapshot.pending:
        if job.unsupported:
            out.decisions.append(Wait(job.key, job.unsupported, "unsupported"))
        elif not job.finished:
            runnable.append(job)
    if not runnable:
        return out
    queues = dict(snapshot.queues or {})
    node, holders = _machine(snapshot, queues)
    candidates = [_candidate(job, snapshot, queues) for job in runnable]
    result = _cycle(snapshot, node, queues, holders, candidates, snapshot.reserve_after_s)
    for start in result.starts:
        devices = tuple(node.gpu_indices(p.node, p.devices) for p in start.placements)
        out.decisions.append(Start(start.key, devices, start.flavor, start.reason))
    out.decisions += [Wait(w.key, w.reason, w.cause) for w in result.waits]
    out.evictions = list(result.evictions)
    out.reservations = dict(result.reservations)
    return out


# -- Model replicas --------------------------------------------------------------------
def replica_pod(key: str, need: float, gpu_spec: str = "") -> PodShape:
    """A replica's demand as a pod: ``need`` whole GPUs, or a share of one (0.5 -> 500 milli)."""
    if need <= 0:
        return PodShape(key)
    if need < 1:
        return PodShape(key, gpus=1, gpu_milli=max(1, round(need * MILLI)), gpu_spec=gpu_spec)
    return PodShape(key, gpus=math.ceil(need), gpu_milli=MILLI, gpu_spec=gpu_spec)


def place_replica(snapshot: Snapshot, model: str, need: float, gpu_model: str | None = None) -> Start | Wait:
    """Where one new replica of ``model`` goes: a :class:`Start` with its one slot's
    devices, or a :class:`Wait` with why not.

    The cycle keeps a reservation only while its job is a candidate, so the pending jobs
    holding one are candidates too (ahead of the replica; only the replica's decision is
    returned): the replica never lands on GPUs reserved for a starving job, nor on those
    such a job can take now. No preemption either way: the replica takes no quota (no
    quota victims), its priority is below every holder's (the cycle seeks node victims
    only among lower-priority holders), and the replicas' holder is not preemptible.
    """
    key = f"Model/{model}"
    if need <= 0:
        return Start(key, ((),), None, "no GPU requested")
    models = sorted({g.model for g in snapshot.gpus})
    if not models:
        return Wait(key, f"needs {need:g} GPU(s); this machine has no GPU", "placement")
    matching = [m for m in models if spec_matches(gpu_model, m)]
    if not matching:
        have = ", ".join(models)
        return Wait(key, f"no GPU of model {gpu_model!r} on this machine (have: {have})", "placement")
    # the machine's own names for the models the spec accepts: one matcher, gpumodel's
    pod = replica_pod(key, need, "|".join(matching) if gpu_model else "")
    queues = dict(snapshot.queues or {})
    node, holders = _machine(snapshot, queues)
    reserving = [
        j for j in snapshot.pending if j.key in snapshot.reservations and not (j.unsupported or j.finished)
    ]
    # below every holder (no victims) and every reserving job (they go first)
    lowest = min(w.priority for w in [*(h.workload for h in holders), *reserving])
    replica = WorkloadInfo(key, queue="", demand=Demand(gpu=need, gpu_model=gpu_model), priority=lowest - 1)
    candidates = [_candidate(job, snapshot, queues) for job in reserving]
    candidates.append(Candidate(replica, (pod,), queued=False))
    # no reservation for the replica itself: it waits for the next tick, not for a node;
    # and only its own decision is used, so no eviction of this what-if is ever carried out
    result = _cycle(snapshot, node, queues, holders, candidates, math.inf)
    for start in result.starts:
        if start.key == key:
            (placement,) = start.placements
            devices = node.gpu_indices(placement.node, placement.devices)
            where = f"shares GPU {devices[0]}" if pod.shares_gpu else f"GPU(s) {_indices(devices)}"
            return Start(key, (devices,), None, where)
    wait = next(w for w in result.waits if w.key == key)
    held_for = {j.key: snapshot.reservations[j.key] for j in reserving}
    return Wait(key, _short_of(node, pod, held_for) or wait.reason, wait.cause)


def _indices(devices: Sequence[int]) -> str:
    return ",".join(str(d) for d in devices)


def _short_of(node: OneNode, pod: PodShape, held_for: Mapping[str, tuple[int, ...]]) -> str:
    """Why ``pod`` fits nowhere, in this machine's terms: what the GPUs it may use have free,
    and which of them are reserved for whom."""
    fleet = node.fleet
    usable = fleet.access(pod.gpu_spec)
    reserved = np.zeros(len(fleet), dtype=bool)
    for nodes in held_for.values():
        reserved[list(nodes)] = True
    parts = []
    free_nodes = [int(i) for i in np.flatnonzero(usable & ~reserved)]
    if free_nodes and pod.shares_gpu:
        if not any((fleet.gpu_free[i] >= pod.gpu_milli).any() for i in free_nodes):
            parts.append(f"no GPU has {pod.gpu_milli / MILLI:g} free")
    elif free_nodes:
        whole = {i: int((fleet.gpu_free[i, : fleet.gpu_count[i]] == MILLI).sum()) for i in free_nodes}
        if max(whole.values()) < pod.gpus:
            if len(free_nodes) == 1:
                (i,) = free_nodes
                parts.append(f"needs {pod.gpus} free GPU(s), {whole[i]} free of {fleet.gpu_count[i]}")
            else:
                each = ", ".join(
                    f"{whole[i]} of {fleet.gpu_count[i]} on {fleet.names[i]}" for i in free_nodes
                )
                parts.append(f"needs {pod.gpus} free GPU(s) of one model, free: {each}")
    for job, nodes in held_for.items():
        gpus = [g for n in nodes if usable[n] for g in node.columns[n]]
        if gpus:
            parts.append(f"GPU(s) {_indices(gpus)} reserved for {job}, a job that waited too long for them")
    return "; ".join(parts)
