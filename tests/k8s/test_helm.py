"""The Helm chart: linted, rendered by the real helm, and applied to the real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aiplane.dev.k8s_build import ensure_helm
from tests.k8s.conftest import K8sCluster
from tests.k8s.operator_fixture import kubectl_json, wait_for

pytestmark = pytest.mark.k8s
CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "aiplane"


def test_chart_lints_renders_and_applies(k8s_cluster: K8sCluster) -> None:
    helm = str(ensure_helm(build=False))
    lint = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    ns = "aiplane-helm"
    rendered = subprocess.run(
        [helm, "template", "aiplane", str(CHART), "-n", ns, "--include-crds",
         "--set", "image=example/aiplane:test"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "example/aiplane:test" in rendered
    k8s_cluster.kubectl("create", "namespace", ns)
    applied = subprocess.run(
        ["kubectl", "--kubeconfig", str(k8s_cluster.kubeconfig), "apply", "--server-side",
         "--force-conflicts", "-f", "-"],
        input=rendered, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr

    def ready() -> bool:
        deps = kubectl_json(k8s_cluster, "get", "deployments", "-n", ns)
        return len(deps["items"]) == 3 and all(
            d.get("status", {}).get("readyReplicas") == d["spec"]["replicas"] for d in deps["items"]
        )

    wait_for(ready, 60, "the chart's three Deployments ready")
    images = {
        c["image"]
        for d in kubectl_json(k8s_cluster, "get", "deployments", "-n", ns)["items"]
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"example/aiplane:test"}
