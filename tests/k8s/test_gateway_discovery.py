"""The gateway's Kubernetes discovery on a real control plane with KWOK pods.

No operator runs: each test creates a Model and applies what it lowers to, so what is
under test is discovery alone. KWOK marks pods Running and Ready with pod IPs and the
EndpointSlice controller publishes them; nothing listens on those IPs, so no test sends
inference traffic to a pod.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer, unused_port

from aiplane.api import Model
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.discovery import KubernetesDiscovery
from aiplane.runtime.kubernetes.gateway import build_app
from aiplane.runtime.kubernetes.lowering import lower
from aiplane.runtime.kubernetes.objects import from_body, owner_of
from tests.k8s.conftest import K8sCluster, eventually
from tests.k8s.operator_fixture import install_crds, start_scheduler

pytestmark = pytest.mark.k8s

API = "aiplane.dev/v1alpha1"
VLLM_PORT = 8000
POD_READY_S = 60.0  # KWOK pods are ready in a second or two; scheduling and slices add a little


@pytest.fixture(scope="module")
def crds(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The CRDs, and the aiplane scheduler: Model replicas name ``schedulerName: aiplane``."""
    install_crds(k8s_cluster)  # server-side apply: idempotent, shared with the operator tests
    scheduler = start_scheduler(k8s_cluster, tmp_path_factory.mktemp("scheduler"))
    yield
    scheduler.stop()


@pytest.fixture
async def kube(k8s_cluster: K8sCluster, k8s_namespace: str, crds: None) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as client:
        yield client


def vllm_spec(served: str, replicas: int, **extra: Any) -> dict[str, Any]:
    return {
        "engine": "vllm",
        "source": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
        "servedModelName": served,
        "resources": {"gpus": 1, "gpuModel": "H100", "memory": "16Gi"},
        "replicas": {"min": replicas, "max": 4},
        **extra,
    }


async def deploy(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> Model:
    """The Model CR (validated by the CRD) plus its Deployment and Service, owned by it."""
    body = await kube.apply(
        {"apiVersion": API, "kind": "Model", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    )
    model = from_body(body)
    assert isinstance(model, Model)
    for obj in lower(model, namespace, owner_of(body)):
        await kube.apply(obj)
    return model


async def scale(kube: Kube, namespace: str, name: str, replicas: int) -> None:
    await kube.patch_merge("apps/v1", "Deployment", name, namespace, {"spec": {"replicas": replicas}})


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return (
        pod["metadata"].get("deletionTimestamp") is None
        and bool(pod["status"].get("podIP"))
        and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    )


async def ready_pods(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    """Pod name -> pod IP of the Model's Running and Ready pods."""
    pods = await kube.list("v1", "Pod", namespace, f"aiplane.dev/model={name}")
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods if is_ready(p)}


async def sliced_pods(kube: Kube, namespace: str, name: str) -> set[str]:
    """Pods the Service's EndpointSlices list as ready (selected the documented way)."""
    slices = await kube.list(
        "discovery.k8s.io/v1", "EndpointSlice", namespace, f"kubernetes.io/service-name={name}"
    )
    return {
        e["targetRef"]["name"]
        for s in slices
        for e in s.get("endpoints") or []
        if e.get("conditions", {}).get("ready") and e.get("targetRef")
    }


async def published(kube: Kube, namespace: str, name: str, count: int) -> dict[str, str]:
    """Wait until ``count`` pods are Ready and exactly those are in the slices; pod -> IP."""

    async def probe() -> tuple[dict[str, str]] | None:  # a tuple: no pods is an answer too
        pods = await ready_pods(kube, namespace, name)
        if len(pods) == count and set(pods) == await sliced_pods(kube, namespace, name):
            return (pods,)
        return None

    (pods,) = await eventually(probe, POD_READY_S, f"{count} ready pods of {name} in its EndpointSlices")
    return pods


def urls(discovery: KubernetesDiscovery, served: str) -> set[tuple[str, str]]:
    return {(u.replica_id, u.base_url) for u in discovery.upstreams(served)}


async def test_routes_a_model_to_each_ready_pod_on_its_container_port(kube: Kube, k8s_namespace: str) -> None:
    ns, served = k8s_namespace, f"llama-{k8s_namespace}"
    await deploy(kube, ns, "llama", vllm_spec(served, 2))
    pods = await published(kube, ns, "llama", 2)

    slices = await kube.list("discovery.k8s.io/v1", "EndpointSlice", ns, "kubernetes.io/service-name=llama")
    assert all(s["metadata"]["labels"].get("aiplane.dev/model") == "llama" for s in slices), (
        "discovery selects slices by the Service label the EndpointSlice controller copies"
    )
    deployment = await kube.get("apps/v1", "Deployment", "llama", ns)
    assert deployment is not None
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert ports == [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}]

    async with KubernetesDiscovery(kube, ns).running() as discovery:
        assert [r.served_name for r in discovery.models()] == [served]
        route = discovery.lookup(served)
        assert route is not None and route.owner == f"{ns}/llama"
        assert route.cold_start_timeout == 120.0 and route.router.name == "least-load+sessions"
        expected = {(pod, f"http://{ip}:{VLLM_PORT}") for pod, ip in pods.items()}
        assert urls(discovery, served) == expected  # per pod, not the Service's port 80
        assert discovery.lookup("no-such-model") is None
        assert discovery.upstreams("no-such-model") == []

    async with KubernetesDiscovery(kube).running() as everywhere:  # all namespaces
        route = everywhere.lookup(served)
        assert route is not None and route.owner == f"{ns}/llama"
        assert urls(everywhere, served) == expected


async def test_scale_to_zero_empties_upstreams_and_a_waiter_returns_on_scale_up(
    kube: Kube, k8s_namespace: str
) -> None:
    ns, served = k8s_namespace, f"mistral-{k8s_namespace}"
    await deploy(kube, ns, "mistral", vllm_spec(served, 1))
    await published(kube, ns, "mistral", 1)

    async with KubernetesDiscovery(kube, ns).running() as discovery:
        assert len(discovery.upstreams(served)) == 1

        async def drained() -> bool:
            return not discovery.upstreams(served)

        async def waiting() -> bool:
            return discovery.demand() == {served: 1}

        await scale(kube, ns, "mistral", 0)
        await eventually(drained, 20, "no upstreams after scaling to 0")
        await published(kube, ns, "mistral", 0)

        waiter = asyncio.create_task(discovery.wait_for_upstreams(served, 30.0))
        await eventually(waiting, 5, "the waiter counted as demand")
        assert not waiter.done()
        started = time.monotonic()
        await scale(kube, ns, "mistral", 1)
        got = await asyncio.wait_for(waiter, 35.0)
        took = time.monotonic() - started
        assert took < 30.0, f"wait_for_upstreams took {took:.1f}s"
        assert discovery.demand() == {}
        pods = await ready_pods(kube, ns, "mistral")
        assert {(u.replica_id, u.base_url) for u in got} == {
            (pod, f"http://{ip}:{VLLM_PORT}") for pod, ip in pods.items()
        }


async def test_gateway_lists_models_and_answers_503_when_no_replica_comes(
    kube: Kube, k8s_namespace: str
) -> None:
    """The real gateway app in process, against this discovery, through the openai client."""
    ns, served = k8s_namespace, f"cold-{k8s_namespace}"
    await deploy(kube, ns, "cold", vllm_spec(served, 0, timeouts={"coldStart": "1s"}))
    discovery = KubernetesDiscovery(kube, ns)
    async with TestServer(build_app(discovery), host="127.0.0.1") as server:
        base = str(server.make_url("/v1"))
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=20)
        listed = await asyncio.to_thread(client.models.list)
        assert [m.id for m in listed.data] == [served]
        assert listed.data[0].created > 0

        chat = asyncio.create_task(
            asyncio.to_thread(
                client.chat.completions.create, model=served, messages=[{"role": "user", "content": "hi"}]
            )
        )
        metrics_url = str(server.make_url("/metrics"))
        gauge = f'aiplane_gateway_requests_held{{model="{served}"}} 1.0'

        async def queued() -> bool:
            async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
                return discovery.demand() == {served: 1} and gauge in await resp.text()

        await eventually(queued, 10, "the request held as demand and in the queued gauge", interval=0.05)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            await chat
        assert time.monotonic() - started < 5.0
        assert caught.value.status_code == 503
        assert caught.value.response.headers["Retry-After"] == "10"
        assert "within 1s" in caught.value.message
        assert discovery.demand() == {}


async def test_run_gateway_serves_with_api_keys_and_stops_on_sigterm(
    kube: Kube, k8s_namespace: str, k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    """``run_gateway`` as the CLI will call it, in its own process (uvloop, signals)."""
    ns, served = k8s_namespace, f"keyed-{k8s_namespace}"
    await deploy(kube, ns, "keyed", vllm_spec(served, 0))
    keys = tmp_path / "keys"
    keys.write_text("# one key a line\nsecret-key\n")
    port = unused_port()
    code = (
        "from aiplane.runtime.kubernetes.gateway import run_gateway; "
        f"run_gateway('127.0.0.1', {port}, {str(k8s_cluster.kubeconfig)!r}, {ns!r}, {str(keys)!r})"
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:

            async def healthy() -> bool:
                assert proc.poll() is None, f"gateway exited: {log.read_text()}"
                try:
                    async with http.get("/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(healthy, 30, "the gateway's /health")
            async with http.get("/v1/models") as resp:
                assert resp.status == 401
            auth = {"Authorization": "Bearer secret-key"}
            async with http.get("/v1/models", headers=auth) as resp:
                assert resp.status == 200
                assert [m["id"] for m in (await resp.json())["data"]] == [served]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
