"""The dev cluster behaves like a GPU cluster: scheduling, taints, Jobs, garbage collection."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from aiplane.dev.network import POD_CIDR
from tests.k8s.conftest import CPU_NODES, K8sCluster, eventually, obj

pytestmark = pytest.mark.k8s

H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
COMPLETE_AFTER = "aiplane.dev/kwok-complete-after"


def pod_spec(
    *, gpus: int = 0, tolerate: bool = False, selector: dict[str, str] | None = None
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "example.invalid/fake:1", "resources": resources}]
    }
    if tolerate:
        spec["tolerations"] = [GPU_TOLERATION]
    if selector:
        spec["nodeSelector"] = selector
    return spec


def deployment(name: str, replicas: int, spec: dict[str, Any]) -> Any:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def job(name: str, completions: int, annotations: dict[str, str]) -> Any:
    spec = pod_spec()
    spec["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions,
            "parallelism": completions,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"metadata": {"annotations": annotations}, "spec": spec},
        },
    }


async def running_pods(core: client.CoreV1Api, ns: str, selector: str, n: int) -> list[Any]:
    pods = (await core.list_namespaced_pod(ns, label_selector=selector)).items
    running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
    return running if len(running) == n else []


async def test_gpu_deployment_with_toleration_runs_on_a_gpu_node(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    async with k8s_cluster.client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        spec = pod_spec(gpus=1, tolerate=True, selector={"aiplane.dev/gpu-model": "H100"})
        await apps.create_namespaced_deployment(ns, deployment("llm", 2, spec))
        pods = await eventually(lambda: running_pods(core, ns, "app=llm", 2), 30, "2 Running pods")
        for pod in pods:
            node = await core.read_node(pod.spec.node_name)
            assert node.metadata.labels["nvidia.com/gpu.product"] == H100
            assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(POD_CIDR)  # loopback
            assert pod.status.container_statuses[0].ready is True

        async def available() -> bool:
            d = await apps.read_namespaced_deployment("llm", ns)
            return d.status.available_replicas == 2

        await eventually(available, 20, "deployment availableReplicas == 2")


async def test_pods_without_toleration_stay_off_gpu_nodes(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    async with k8s_cluster.client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        await apps.create_namespaced_deployment(ns, deployment("web", 6, pod_spec()))
        pods = await eventually(lambda: running_pods(core, ns, "app=web", 6), 30, "6 Running pods")
        nodes = {p.spec.node_name for p in pods}
        assert nodes <= {f"cpu-{i}" for i in range(CPU_NODES)}, nodes
        for name in nodes:
            node = await core.read_node(name)
            assert node.metadata.labels["aiplane.dev/node-pool"] == "system"
            assert not node.spec.taints


async def test_pod_asking_for_more_gpus_than_a_node_has_stays_pending(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    async with k8s_cluster.client() as api:
        core = client.CoreV1Api(api)
        body: Any = {"metadata": {"name": "too-big"}, "spec": pod_spec(gpus=9, tolerate=True)}
        await core.create_namespaced_pod(ns, body)

        async def failed_scheduling() -> list[Any]:
            events = await core.list_namespaced_event(ns, field_selector="involvedObject.name=too-big")
            return [e for e in events.items if e.reason == "FailedScheduling"]

        events = await eventually(failed_scheduling, 30, "a FailedScheduling event")
        assert "Insufficient nvidia.com/gpu" in events[0].message, events[0].message
        pod = await core.read_namespaced_pod("too-big", ns)
        assert pod.status.phase == "Pending"
        assert pod.spec.node_name is None


async def test_indexed_job_completes_after_annotated_duration_and_others_keep_running(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    async with k8s_cluster.client() as api:
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        await batch.create_namespaced_job(ns, job("train", 3, {COMPLETE_AFTER: "2s"}))
        await batch.create_namespaced_job(ns, job("serve-forever", 1, {}))

        async def complete() -> Any:
            j = await batch.read_namespaced_job("train", ns)
            conds = j.status.conditions or []
            failed = [c for c in conds if c.type == "Failed" and c.status == "True"]
            assert not failed, failed
            done = any(c.type == "Complete" and c.status == "True" for c in conds)
            return j if done else None

        j = await eventually(complete, 60, "job/train Complete")
        assert j.status.succeeded == 3
        assert j.status.completed_indexes == "0-2"
        assert (j.status.completion_time - j.status.start_time).total_seconds() >= 2

        forever = await batch.read_namespaced_job("serve-forever", ns)
        assert forever.status.active == 1
        assert not forever.status.succeeded
        pods = await core.list_namespaced_pod(ns, label_selector="job-name=serve-forever")
        assert [p.status.phase for p in pods.items] == ["Running"]


async def test_garbage_collector_and_namespace_deletion_remove_everything(
    k8s_cluster: K8sCluster,
) -> None:
    ns = f"gc-{uuid.uuid4().hex[:8]}"
    async with k8s_cluster.client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        batch = client.BatchV1Api(api)
        await core.create_namespace(obj({"metadata": {"name": ns}}))

        async def sa() -> bool:
            sas = await core.list_namespaced_service_account(ns)
            return any(s.metadata.name == "default" for s in sas.items)

        await eventually(sa, 15, "default service account")
        await apps.create_namespaced_deployment(ns, deployment("keep", 2, pod_spec()))
        await apps.create_namespaced_deployment(ns, deployment("drop", 2, pod_spec()))
        await batch.create_namespaced_job(ns, job("j", 1, {}))
        cm = {"metadata": {"name": "cm"}, "data": {"a": "b"}}
        await core.create_namespaced_config_map(ns, obj(cm))
        await eventually(lambda: running_pods(core, ns, "app=drop", 2), 30, "drop pods Running")
        await eventually(lambda: running_pods(core, ns, "app=keep", 2), 30, "keep pods Running")

        # Garbage collector: deleting the Deployment alone must cascade to RS and pods.
        await apps.delete_namespaced_deployment("drop", ns, propagation_policy="Background")

        async def dropped() -> bool:
            rs = await apps.list_namespaced_replica_set(ns, label_selector="app=drop")
            pods = await core.list_namespaced_pod(ns, label_selector="app=drop")
            return not rs.items and not pods.items

        await eventually(dropped, 30, "GC of the deleted Deployment's ReplicaSet and pods")
        keep = await core.list_namespaced_pod(ns, label_selector="app=keep")
        assert len(keep.items) == 2  # the GC touched only what it owned

        # Namespace controller: deleting the namespace removes everything, then itself.
        await core.delete_namespace(ns)

        async def gone() -> bool:
            try:
                await core.read_namespace(ns)
            except ApiException as e:
                if e.status == 404:
                    return True
                raise
            return False

        await eventually(gone, 60, f"namespace {ns} to be deleted")
        leftovers = await core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
        assert leftovers.items == []


def test_kubectl_lists_tainted_h100_nodes_with_8_gpus(k8s_cluster: K8sCluster) -> None:
    table = k8s_cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product")
    assert table.returncode == 0, table.stderr
    header, *rows = [line.split() for line in table.stdout.splitlines()]
    assert header[0] == "NAME" and header[-1] == "GPU.PRODUCT", header
    h100 = [r for r in rows if r[-1] == H100]
    assert sorted(r[0] for r in h100) == [f"gpu-h100-{i}" for i in range(4)]
    assert all(r[1] == "Ready" for r in h100), h100

    out = k8s_cluster.kubectl(
        "get",
        "nodes",
        "-l",
        f"nvidia.com/gpu.product={H100}",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.allocatable.nvidia\\.com/gpu} "
        "{.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}{'\\n'}{end}",
    )
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.split("\n")[:-1])
    assert lines == [f"gpu-h100-{i} 8 nvidia.com/gpu=present:NoSchedule" for i in range(4)]
