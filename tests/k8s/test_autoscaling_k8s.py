"""Autoscaling on Kubernetes, end to end with real tokens: a Model at zero serves its first
request through the Kubernetes gateway, load raises its replicas, idleness brings them back
to zero; a ``metric: cpu`` Model yields an HPA the real controller-manager takes.

Real API server, controller-manager, KWOK nodes, the aiplane operator (its autoscaler
reading this test's gateway's /metrics) and scheduler; llama-server with SmolLM2 bound to
each Ready pod's loopback IP by the kubelet stand-in (``kubelet_standin.py``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import LABEL_ENGINE, LABEL_MODEL
from aiplane.runtime.kubernetes.discovery import KubernetesDiscovery
from aiplane.runtime.kubernetes.gateway import build_app
from aiplane.runtime.kubernetes.objects import API
from tests.k8s.conftest import K8sCluster, eventually
from tests.k8s.kubelet_standin import KubeletStandIn, smollm2_model_yaml
from tests.k8s.operator_fixture import Operator, apply_yaml, operator_and_scheduler

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GATEWAY_PORT = free_port()


def elastic_yaml(name: str, served: str) -> str:
    return smollm2_model_yaml(
        name,
        served,
        replicas="{min: 0, max: 2}",
        autoscaling="{metric: concurrency, target: 1, scaleToZeroAfter: 8s, scaleDownDelay: 1s, "
        "stableWindow: 4s, panicWindow: 2s, headroom: 0}",  # counts replicas: no spare
        timeouts="{coldStart: 90s}",
    )


@pytest.fixture(scope="module")
def operator(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    env = {"AIPLANE_GATEWAY_METRICS": f"http://127.0.0.1:{GATEWAY_PORT}/metrics"}
    with operator_and_scheduler(k8s_cluster, tmp_path_factory.mktemp("autoscaling"), env) as op:
        yield op


@pytest.fixture
async def kube(k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as client:
        yield client


def serving(stand_in: KubeletStandIn) -> list[str]:
    return [e.pod for e in stand_in.engines.values() if e.running]


async def desired(kube: Kube, ns: str, name: str) -> int | None:
    body = await kube.get(API, "Model", name, ns)
    assert body is not None
    value = ((body.get("spec") or {}).get("replicas") or {}).get("desired")
    return None if value is None else int(value)


async def test_a_model_at_zero_serves_scales_with_load_and_returns_to_zero(
    kube: Kube, k8s_namespace: str, k8s_cluster: K8sCluster, operator: Operator, tmp_path: Path
) -> None:
    ns, served = k8s_namespace, f"elastic-{k8s_namespace}"
    assert apply_yaml(k8s_cluster, elastic_yaml("elastic", served), ns).returncode == 0
    stand_in = KubeletStandIn(kube, ns, f"{LABEL_ENGINE}=llamacpp", tmp_path)
    discovery = KubernetesDiscovery(kube, ns)
    async with (
        stand_in.running(),
        TestServer(build_app(discovery), host="127.0.0.1", port=GATEWAY_PORT) as server,
    ):
        await asyncio.sleep(3)
        assert await kube.list("v1", "Pod", ns, f"{LABEL_MODEL}=elastic") == []  # min 0: nothing runs
        client = openai.OpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0, timeout=120)

        def chat(i: int, tokens: int, ignore_eos: bool = False) -> Any:
            return client.chat.completions.create(
                model=served,
                max_tokens=tokens,
                messages=[{"role": "user", "content": f"Count to {i}."}],
                extra_body={"ignore_eos": True} if ignore_eos else None,
            )

        # 1. The first request is held through the cold start: the gateway scales the Model
        #    to one through /scale, a pod starts, its engine loads, and the answer comes back.
        first = await asyncio.to_thread(chat, 3, 8)
        assert first.choices[0].message.content and first.usage and first.usage.completion_tokens > 0
        assert await desired(kube, ns, "elastic") == 1
        assert not stand_in.errors, stand_in.errors

        # 2. Three requests at once for one slot each: the autoscaler (reading this
        #    gateway's /metrics) raises the Model to its max of 2; every request completes.
        #    Each generates all its tokens (ignore_eos; "Count to 0." alone may stop at once),
        #    so the demand lasts seconds, longer than the autoscaler's 1 s tick and windows.
        async def two_replicas() -> bool:
            return await desired(kube, ns, "elastic") == 2

        burst = [asyncio.to_thread(chat, i, 400, True) for i in range(3)]
        *answers, _ = await asyncio.gather(*burst, eventually(two_replicas, 60, "the Model scaled to 2"))
        for answer in answers:
            assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")
        assert len(serving(stand_in)) == 2
        body = await kube.get(API, "Model", "elastic", ns)
        assert body is not None and body["status"]["autoscaler"]["replicas"] >= 1

        # 3. Idle for scaleToZeroAfter (8 s): back to zero, and the engines stop with their pods.
        async def at_zero() -> bool:
            return await desired(kube, ns, "elastic") == 0

        await eventually(at_zero, 60, "the Model back at zero")

        async def no_pods() -> bool:
            return await kube.list("v1", "Pod", ns, f"{LABEL_MODEL}=elastic") == []

        await eventually(no_pods, 60, "its pods gone")

        async def stopped() -> bool:
            return serving(stand_in) == []

        await eventually(stopped, 30, "the engines stopped")


async def test_a_cpu_model_yields_an_hpa_the_controller_manager_takes(
    kube: Kube, k8s_namespace: str, k8s_cluster: K8sCluster, operator: Operator
) -> None:
    ns = k8s_namespace
    spec = (
        elastic_yaml("textbook", f"textbook-{ns}")
        .replace("autoscaling: {metric: concurrency, target: 1,", "autoscaling: {metric: cpu, target: 0.6,")
        .replace("replicas: {min: 0, max: 2}", "replicas: {min: 1, max: 3}")
    )
    out = apply_yaml(k8s_cluster, spec, ns)
    assert out.returncode == 0, out.stderr

    async def hpa_status() -> Any:
        hpa = await kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "textbook", ns)
        return hpa if hpa and (hpa.get("status") or {}).get("conditions") else None

    hpa = await eventually(hpa_status, 90, "the HPA with conditions from the controller-manager")
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    conditions = {c["type"]: c for c in hpa["status"]["conditions"]}
    # It found the Deployment and can scale it; KWOK pods report no CPU use (no metrics
    # server), which the controller says in ScalingActive.
    assert conditions["AbleToScale"]["status"] == "True", conditions
    deployment = await kube.get("apps/v1", "Deployment", "textbook", ns)
    assert deployment is not None and deployment["spec"]["replicas"] >= 1
    body = await kube.get(API, "Model", "textbook", ns)
    assert body is not None and "autoscaler" not in (body.get("status") or {})
