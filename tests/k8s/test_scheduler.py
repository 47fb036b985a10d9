"""The aiplane scheduler on a real control plane: gangs, bin-packing, taints, reasons.

The scheduler runs as its own process (``run_scheduler``, as ``aiplane scheduler`` does)
against the session's dev cluster: 4 nodes of 8 H100, 2 of 8 A100 (GPU nodes carry the
``nvidia.com/gpu=present:NoSchedule`` taint) and 2 CPU nodes. KWOK turns bound pods
Running. Each test starts with the H100 nodes empty and leaves them empty.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import K8sCluster
from tests.k8s.operator_fixture import (
    SchedulerProcess,
    apply_yaml,
    install_crds,
    kubectl_json,
    live_pods_on,
    start_scheduler,
    wait_for,
)

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(60)]

H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.fixture(scope="module")
def scheduler(
    k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SchedulerProcess]:
    install_crds(k8s_cluster)  # it watches TrainingJobs, BatchJobs and Queues too
    sched = start_scheduler(k8s_cluster, tmp_path_factory.mktemp("scheduler"))
    try:
        yield sched
    finally:
        sched.stop()


@pytest.fixture
def ns(k8s_cluster: K8sCluster, k8s_namespace: str, scheduler: SchedulerProcess) -> Iterator[str]:
    """A namespace on empty GPU nodes, emptied again after the test (namespace deletion is slow)."""
    wait_for(lambda: not live_pods_on(k8s_cluster, "gpu-"), 30, "GPU nodes free of other tests' pods")
    yield k8s_namespace
    k8s_cluster.kubectl("delete", "jobs,pods", "--all", "-n", k8s_namespace, "--grace-period=0", "--force")
    wait_for(lambda: not pods_in(k8s_cluster, k8s_namespace), 30, f"pods of {k8s_namespace} deleted")
    assert scheduler.stopped or scheduler.proc.poll() is None, scheduler.log_text()


def pod_spec(gpus: int, *, selector: dict[str, str] | None = None, tolerate: bool = True) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {"requests": {"cpu": "100m"}}
    spec: dict[str, Any] = {
        "schedulerName": "aiplane",
        "restartPolicy": "Never",
        "containers": [{"name": "worker", "image": "busybox", "resources": resources}],
    }
    if selector:
        spec["nodeSelector"] = selector
    if tolerate:
        spec["tolerations"] = TOLERATE_GPU
    return spec


def indexed_job(name: str, workers: int, gpus: int) -> str:
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "completionMode": "Indexed",
                "completions": workers,
                "parallelism": workers,
                "backoffLimit": 0,
                "template": {"spec": pod_spec(gpus, selector=H100)},
            },
        }
    )


def bare_pod(name: str, gpus: int, **kw: Any) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec(gpus, **kw)}
    )


def pods_in(cluster: K8sCluster, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", "pods", "-n", ns] + (["-l", selector] if selector else [])
    return sorted(kubectl_json(cluster, *args)["items"], key=lambda p: p["metadata"]["name"])


def failed_scheduling(cluster: K8sCluster, ns: str) -> dict[str, list[str]]:
    """Pod name -> the messages of its FailedScheduling events, oldest first."""
    events = kubectl_json(cluster, "get", "events", "-n", ns, "--field-selector", "reason=FailedScheduling")
    out: dict[str, list[str]] = {}
    for e in sorted(events["items"], key=lambda e: e["metadata"]["creationTimestamp"]):
        assert e["type"] == "Warning" and e["source"]["component"] == "aiplane-scheduler"
        out.setdefault(e["involvedObject"]["name"], []).append(e["message"])
    return out


def apply(cluster: K8sCluster, ns: str, *docs: str) -> None:
    for doc in docs:
        out = apply_yaml(cluster, doc, ns)
        assert out.returncode == 0, out.stderr


def test_indexed_job_gang_lands_on_distinct_h100_nodes_and_runs(k8s_cluster: K8sCluster, ns: str) -> None:
    apply(k8s_cluster, ns, indexed_job("train", 3, 8))

    def running() -> list[dict[str, Any]] | None:
        pods = pods_in(k8s_cluster, ns, "batch.kubernetes.io/job-name=train")
        ok = len(pods) == 3 and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    pods = wait_for(running, 30, "3 Running pods of job train")
    nodes = [p["spec"]["nodeName"] for p in pods]
    assert len(set(nodes)) == 3, nodes
    for node in nodes:
        labels = kubectl_json(k8s_cluster, "get", "node", node)["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3", node
    for p in pods:
        scheduled = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
        assert scheduled["status"] == "True"
    assert failed_scheduling(k8s_cluster, ns) == {}  # the gang waited for its 3 pods, silently


def test_a_gang_too_big_for_the_fleet_stays_entirely_pending(k8s_cluster: K8sCluster, ns: str) -> None:
    apply(k8s_cluster, ns, indexed_job("big", 5, 8))

    def all_reported() -> dict[str, list[str]] | None:
        bound = [p["metadata"]["name"] for p in pods_in(k8s_cluster, ns) if p["spec"].get("nodeName")]
        assert bound == [], f"part of the gang was bound: {bound}"
        events = failed_scheduling(k8s_cluster, ns)
        return events if len(events) == 5 else None

    events = wait_for(all_reported, 30, "FailedScheduling for 5 pods")
    for pod, messages in events.items():
        assert len(messages) == 1, messages
        assert messages[0].startswith("gang of 5 pods, 4 fit; 0/8 nodes fit"), messages[0]
        assert "4 too few free GPUs" in messages[0], messages[0]
        assert pod.startswith("big-")
    time.sleep(3)  # three more cycles: still nothing bound, and no repeated events
    pods = pods_in(k8s_cluster, ns)
    assert len(pods) == 5
    assert [p["spec"].get("nodeName") for p in pods] == [None] * 5
    for p in pods:
        scheduled = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
        assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
        assert scheduled["message"] == events[p["metadata"]["name"]][0]
    assert failed_scheduling(k8s_cluster, ns) == events


def test_small_pods_are_packed_so_whole_nodes_stay_free(k8s_cluster: K8sCluster, ns: str) -> None:
    apply(k8s_cluster, ns, bare_pod("half-a", 4, selector=H100), bare_pod("half-b", 4, selector=H100))

    def both_bound() -> list[str] | None:
        nodes = [p["spec"].get("nodeName") for p in pods_in(k8s_cluster, ns)]
        return nodes if len(nodes) == 2 and all(nodes) else None

    first, second = wait_for(both_bound, 30, "both 4-GPU pods bound")
    assert first == second, "two 4-GPU pods were spread over two nodes"
    # The three H100 nodes left are whole: a 3 x 8 gang still fits.
    apply(k8s_cluster, ns, indexed_job("full", 3, 8))

    def gang_bound() -> list[str] | None:
        nodes = [
            p["spec"].get("nodeName") for p in pods_in(k8s_cluster, ns, "batch.kubernetes.io/job-name=full")
        ]
        return nodes if len(nodes) == 3 and all(nodes) else None

    nodes = wait_for(gang_bound, 30, "the 3 x 8 gang bound")
    assert first not in nodes and len(set(nodes)) == 3, (first, nodes)


def test_a_pod_without_the_gpu_toleration_never_lands_on_a_gpu_node(k8s_cluster: K8sCluster, ns: str) -> None:
    apply(
        k8s_cluster, ns, bare_pod("no-toleration", 1, tolerate=False), bare_pod("cpu-only", 0, tolerate=False)
    )
    events = wait_for(lambda: failed_scheduling(k8s_cluster, ns).get("no-toleration"), 30, "FailedScheduling")
    assert len(events) == 1
    message = events[0]
    assert message.startswith("0/"), message
    assert "6 untolerated taint nvidia.com/gpu=present" in message and "2 no GPU" in message, message
    # The same scheduler did place the CPU-only pod: on a CPU node (a GPU node is tainted).
    cpu_node = wait_for(
        lambda: kubectl_json(k8s_cluster, "get", "pod", "cpu-only", "-n", ns)["spec"].get("nodeName"),
        30,
        "cpu-only bound",
    )
    assert cpu_node.startswith("cpu-"), cpu_node
    time.sleep(3)
    assert kubectl_json(k8s_cluster, "get", "pod", "no-toleration", "-n", ns)["spec"].get("nodeName") is None


def test_health_metrics_and_sigterm(k8s_cluster: K8sCluster, ns: str, scheduler: SchedulerProcess) -> None:
    assert scheduler.get("/healthz") == (200, "ok\n")
    before = scheduler.metrics()
    apply(k8s_cluster, ns, bare_pod("counted", 0, tolerate=False))
    wait_for(
        lambda: kubectl_json(k8s_cluster, "get", "pod", "counted", "-n", ns)["spec"].get("nodeName"),
        30,
        "bound",
    )
    after = scheduler.metrics()
    assert after["aiplane_scheduler_binds_total"] == before["aiplane_scheduler_binds_total"] + 1
    assert (
        after["aiplane_scheduler_cycle_duration_seconds_count"]
        > before["aiplane_scheduler_cycle_duration_seconds_count"]
    )
    assert after["aiplane_scheduler_unschedulable_gangs"] == 0
    assert scheduler.stop() == 0, scheduler.log_text()
    assert "aiplane scheduler stopped" in scheduler.log_text()


def test_two_replicas_run_and_only_the_leader_binds(k8s_cluster: K8sCluster, ns: str, tmp_path: Path) -> None:
    """Two schedulers share one Lease: one binds, the other only watches; on SIGTERM the
    leader releases the Lease and the other takes over at once (no lease timeout to wait)."""
    pair = [start_scheduler(k8s_cluster, tmp_path), start_scheduler(k8s_cluster, tmp_path)]
    try:

        def leaders() -> list[float]:
            return [s.metrics().get("aiplane_scheduler_leader", -1.0) for s in pair]

        wait_for(lambda: sorted(leaders()) == [0.0, 1.0], 30, "exactly one leader")
        leader, follower = pair if leaders()[0] == 1.0 else pair[::-1]
        apply(k8s_cluster, ns, *(bare_pod(f"led-{i}", 0, tolerate=False) for i in range(4)))
        wait_for(lambda: all(p["spec"].get("nodeName") for p in pods_in(k8s_cluster, ns)), 30, "4 bound")
        assert leader.metrics()["aiplane_scheduler_binds_total"] == 4
        assert follower.metrics()["aiplane_scheduler_binds_total"] == 0
        assert leaders().count(1.0) == 1  # never both

        assert leader.stop() == 0, leader.log_text()
        wait_for(lambda: follower.metrics().get("aiplane_scheduler_leader") == 1.0, 10, "the follower leads")
        apply(k8s_cluster, ns, bare_pod("after-failover", 0, tolerate=False))
        wait_for(
            lambda: kubectl_json(k8s_cluster, "get", "pod", "after-failover", "-n", ns)["spec"].get(
                "nodeName"
            ),
            30,
            "bound by the new leader",
        )
        assert follower.metrics()["aiplane_scheduler_binds_total"] == 1
    finally:
        for s in pair:
            s.stop()
