"""The autoscaler's engine signals through a real Prometheus scraping real engines on KWOK pods.

Debian's Prometheus (``scripts/prometheus.sh`` puts it in the venv) runs on 127.0.0.1 with
the relabelling of the ``kubernetes-pods`` job the queries assume
(``prometheus.KUBERNETES_PODS_JOB``), scraping every second. The operator lowers a SmolLM2
Model, the aiplane scheduler binds its pod to a KWOK node, and the kubelet stand-in runs the
pod's llama-server on its loopback IP. Prometheus must find that pod by its annotations and
labels, and :class:`KubernetesSignals` must read from Prometheus the load that llama-server
itself reports. No byte leaves 127.0.0.0/8.

One stand-in: Debian builds Prometheus without its Kubernetes discovery ("Kubernetes support
has been completely removed", the package's NEWS.Debian), so :func:`discovered` plays
``kubernetes_sd_configs`` (role ``pod``): it lists this namespace's pods from the real API
server and hands them to Prometheus's ``http_sd_configs`` with the ``__meta_kubernetes_*``
labels that ``discovery/kubernetes/pod.go`` gives a pod (names sanitized as it does). The
relabelling, scraping, storage and queries are Prometheus's own.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aiplane.dev import prometheus as prom
from aiplane.engines import MetricNames, default_registry
from aiplane.engines.llamacpp import LlamaCpp
from aiplane.runtime.engine_metrics import EngineSample, scrape
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import LABEL_ENGINE, LABEL_MODEL
from aiplane.runtime.kubernetes.prometheus import (
    KUBERNETES_PODS_JOB,
    MODEL_LABEL,
    PrometheusError,
    parse_vector,
    prometheus_label_name,
    query_engines,
)
from aiplane.runtime.kubernetes.signals import KubernetesSignals
from tests.k8s.conftest import K8sCluster, eventually
from tests.k8s.kubelet_standin import Engine, KubeletStandIn, smollm2_model_yaml
from tests.k8s.operator_fixture import Operator, apply_yaml, operator_and_scheduler

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]

PROMETHEUS = Path(sys.executable).parent / "prometheus"
SERVE_S = 60.0  # operator + scheduler + KWOK + model load
TARGET_S = 30.0  # discovery's first list and the first scrape
SCRAPED_S = 10.0  # a change on the engine, seen through a 1 s scrape
REQUESTS = 4  # streamed at once at a one-slot engine: one runs, the rest wait
MAX_TOKENS = 160  # each; ignore_eos, so each runs its full length (the context is 512)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def operator(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with operator_and_scheduler(k8s_cluster, tmp_path_factory.mktemp("prometheus-signals")) as op:
        yield op


@pytest.fixture
async def kube(k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as client:
        yield client


def discovered(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """One pod as Prometheus's Kubernetes discovery (role ``pod``) presents it, in http_sd's
    format: nothing without an IP, else a target per container port (or per container
    without ports), labelled with the pod's and the container's ``__meta_kubernetes_*``."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        return []
    m = "__meta_kubernetes_"
    ready = [c["status"].lower() for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    labels = {
        f"{m}namespace": meta["namespace"], f"{m}pod_name": meta["name"], f"{m}pod_ip": ip,
        f"{m}pod_ready": (ready or ["unknown"])[0], f"{m}pod_phase": status.get("phase", ""),
        f"{m}pod_node_name": spec.get("nodeName", ""), f"{m}pod_host_ip": status.get("hostIP", ""),
        f"{m}pod_uid": meta.get("uid", ""),
    }  # fmt: skip
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            labels |= {f"{m}pod_controller_kind": ref["kind"], f"{m}pod_controller_name": ref["name"]}
    for kind, values in (("label", meta.get("labels")), ("annotation", meta.get("annotations"))):
        for key, value in (values or {}).items():
            labels[f"{m}pod_{kind}_{prometheus_label_name(key)}"] = value
            labels[f"{m}pod_{kind}present_{prometheus_label_name(key)}"] = "true"
    groups = []
    inits = spec.get("initContainers") or []
    containers = [(c, False) for c in spec["containers"]] + [(c, True) for c in inits]
    for container, init in containers:
        own = labels | {
            f"{m}pod_container_name": container["name"],
            f"{m}pod_container_image": container.get("image", ""),
            f"{m}pod_container_init": str(init).lower(),
        }
        if not container.get("ports"):
            groups.append({"targets": [ip], "labels": own})
        for port in container.get("ports") or []:
            number = str(port["containerPort"])
            port_labels = {
                f"{m}pod_container_port_name": port.get("name", ""),
                f"{m}pod_container_port_number": number,
                f"{m}pod_container_port_protocol": port.get("protocol", "TCP"),
            }
            groups.append({"targets": [f"{ip}:{number}"], "labels": own | port_labels})
    return groups


@pytest.fixture
async def prometheus(kube: Kube, k8s_namespace: str, tmp_path: Path) -> AsyncIterator[str]:
    """A real Prometheus on 127.0.0.1 scraping this namespace's pods; its base URL."""
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} is missing: run make install", pytrace=False)

    async def targets(_: web.Request) -> web.Response:
        pods = await kube.list("v1", "Pod", k8s_namespace)
        return web.json_response([group for pod in pods for group in discovered(pod)])

    app = web.Application()
    app.router.add_get("/targets", targets)
    async with TestServer(app, host="127.0.0.1") as discovery:
        job = copy.deepcopy(KUBERNETES_PODS_JOB)
        del job["kubernetes_sd_configs"]  # in a cluster: [{role: pod}]
        job["http_sd_configs"] = [{"url": str(discovery.make_url("/targets")), "refresh_interval": "1s"}]
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [job]}
        # it dies with pytest, as the engines do
        home, port = tmp_path / "prometheus", free_port()
        server = await asyncio.to_thread(prom.start, home, config, port, die_with_parent=True)
        try:
            yield server.url
        finally:
            await asyncio.to_thread(server.stop)


@pytest.fixture
async def kubelet_stand_in(kube: Kube, k8s_namespace: str, tmp_path: Path) -> AsyncIterator[KubeletStandIn]:
    stand_in = KubeletStandIn(kube, k8s_namespace, f"{LABEL_ENGINE}=llamacpp", tmp_path)
    async with stand_in.running():
        yield stand_in


async def target_of(http: aiohttp.ClientSession, url: str, engine: Engine) -> dict[str, Any] | None:
    """The engine's pod among Prometheus's active targets, once its last scrape was up."""
    async with http.get(f"{url}/api/v1/targets", params={"state": "active"}) as resp:
        body = await resp.json()
    for target in body["data"]["activeTargets"]:
        if target["labels"].get("pod") == engine.pod and target["health"] == "up":
            return dict(target)
    return None


async def test_prometheus_reports_what_the_engine_on_the_pod_reports(
    kube: Kube,
    k8s_namespace: str,
    k8s_cluster: K8sCluster,
    kubelet_stand_in: KubeletStandIn,
    prometheus: str,
) -> None:
    ns, served, names = k8s_namespace, f"smol-{k8s_namespace}", LlamaCpp().metrics
    out = apply_yaml(k8s_cluster, smollm2_model_yaml("smol", served), ns)
    assert out.returncode == 0, out.stderr
    engine = await kubelet_stand_in.wait_serving(SERVE_S)
    assert not kubelet_stand_in.errors, kubelet_stand_in.errors

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as http:
        # 1. Discovery found the pod by its annotations and scraped it at its engine's address,
        #    labelled as the queries expect.
        async def up() -> dict[str, Any] | None:
            return await target_of(http, prometheus, engine)

        target = await eventually(up, TARGET_S, f"Prometheus scraping {engine.pod}", interval=0.5)
        assert target is not None
        assert target["scrapeUrl"] == f"{engine.url}/metrics"
        assert MODEL_LABEL == "aiplane_dev_model"
        assert target["labels"]["namespace"] == ns and target["labels"]["aiplane_dev_model"] == "smol"

        pods = await kube.list("v1", "Pod", ns, f"{LABEL_MODEL}=smol")
        signals = KubernetesSignals(http, [], default_registry(), prometheus=prometheus)
        key = f"{ns}/smol"

        async def through_prometheus() -> EngineSample:
            await signals.refresh_model(key, served, "llamacpp", pods)
            assert signals.engine_source(key) == "prometheus", "Prometheus did not answer"
            read = signals.read(key, time.time())
            return EngineSample(read.engine_running, read.engine_waiting, read.kv_cache)

        async def quiet() -> EngineSample | None:
            sample = await through_prometheus()
            return sample if sample == EngineSample(0.0, 0.0, None) else None

        # 2. Idle: zero running, zero waiting (real zeros, not absent series), no KV gauge
        #    (this llama-server exports none), the same as the engine's own /metrics says.
        await eventually(quiet, SCRAPED_S, "Prometheus reporting an idle engine", interval=0.5)
        direct = await scrape(http, f"{engine.url}/metrics", names)
        assert direct == await through_prometheus() == EngineSample(0.0, 0.0, None)

        # 3. Busy: streamed chats straight to the pod's engine (one slot: one runs, the rest
        #    are deferred); Prometheus's next scrapes show them.
        async with openai.AsyncOpenAI(
            base_url=f"{engine.url}/v1", api_key="x", max_retries=0, timeout=120
        ) as client:

            async def chat(i: int) -> int:
                chunks = 0
                stream = await client.chat.completions.create(
                    model=served,
                    messages=[{"role": "user", "content": f"Write a long story about the number {i}."}],
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                async for chunk in stream:
                    chunks += bool(chunk.choices and chunk.choices[0].delta.content)
                return chunks

            seen: list[EngineSample] = []

            async def busy() -> bool:
                seen.append(await through_prometheus())
                running = [s.running for s in seen if s.running is not None]
                waiting = [s.waiting for s in seen if s.waiting is not None]
                return bool(running and max(running) >= 1 and waiting and max(waiting) >= 1)

            chats = asyncio.gather(*(chat(i) for i in range(REQUESTS)))
            try:
                await eventually(busy, SCRAPED_S, "Prometheus reporting the requests", interval=0.25)
            except BaseException:
                chats.cancel()
                raise
            streamed = await asyncio.wait_for(chats, 120)
        assert all(n > 1 for n in streamed), streamed
        assert max(s.running or 0 for s in seen) == 1  # one slot
        assert max(s.waiting or 0 for s in seen) <= REQUESTS - 1

        # 4. Done: back to zero through Prometheus, equal to a direct scrape at that quiet moment.
        await eventually(quiet, SCRAPED_S, "Prometheus reporting the engine idle again", interval=0.5)
        direct = await scrape(http, f"{engine.url}/metrics", names)
        assert direct == await through_prometheus() == EngineSample(0.0, 0.0, None)

        # 5. What a real Prometheus says to what the queries cannot find or get wrong: a
        #    Model it has no series of is None (and its pods are read instead); quoted
        #    odd label values are valid PromQL; its own error answer is an error.
        assert await query_engines(http, prometheus, names, ns, "ghost") == EngineSample()
        await signals.refresh_model(f"{ns}/ghost", "ghost", "llamacpp", pods)
        assert signals.engine_source(f"{ns}/ghost") == "pods"
        assert signals.read(f"{ns}/ghost", time.time()).engine_running == 0.0
        odd = MetricNames(running="odd-name.total", waiting="llamacpp:requests_deferred")
        assert await query_engines(http, prometheus, odd, 'n"s\\', "m\nx") == EngineSample()
        async with http.get(f"{prometheus}/api/v1/query", params={"query": "sum("}) as resp:
            status, text = resp.status, await resp.text()
        with pytest.raises(PrometheusError, match=r"HTTP 400\): bad_data: .*parse error"):
            parse_vector(text, status)
