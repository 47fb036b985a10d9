"""The Kubernetes scheduler's view: cached objects in, the scheduling cycle's input out."""

from __future__ import annotations

from typing import Any

import numpy as np

from aiplane.policies.scheduling import scorers
from aiplane.policies.scheduling.cycle import schedule
from aiplane.runtime.kubernetes.scheduler import target_workload
from aiplane.runtime.kubernetes.scheduling_view import JobPlan, ShapeCache, build_view, pod_shape

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
TOLERATE = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def node(name: str, gpus: int = 8, model: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if gpus:
        labels["nvidia.com/gpu.product"] = model
    alloc = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [GPU_TAINT]} if gpus else {},
        "status": {"allocatable": alloc},
    }


def pod(
    name: str,
    node_name: str = "",
    gpus: int = 1,
    fraction: str | None = None,
    devices: str | None = None,
    job: str | None = None,
    scheduler: str = "aiplane",
) -> dict[str, Any]:
    annotations = {}
    if fraction:
        annotations["aiplane.dev/gpu-fraction"] = fraction
    if devices:
        annotations["aiplane.dev/gpu-devices"] = devices
    labels = {"app.kubernetes.io/name": "trainingjob", "aiplane.dev/job": job} if job else {}
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "tolerations": TOLERATE,
        "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "annotations": annotations},
        "spec": spec,
        "status": {"phase": "Running" if node_name else "Pending"},
    }


def training(
    name: str, workers: int = 2, gpus: int = 8, queue: str = "team", **status: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {
            "image": "trainer:1",
            "command": ["python", "train.py"],
            "workers": workers,
            "gpusPerWorker": gpus,
            "gpuModel": "H100",
            "queue": queue,
        },
        "status": status,
    }


def queue(name: str, h100: float, cohort: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"quota": {"H100": h100}}
    if cohort:
        spec["cohort"] = cohort
    return {"apiVersion": "aiplane.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}


def test_shares_of_a_device_are_bound_on_the_devices_the_scheduler_recorded() -> None:
    view = build_view(
        [node("gpu-0", 2)],
        [pod("a", "gpu-0", fraction="0.5", devices="1"), pod("b", "gpu-0", fraction="0.25", devices="1")],
        [],
        [],
        {},
        now=0.0,
    )
    assert view.fleet.gpu_free.tolist() == [[1000, 250]]
    assert pod_shape(pod("c", fraction="0.5")).gpu_milli == 500
    assert pod_shape(pod("d", gpus=2)).total_milli == 2000


def test_a_waiting_training_job_is_a_gang_of_its_lowered_pods_kept_off_cpu_nodes() -> None:
    view = build_view(
        [node("cpu-0", 0), node("gpu-0"), node("gpu-1")],
        [],
        [training("tj", workers=2, gpus=8)],
        [queue("team", 16)],
        {},
        now=0.0,
    )
    (c,) = view.candidates
    assert c.key == "TrainingJob/ns/tj" and c.queued and not c.admitted
    assert [(p.gpus, p.gpu_milli) for p in c.pods] == [(8, 1000), (8, 1000)]
    assert c.workload.demand.gpu == 16 and c.workload.demand.gpu_model == "H100"
    assert c.workload.preemption_grace_s == 120
    eligible = c.eligible[0]
    assert eligible is not None and eligible.mask.tolist() == [False, True, True]
    result = schedule(
        view.fleet, view.queues, view.holders, view.candidates, scorers.BestFit(), np.random.default_rng(0)
    )
    (start,) = result.starts
    assert sorted(view.fleet.names[p.node] for p in start.placements) == ["gpu-0", "gpu-1"]
    assert start.flavor == "H100"


def test_an_admitted_job_holds_its_planned_places_until_its_pods_bind_there() -> None:
    admitted = training("tj", admission={"admitted": True, "flavor": "H100"})
    plan = {"TrainingJob/ns/tj": JobPlan((("gpu-1", tuple(range(8))), ("gpu-0", tuple(range(8)))))}
    before = build_view([node("gpu-0"), node("gpu-1")], [], [admitted], [queue("team", 16)], plan, now=0.0)
    assert int(before.fleet.gpu_free.sum()) == 0  # held for pods that do not exist yet
    assert before.candidates == [] and before.direct == []
    created = [pod("tj-0", job="tj", gpus=8), pod("tj-1", job="tj", gpus=8)]
    after = build_view(
        [node("gpu-0"), node("gpu-1")], created, [admitted], [queue("team", 16)], plan, now=0.0
    )
    assert [(p["metadata"]["name"], n) for p, n, _ in after.direct] == [("tj-0", "gpu-1"), ("tj-1", "gpu-0")]
    assert int(after.fleet.gpu_free.sum()) == 0 and after.candidates == []


def test_a_preempted_job_still_holds_its_gpus_until_its_pods_are_gone() -> None:
    told = training(
        "tj", workers=1, admission={"admitted": False, "flavor": "H100", "preempted": {"by": "x"}}
    )
    live = [pod("tj-0", "gpu-0", gpus=8, job="tj")]
    stopping = build_view([node("gpu-0")], live, [told], [queue("team", 16)], {}, now=0.0)
    (holder,) = stopping.holders
    assert holder.evicting and holder.flavor == "H100" and stopping.candidates == []
    gone = build_view([node("gpu-0")], [], [told], [queue("team", 16)], {}, now=0.0)
    assert gone.holders == [] and [c.key for c in gone.candidates] == ["TrainingJob/ns/tj"]  # requeued


def test_jobs_in_a_default_queue_that_does_not_exist_take_no_quota() -> None:
    view = build_view([node("gpu-0")], [], [training("tj", workers=1, queue="default")], [], {}, now=0.0)
    (c,) = view.candidates
    assert not c.queued
    result = schedule(
        view.fleet, view.queues, view.holders, view.candidates, scorers.BestFit(), np.random.default_rng(0)
    )
    assert [s.key for s in result.starts] == ["TrainingJob/ns/tj"] and result.starts[0].flavor is None


def test_pods_of_other_schedulers_hold_devices_and_model_pods_are_placed_without_quota() -> None:
    view = build_view(
        [node("gpu-0", 2)],
        [pod("kube", "gpu-0", scheduler="default-scheduler"), pod("replica", fraction="0.5")],
        [],
        [],
        {},
        now=0.0,
    )
    assert view.fleet.gpu_free.tolist() == [[0, 1000]]
    (c,) = view.candidates
    assert not c.queued and c.key == "Pods/ns/pod/replica"
    result = schedule(
        view.fleet,
        view.queues,
        view.holders,
        view.candidates,
        scorers.make(["aiplane"], target_workload(view))[0],
        np.random.default_rng(0),
    )
    assert [(p.node, p.devices) for p in result.starts[0].placements] == [(0, (1,))]


def stored(p: dict[str, Any], uid: str, version: str) -> dict[str, Any]:
    p["metadata"] |= {"uid": uid, "resourceVersion": version}
    return p


def test_the_shape_cache_parses_a_pod_once_per_version_and_forgets_pods_that_are_gone() -> None:
    cache = ShapeCache()
    half = stored(pod("a", fraction="0.5"), "u-a", "1")
    cache.begin()
    assert cache(half).gpu_milli == 500
    # the same version is not parsed again (nothing but a new version can change it)
    same = stored(pod("a", fraction="0.25"), "u-a", "1")
    cache.begin()
    assert cache(same).gpu_milli == 500
    changed = stored(pod("a", fraction="0.25"), "u-a", "2")
    cache.begin()
    assert cache(changed).gpu_milli == 250
    cache.begin()  # a cycle without the pod
    cache.begin()
    assert len(cache) == 0
    assert cache(same).gpu_milli == 250 and len(cache) == 1  # gone from the cache: parsed afresh
    template = pod("t", fraction="0.5")  # no uid: never cached
    assert cache(template).gpu_milli == 500 and len(cache) == 1


def test_a_view_read_through_the_cache_is_the_view_read_afresh() -> None:
    nodes = [node("n1"), node("n2")]
    pods = [
        stored(pod("bound", "n1", fraction="0.5", devices="3"), "u1", "7"),
        stored(pod("pending", gpus=2), "u2", "9"),
    ]
    cache = ShapeCache()
    for _ in range(2):  # the second round is served from the cache
        cache.begin()
        cached = build_view(nodes, pods, [], [], {}, 0.0, shape_of=cache)
        fresh = build_view(nodes, pods, [], [], {}, 0.0)
        assert np.array_equal(cached.fleet.gpu_free, fresh.fleet.gpu_free)
        assert [c.pods for c in cached.candidates] == [c.pods for c in fresh.candidates]
        assert cached.fleet.gpu_free[0][3] == 500


def test_each_run_of_a_scheduled_job_is_queued_on_its_own_and_holds_nothing_between_runs() -> None:
    def nightly(**status: Any) -> dict[str, Any]:
        body = training("nightly", workers=1, **status)
        body["spec"]["schedule"] = "0 3 * * *"
        return body

    fleet, queues = [node("gpu-0")], [queue("team", 16)]
    # between runs (the last one admitted and done): no candidate, no quota held
    idle = nightly(phase="Scheduled", activeRun=None, admission={"admitted": True, "run": "nightly-1"})
    view = build_view(fleet, [], [idle], queues, {}, now=0.0)
    assert view.candidates == [] and view.holders == [] and int(view.fleet.gpu_free.sum()) == 8 * 1000
    # a new run: the admission of the last one does not carry over, the run waits its turn
    queued = nightly(phase="Pending", activeRun="nightly-2", admission={"admitted": True, "run": "nightly-1"})
    view = build_view(fleet, [], [queued], queues, {}, now=0.0)
    assert [c.key for c in view.candidates] == ["TrainingJob/ns/nightly"] and view.holders == []
    # admitted for this run: it holds its GPUs
    running = nightly(
        phase="Running", activeRun="nightly-2", admission={"admitted": True, "run": "nightly-2"}
    )
    live = [pod("nightly-2-0", "gpu-0", gpus=8, job="nightly")]
    view = build_view(fleet, live, [running], queues, {}, now=0.0)
    (holder,) = view.holders
    assert not holder.evicting and view.candidates == [] and int(view.fleet.gpu_free.sum()) == 0
