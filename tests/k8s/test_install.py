"""`aiplane install | kubectl apply -f -` on the real control plane, and what its RBAC allows."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.k8s.conftest import K8sCluster
from tests.k8s.operator_fixture import kubectl_json, wait_for

pytestmark = pytest.mark.k8s

NS = "aiplane-system"


def can_i(cluster: K8sCluster, account: str, verb: str, resource: str, namespace: str = "default") -> bool:
    resource, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    out = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, "-n", namespace, f"--as=system:serviceaccount:{NS}:{account}"
    )
    return out.stdout.strip() == "yes"


def test_install_applies_cleanly_with_least_privilege(k8s_cluster: K8sCluster) -> None:
    rendered = subprocess.run(
        [sys.executable, "-m", "aiplane.cli.main", "install"], capture_output=True, text=True, check=True
    ).stdout
    applied = subprocess.run(
        ["kubectl", "--kubeconfig", str(k8s_cluster.kubeconfig), "apply", "--server-side",
         "--force-conflicts", "-f", "-"],
        input=rendered, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    for name in ("aiplane-operator", "aiplane-scheduler", "aiplane-gateway"):

        def ready(name: str = name) -> bool:
            d = kubectl_json(k8s_cluster, "get", "deployment", name, "-n", NS)
            return bool(d) and d.get("status", {}).get("readyReplicas") == d["spec"]["replicas"]

        wait_for(ready, 60, f"{name} ready (KWOK runs its pods)")
    assert kubectl_json(k8s_cluster, "get", "service", "aiplane-gateway", "-n", NS)["spec"]["ports"]

    # No wildcards anywhere, and no cluster-admin.
    roles = kubectl_json(
        k8s_cluster, "get", "clusterroles,roles", "-A", "-l", "app.kubernetes.io/part-of=aiplane"
    )
    assert roles["items"], "the install's roles carry the part-of label"
    for role in roles["items"]:
        for rule in role.get("rules", []):
            assert "*" not in rule.get("verbs", []), role["metadata"]["name"]
            assert "*" not in rule.get("resources", []), role["metadata"]["name"]
    bindings = kubectl_json(
        k8s_cluster, "get", "clusterrolebindings", "-l", "app.kubernetes.io/part-of=aiplane"
    )
    assert all(b["roleRef"]["name"] != "cluster-admin" for b in bindings["items"])

    # What each component may do, asked of the real authorizer.
    assert can_i(k8s_cluster, "aiplane-operator", "create", "deployments.apps")
    assert can_i(k8s_cluster, "aiplane-operator", "patch", "models.aiplane.dev/status")
    assert can_i(k8s_cluster, "aiplane-operator", "create", "jobs.batch")
    assert not can_i(k8s_cluster, "aiplane-operator", "get", "secrets")
    assert not can_i(k8s_cluster, "aiplane-operator", "list", "secrets")
    assert not can_i(k8s_cluster, "aiplane-operator", "create", "pods/binding")
    assert can_i(k8s_cluster, "aiplane-scheduler", "create", "pods/binding")
    assert not can_i(k8s_cluster, "aiplane-scheduler", "create", "deployments.apps")
    assert can_i(k8s_cluster, "aiplane-gateway", "list", "endpointslices.discovery.k8s.io")
    assert not can_i(k8s_cluster, "aiplane-gateway", "patch", "models.aiplane.dev")
    assert not can_i(k8s_cluster, "aiplane-gateway", "get", "secrets")
