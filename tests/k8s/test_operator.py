"""The operator on a real control plane with KWOK GPU nodes: Models."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import K8sCluster
from tests.k8s.operator_fixture import (
    Operator,
    apply_yaml,
    kubectl_json,
    operator_and_scheduler,
    wait_for,
)

pytestmark = pytest.mark.k8s

H100 = "NVIDIA-H100-80GB-HBM3"


def model_yaml(
    name: str, *, args: str = "[]", min_replicas: int = 2, gpus: str = "1", gpu_model: str = "H100"
) -> str:
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: {name}}}
spec:
  engine: vllm
  source: hf://meta-llama/Meta-Llama-3-8B-Instruct
  args: {args}
  resources: {{gpus: {gpus}, gpuModel: {gpu_model}, memory: 16Gi}}
  replicas: {{min: {min_replicas}, max: 4}}
"""


@pytest.fixture(scope="module")
def operator(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with operator_and_scheduler(k8s_cluster, tmp_path_factory.mktemp("operator")) as op:
        yield op


def owned(cluster: K8sCluster, ns: str, kind: str, model: str) -> list[dict[str, Any]]:
    got = kubectl_json(cluster, "get", kind, "-n", ns, "-l", f"aiplane.dev/model={model}")
    return list(got["items"]) if got else []


def ready_pods(cluster: K8sCluster, ns: str, model: str) -> list[dict[str, Any]]:
    pods = owned(cluster, ns, "pods", model)
    return [
        p
        for p in pods
        if p.get("metadata", {}).get("deletionTimestamp") is None
        and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])
        )
    ]


def test_gpu_model_lowers_to_deployment_service_pdb_and_cache(
    k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator
) -> None:
    ns = k8s_namespace
    out = apply_yaml(k8s_cluster, model_yaml("llama"), ns)
    assert out.returncode == 0, out.stderr

    dep = wait_for(
        lambda: kubectl_json(k8s_cluster, "get", "deployment", "llama", "-n", ns), 30, "Deployment"
    )
    pod_spec = dep["spec"]["template"]["spec"]
    server = next(c for c in pod_spec["containers"] if c["name"] == "server")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec["nodeSelector"]["nvidia.com/gpu.product"] == H100
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert server["startupProbe"]["httpGet"]["path"] == "/health"
    assert [c["name"] for c in pod_spec["initContainers"]] == ["preload"]
    claim = next(v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]
    assert claim["claimName"] == "llama-model-cache"
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "Model"
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "aiplane"

    # Pods run on H100 nodes only, with the cache volume bound.
    def two_ready() -> list[dict[str, Any]]:
        pods = ready_pods(k8s_cluster, ns, "llama")
        return pods if len(pods) == 2 else []

    pods = wait_for(two_ready, 60, "2 ready pods")
    for pod in pods:
        node = kubectl_json(k8s_cluster, "get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    pvc = kubectl_json(k8s_cluster, "get", "pvc", "llama-model-cache", "-n", ns)
    assert pvc["status"]["phase"] == "Bound"

    # A Service with endpoints, and a PDB because there are 2 replicas.
    def endpoints() -> int:
        slices = kubectl_json(
            k8s_cluster, "get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=llama"
        )
        return sum(
            1
            for s in slices["items"]
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready")
        )

    wait_for(lambda: endpoints() == 2, 30, "2 ready endpoints")
    pdb = kubectl_json(k8s_cluster, "get", "pdb", "llama", "-n", ns)
    assert pdb["spec"]["maxUnavailable"] == 1

    # kubectl get models shows 2/2 ready, from the status the operator keeps.
    def listed() -> str:
        out = k8s_cluster.kubectl("get", "models", "-n", ns)
        return out.stdout if "2/2" in out.stdout else ""

    table = wait_for(listed, 30, "kubectl get models to show 2/2")
    assert "READY" in table and "vllm" in table
    model = kubectl_json(k8s_cluster, "get", "model", "llama", "-n", ns)
    assert model["status"]["observedGeneration"] == model["metadata"]["generation"]
    ready = next(c for c in model["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    events = kubectl_json(
        k8s_cluster, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=llama"
    )
    assert any(e["reason"] == "Reconciled" for e in events["items"])


def test_spec_change_rolls_and_delete_collects_everything(
    k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator
) -> None:
    ns = k8s_namespace
    assert apply_yaml(k8s_cluster, model_yaml("roll", min_replicas=2), ns).returncode == 0
    wait_for(lambda: len(ready_pods(k8s_cluster, ns, "roll")) == 2, 60, "2 ready pods")
    before = {p["metadata"]["name"] for p in ready_pods(k8s_cluster, ns, "roll")}
    dep = kubectl_json(k8s_cluster, "get", "deployment", "roll", "-n", ns)
    generation = dep["metadata"]["generation"]

    assert apply_yaml(k8s_cluster, model_yaml("roll", args="[--max-num-seqs, '64']"), ns).returncode == 0

    def rolled() -> bool:
        d = kubectl_json(k8s_cluster, "get", "deployment", "roll", "-n", ns)
        args = next(c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "server")["args"]
        now = {p["metadata"]["name"] for p in ready_pods(k8s_cluster, ns, "roll")}
        return (
            d["metadata"]["generation"] > generation
            and "--max-num-seqs" in args
            and len(now) == 2
            and not (now & before)
        )

    wait_for(rolled, 90, "a rolling update to new pods")

    # Going below 2 replicas removes the PDB (pruned, not left behind).
    assert apply_yaml(k8s_cluster, model_yaml("roll", min_replicas=1), ns).returncode == 0
    wait_for(lambda: kubectl_json(k8s_cluster, "get", "pdb", "roll", "-n", ns) is None, 30, "the PDB pruned")

    assert k8s_cluster.kubectl("delete", "model", "roll", "-n", ns, "--wait=true").returncode == 0

    def collected() -> bool:
        return all(
            not owned(k8s_cluster, ns, kind, "roll") for kind in ("deployments", "services", "pvc", "pods")
        )

    wait_for(collected, 60, "garbage collection of everything the Model owned")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ("replicas: {min: -1, max: 2}", "spec.replicas.min"),
        ("engine: nope", "spec.engine"),
        ("resources: {gpus: -1}", "spec.resources.gpus"),
    ],
)
def test_api_server_rejects_invalid_specs_naming_the_field(
    k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator, patch: str, field: str
) -> None:
    key = patch.split(":")[0]
    lines = [ln for ln in model_yaml("bad").splitlines() if not ln.strip().startswith(key + ":")]
    text = "\n".join(lines) + f"\n  {patch}\n"
    out = apply_yaml(k8s_cluster, text, k8s_namespace)
    assert out.returncode != 0
    assert field in out.stderr, out.stderr
    assert kubectl_json(k8s_cluster, "get", "model", "bad", "-n", k8s_namespace) is None


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator, tmp_path: Path
) -> None:
    ns = k8s_namespace
    operator.stop()
    try:
        assert apply_yaml(k8s_cluster, model_yaml("crash", min_replicas=2), ns).returncode == 0
        operator.start()

        # Kill it as soon as it has started writing (the first owned object appears).
        def started() -> list[dict[str, Any]]:
            return owned(k8s_cluster, ns, "pvc", "crash") or owned(k8s_cluster, ns, "services", "crash")

        wait_for(started, 30, "the operator to start reconciling")
        operator.stop(signal.SIGKILL)
        operator.start()

        def converged() -> bool:
            m = kubectl_json(k8s_cluster, "get", "model", "crash", "-n", ns)
            return bool(m and m.get("status", {}).get("ready") == "2/2")

        wait_for(converged, 90, "status 2/2 after the restart")
        time.sleep(2)  # a few more status ticks: nothing new may appear
        for kind in ("deployments", "services", "pdb", "pvc"):
            assert len(owned(k8s_cluster, ns, kind, "crash")) == 1, kind
        assert len(owned(k8s_cluster, ns, "replicasets", "crash")) == 1
        assert len(ready_pods(k8s_cluster, ns, "crash")) == 2
    finally:
        if operator.proc is None:
            operator.start()


def test_a_model_no_node_can_take_says_why_in_its_status(
    k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator
) -> None:
    """The Deployment alone reports a Pending pod as nothing wrong; the Model says why."""
    ns = k8s_namespace
    assert apply_yaml(k8s_cluster, model_yaml("b200", min_replicas=1, gpu_model="B200"), ns).returncode == 0

    def degraded() -> dict[str, Any] | None:
        model = kubectl_json(k8s_cluster, "get", "model", "b200", "-n", ns)
        conds = {c["type"]: c for c in (model or {}).get("status", {}).get("conditions", [])}
        return conds["Degraded"] if conds.get("Degraded", {}).get("status") == "True" else None

    cond = wait_for(degraded, 30, "Degraded=True")
    assert cond["reason"] == "Unschedulable"
    assert cond["message"].startswith("pod b200-")
    assert "0/8 nodes fit" in cond["message"] and "node affinity mismatch" in cond["message"], cond
