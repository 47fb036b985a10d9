"""The scheduler's view of the cluster: cached objects in, the scheduling cycle's input out.

Pure functions over plain dicts (what the informers hold), so how aiplane reads a node's
GPUs, a pod's share of a device or a TrainingJob's gang is unit-tested without a cluster.

* Nodes become a :class:`Fleet` row each (GPUs from ``nvidia.com/gpu`` allocatable, the
  model from ``aiplane.dev/gpu-model`` or GPU feature discovery's product label).
* Every bound, unfinished pod is bound on the fleet, on the devices its
  ``aiplane.dev/gpu-devices`` annotation names (what this scheduler wrote at binding),
  else on the first free ones. A pod with ``aiplane.dev/gpu-fraction`` holds that share
  of one device, so two 0.5 pods share a GPU.
* A TrainingJob or BatchJob is one workload (:class:`WorkloadInfo`) whose pods are those
  its lowering describes; the scheduler owns its ``status.admission``. Admitted, it holds
  quota and its pods (plus, until they exist, the places planned for them); not admitted,
  it is a candidate whose pods are the lowered template times the gang size.
* Other pods naming ``schedulerName: aiplane`` (Model replicas, plain Jobs) are placed but
  take no quota; pods of other schedulers only hold what they use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiplane.api import BatchJob, Queue, TrainingJob, parse_duration
from aiplane.errors import AiplaneError
from aiplane.policies.scheduling.cycle import Candidate, Holder
from aiplane.policies.scheduling.filters import (
    NodeAffinity,
    NodeInfo,
    NodeSelector,
    NodeUnschedulable,
    PodRequest,
    Taint,
    TaintToleration,
)
from aiplane.policies.scheduling.fleet import MILLI, Eligibility, Fleet, NodeShape, Placement, PodShape
from aiplane.policies.scheduling.gpumodel import canonical
from aiplane.policies.scheduling.quota import QueueSpec
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo
from aiplane.runtime.kubernetes.constants import (
    ANNOTATION_GPU_DEVICES,
    ANNOTATION_GPU_FRACTION,
    ANNOTATION_PRIORITY,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_GPU_MODEL,
    LABEL_JOB,
    LABEL_NAME,
    SCHEDULER_NAME,
)
from aiplane.runtime.kubernetes.lowering import lower
from aiplane.runtime.kubernetes.objects import admission_of, from_body, is_admitted
from aiplane.runtime.kubernetes.snapshot import (
    Manifest,
    SnapshotError,
    _created,
    _int_field,
    assemble_gangs,
    pod_amounts,
    pod_ref,
    pod_request,
)

JOB_KINDS = {"trainingjob": "TrainingJob", "batchjob": "BatchJob"}  # app.kubernetes.io/name -> kind
FINISHED = ("Succeeded", "Failed")
DEFAULT_QUEUE = "default"
STATIC_FILTERS = (NodeUnschedulable(), TaintToleration(), NodeSelector(), NodeAffinity())


# -- nodes and pods ------------------------------------------------------------------------------
def node_shape(node: Manifest) -> NodeShape:
    meta = node["metadata"]
    alloc = (node.get("status") or {}).get("allocatable") or {}
    amounts = pod_amounts({"spec": {"containers": [{"resources": {"requests": alloc}}]}, "metadata": meta})
    labels = meta.get("labels") or {}
    model = labels.get(LABEL_GPU_MODEL) or labels.get(GPU_PRODUCT_LABEL) or ""
    return NodeShape(
        name=meta["name"],
        cpu_milli=amounts.cpu_milli,
        memory_mib=amounts.memory // 2**20,
        gpus=int(amounts.gpus if alloc.get(GPU_RESOURCE) else 0),
        model=canonical(model) if model else "",
    )


def node_filter_info(node: Manifest) -> NodeInfo:
    """What the static filters (taints, selectors, affinity, cordon) read of a node."""
    meta, spec = node["metadata"], node.get("spec") or {}
    return NodeInfo(
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        taints=tuple(
            Taint(t["key"], t.get("value", ""), t.get("effect", "NoSchedule"))
            for t in spec.get("taints") or []
        ),
        unschedulable=bool(spec.get("unschedulable")),
    )


def gpu_fraction(annotations: Mapping[str, str]) -> float | None:
    raw = annotations.get(ANNOTATION_GPU_FRACTION)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 < value < 1 else None


def pod_shape(pod: Manifest) -> PodShape:
    """A pod's demand: whole GPUs, or one device's share when ``aiplane.dev/gpu-fraction`` says so."""
    amounts = pod_amounts(pod)
    meta = pod.get("metadata") or {}
    fraction = gpu_fraction(meta.get("annotations") or {})
    gpus, milli = amounts.gpus, MILLI if amounts.gpus else 0
    if fraction is not None and amounts.gpus == 1:
        milli = max(1, round(fraction * MILLI))
    return PodShape(
        name=pod_ref(pod),
        cpu_milli=amounts.cpu_milli,
        memory_mib=math.ceil(amounts.memory / 2**20),
        gpus=gpus,
        gpu_milli=milli,
    )


class ShapeCache:
    """Pod shapes by (uid, resourceVersion), so a cycle parses only the pods that changed.

    A pod's demand changes only with its object (any change bumps ``resourceVersion``).
    Call :meth:`begin` once per cycle: shapes not asked for in the last cycle are dropped.
    """

    def __init__(self) -> None:
        self._current: dict[tuple[str, str], PodShape] = {}
        self._previous: dict[tuple[str, str], PodShape] = {}

    def begin(self) -> None:
        self._previous, self._current = self._current, {}

    def __len__(self) -> int:
        return len(self._current)

    def __call__(self, pod: Manifest) -> PodShape:
        meta = pod.get("metadata") or {}
        uid, version = meta.get("uid"), meta.get("resourceVersion")
        if not uid or not version:  # a template, not a stored object
            return pod_shape(pod)
        key = (str(uid), str(version))
        shape = self._current.get(key) or self._previous.get(key) or pod_shape(pod)
        self._current[key] = shape
        return shape


def devices_hint(pod: Manifest) -> tuple[int, ...] | None:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_GPU_DEVICES)
    if not raw:
        return None
    try:
        return tuple(int(d) for d in raw.split(","))
    except ValueError:
        return None


def devices_text(devices: Sequence[int]) -> str:
    return ",".join(str(d) for d in devices)


def place_bound(fleet: Fleet, shape: PodShape, node: int, hint: tuple[int, ...] | None) -> Placement:
    """Where a bound pod sits: its annotated devices if they still have room, else the fullest
    devices that fit (whole GPUs: the first wholly free ones)."""
    if shape.gpus <= 0 or shape.gpu_milli <= 0:
        return Placement(node, ())
    free = fleet.gpu_free[node]
    if (
        hint
        and len(hint) == shape.gpus
        and all(0 <= d < len(free) and free[d] >= shape.gpu_milli for d in hint)
    ):
        return Placement(node, hint)
    room = [int(d) for d in np.flatnonzero(free >= shape.gpu_milli)]
    room.sort(key=lambda d: (int(free[d]), d))  # fullest first: a share lands next to shares
    if shape.gpu_milli >= MILLI:
        room.sort()
    return Placement(node, tuple(room[: shape.gpus]))


class Eligibilities:
    """Where pods of one signature (selector, affinity, tolerations) may go, computed once per
    signature per cycle: thousands of pods share a handful of templates."""

    def __init__(self, nodes: Sequence[NodeInfo]) -> None:
        self.nodes = nodes
        self._cache: dict[tuple[Any, ...], Eligibility] = {}

    def of(self, request: PodRequest) -> Eligibility:
        key = (
            tuple(sorted(request.node_selector.items())),
            request.required_affinity_terms,
            request.tolerations,
        )
        if key not in self._cache:
            first: list[str] = []
            for node in self.nodes:
                reason = ""
                for f in STATIC_FILTERS:
                    if found := f.check(node, request):
                        reason = found[0]
                        break
                first.append(reason)
            reasons = np.array(first, dtype=object)
            mask = reasons == ""
            checks = tuple((r, reasons != r) for r in dict.fromkeys(first) if r)
            self._cache[key] = Eligibility(np.asarray(mask, dtype=bool), checks)
        return self._cache[key]


# -- workloads -----------------------------------------------------------------------------------
def job_key(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


def pod_owner_key(pod: Manifest) -> str | None:
    """The TrainingJob or BatchJob a pod runs for, from the labels its lowering sets."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    kind = JOB_KINDS.get(labels.get(LABEL_NAME, ""))
    name = labels.get(LABEL_JOB)
    if not kind or not name:
        return None
    return job_key(kind, pod["metadata"].get("namespace", ""), name)


def queue_specs(queues: Iterable[Manifest]) -> dict[str, QueueSpec]:
    out: dict[str, QueueSpec] = {}
    for raw in queues:
        try:
            q = from_body(raw)
        except AiplaneError:
            continue
        assert isinstance(q, Queue)
        out[q.name] = QueueSpec(
            q.name, dict(q.spec.quota), cohort=q.spec.cohort, weight=q.spec.weight, borrowing=q.spec.borrowing
        )
    return out


@dataclass(frozen=True)
class JobPlan:
    """Where an admitted workload's pods go: one (node name, devices) per pod, kept by the
    scheduler from admission until each pod is bound, so the room stays held meanwhile."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass
class View:
    fleet: Fleet
    queues: dict[str, QueueSpec]
    holders: list[Holder] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    jobs: dict[str, Manifest] = field(default_factory=dict)  # key -> TrainingJob/BatchJob body
    pods: dict[str, list[Manifest]] = field(default_factory=dict)  # candidate key -> pods to bind
    direct: list[tuple[Manifest, str, tuple[int, ...]]] = field(default_factory=list)  # planned binds
    active_pods: dict[str, list[Manifest]] = field(default_factory=dict)  # job key -> its live pods
    problems: list[str] = field(default_factory=list)


def _workload(body: Manifest, job: TrainingJob | BatchJob) -> WorkloadInfo:
    """The quota side of a job: its gang's GPUs in total, against its model's quota key."""
    meta = body["metadata"]
    if isinstance(job, TrainingJob):
        size, per, model = job.spec.workers, job.spec.gpus_per_worker, job.spec.gpu_model
    else:
        size, per, model = min(job.spec.parallelism, job.spec.shards), job.spec.gpus_per_shard, None
    return WorkloadInfo(
        key=job_key(body["kind"], meta.get("namespace", ""), meta["name"]),
        queue=job.spec.queue,
        demand=Demand(gpu=size * per, gpu_model=model),
        priority=job.spec.priority,
        created=_created(meta),
        gang_size=size,
        preemption_grace_s=parse_duration(job.spec.grace_period),
    )


def _template_pods(body: Manifest, job: TrainingJob | BatchJob) -> list[Manifest]:
    """The pods the lowering would run (the Job's template, once per gang member)."""
    meta = body["metadata"]
    objects = lower(job, meta.get("namespace", "default"), None, suspend=True)
    native = next(o for o in objects if o["kind"] in ("Job", "CronJob"))
    spec = native["spec"]["jobTemplate"]["spec"] if native["kind"] == "CronJob" else native["spec"]
    template = spec["template"]
    size = int(spec.get("parallelism", 1))
    if spec.get("completions") is not None:
        size = min(size, int(spec["completions"]))
    pods = []
    for i in range(max(1, size)):
        pod_meta = {
            **template.get("metadata", {}),
            "name": f"{meta['name']}-{i}",
            "namespace": meta["namespace"],
        }
        pods.append({"metadata": pod_meta, "spec": template["spec"]})
    return pods


def build_view(
    nodes: Sequence[Manifest],
    pods: Sequence[Manifest],
    jobs: Sequence[Manifest],
    queues: Sequence[Manifest],
    plans: Mapping[str, JobPlan],
    now: float,
    native_jobs: Mapping[tuple[str, str], Manifest | None] | None = None,
    shape_of: Callable[[Manifest], PodShape] = pod_shape,
) -> View:
    """Everything the cycle needs, from the cached objects (see the module docstring).

    ``shape_of`` reads a pod's demand; the scheduler passes a :class:`ShapeCache`.
    """
    shapes, infos, problems = [], [], []
    for raw in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        try:
            shapes.append(node_shape(raw))
            infos.append(node_filter_info(raw))
        except SnapshotError as exc:
            problems.append(f"ignoring a node: {exc}")
    fleet = Fleet(shapes)
    index = {s.name: i for i, s in enumerate(shapes)}
    eligible = Eligibilities(infos)
    view = View(fleet, queue_specs(queues), problems=problems)
    by_job: dict[str, list[Manifest]] = {}
    loose_bound: list[Manifest] = []
    loose_pending: list[Manifest] = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in FINISHED:
            continue
        owner = pod_owner_key(pod)
        if owner is not None:
            by_job.setdefault(owner, []).append(pod)
        elif (pod.get("spec") or {}).get("nodeName"):
            loose_bound.append(pod)
        elif (pod.get("spec") or {}).get("schedulerName") == SCHEDULER_NAME:
            loose_pending.append(pod)
    view.active_pods = by_job

    def bind_all(pods_on: Iterable[Manifest]) -> list[tuple[PodShape, Placement]]:
        held = []
        # pods whose devices are recorded first, so a pod without a record never takes them
        for pod in sorted(pods_on, key=lambda p: devices_hint(p) is None):
            node = index.get(pod["spec"]["nodeName"])
            if node is None:
                continue
            try:
                shape = shape_of(pod)
                placement = place_bound(fleet, shape, node, devices_hint(pod))
                fleet.bind(shape, placement)
            except (SnapshotError, ValueError) as exc:
                view.problems.append(f"pod {pod_ref(pod)} on {pod['spec']['nodeName']}: {exc}")
                continue
            held.append((shape, placement))
        return held

    def eligibility(pod: Manifest) -> Eligibility:
        return eligible.of(pod_request(pod))

    # aiplane's jobs: admitted ones hold (and may have pods to bind), the others wait
    bodies = {}
    for body in jobs:
        meta = body["metadata"]
        bodies[job_key(body["kind"], meta.get("namespace", ""), meta["name"])] = body
    view.jobs = bodies
    for key, body in sorted(bodies.items()):
        live = by_job.get(key, [])
        if (body.get("status") or {}).get("phase") in FINISHED and not live:
            continue
        between_runs = (body.get("spec") or {}).get("schedule") and not (body.get("status") or {}).get(
            "activeRun"
        )
        if between_runs and not live:  # a scheduled job with no run under way: nothing to queue
            continue
        try:
            job = from_body(body)
            assert isinstance(job, TrainingJob | BatchJob)
            workload = _workload(body, job)
        except (AiplaneError, SnapshotError, ValueError) as exc:
            view.problems.append(f"{key}: {exc}")
            continue
        admission = admission_of(body)
        bound = [p for p in live if p["spec"].get("nodeName")]
        unbound = [
            p
            for p in live
            if not p["spec"].get("nodeName")
            and not p["metadata"].get("deletionTimestamp")
            and p["spec"].get("schedulerName") == SCHEDULER_NAME
        ]
        held = bind_all(bound)
        finished = (body.get("status") or {}).get("phase") in FINISHED
        if is_admitted(body) and not finished:
            plan = list((plans.get(key) or JobPlan(())).entries)
            for pod in bound:  # planned places already taken by bound pods
                where = (pod["spec"]["nodeName"], devices_hint(pod) or ())
                if where in plan:
                    plan.remove(where)
            rest: list[Manifest] = []
            for pod in sorted(unbound, key=lambda p: p["metadata"]["name"]):
                if plan and plan[0][0] in index:
                    node_name, devices = plan.pop(0)
                    try:
                        shape = shape_of(pod)
                        placement = Placement(index[node_name], devices)
                        fleet.bind(shape, placement)
                    except (SnapshotError, ValueError):
                        rest.append(pod)
                        continue
                    held.append((shape, placement))
                    view.direct.append((pod, node_name, devices))
                else:
                    rest.append(pod)
            missing = max(0, workload.gang_size - len(bound) - len(unbound))
            template = None
            for node_name, devices in plan[:missing]:  # room for pods not created yet
                if node_name not in index:
                    continue
                template = template or _template_pods(body, job)[0]
                shape = shape_of(template)
                try:
                    fleet.bind(shape, Placement(index[node_name], devices))
                except ValueError:
                    continue
                held.append((shape, Placement(index[node_name], devices)))
            view.holders.append(Holder(workload, admission.get("flavor"), tuple(held)))
            if rest and (plans.get(key) is None and len(bound) + len(unbound) < workload.gang_size):
                continue  # no plan (a restarted scheduler): place the gang once all its pods exist
            if rest:
                try:
                    view.candidates.append(
                        pod_candidate(workload, rest, eligibility, admitted=True, shape_of=shape_of)
                    )
                    view.pods[key] = rest
                except SnapshotError as exc:
                    view.problems.append(f"{key}: {exc}")
            continue
        if live:  # told to stop (or finished) but its pods still hold their share
            view.holders.append(Holder(workload, admission.get("flavor"), tuple(held), evicting=True))
            continue
        if finished or (body.get("spec") or {}).get("suspend"):
            continue
        try:
            template_pods = _template_pods(body, job)
            view.candidates.append(
                Candidate(
                    workload,
                    tuple(shape_of(p) for p in template_pods),
                    tuple(eligibility(p) for p in template_pods),
                    # no Queue named "default": jobs left in it run without quota, as before queues
                    queued=workload.queue in view.queues or workload.queue != DEFAULT_QUEUE,
                    waiting_s=max(0.0, now - _since(admission, workload.created)),
                )
            )
        except (AiplaneError, SnapshotError, ValueError) as exc:
            view.problems.append(f"{key}: {exc}")

    # everything else: pods bound by anyone hold; aiplane's other pods are placed, quota-free
    by_gang: dict[str, list[Manifest]] = {}
    for pod in loose_bound:
        by_gang.setdefault(pod_ref(pod), []).append(pod)
    for key, group in by_gang.items():
        held = bind_all(group)
        prio = _int_field(group[0]["metadata"], ANNOTATION_PRIORITY) or 0
        info = WorkloadInfo(key=f"Pod/{key}", queue="", priority=prio)
        view.holders.append(Holder(info, None, tuple(held), preemptible=False))
    gangs, _waiting = assemble_gangs(loose_pending, loose_bound, native_jobs or {})
    for pending in gangs:
        gang = pending.gang
        members = [pending.pods[p.name] for p in gang.pods]
        try:
            info = WorkloadInfo(
                key=f"Pods/{gang.job_key}",
                queue="",
                priority=gang.priority,
                created=gang.created,
                gang_size=len(members),
            )
            view.candidates.append(pod_candidate(info, members, eligibility, queued=False, shape_of=shape_of))
            view.pods[info.key] = members
        except SnapshotError as exc:
            view.problems.append(f"{gang.job_key}: {exc}")
    return view


def pod_candidate(
    workload: WorkloadInfo,
    pods: Sequence[Manifest],
    eligibility: Callable[[Manifest], Eligibility],
    *,
    admitted: bool = False,
    queued: bool = True,
    shape_of: Callable[[Manifest], PodShape] = pod_shape,
) -> Candidate:
    """A candidate whose pods exist already: their shapes and where each may go."""
    return Candidate(
        workload,
        tuple(shape_of(p) for p in pods),
        tuple(eligibility(p) for p in pods),
        admitted=admitted,
        queued=queued,
    )


def _since(admission: Mapping[str, Any], created: float) -> float:
    """When the workload started waiting: its last eviction, else its creation."""
    stamp = admission.get("pendingSince")
    if stamp:
        return _created({"creationTimestamp": stamp})
    return created
