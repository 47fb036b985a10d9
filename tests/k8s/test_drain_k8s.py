"""Graceful drain on scale-down, on Kubernetes, with real tokens: no stream is dropped.

A ``Model`` (llamacpp, SmolLM2, one slot per replica) runs two replicas; the kubelet
stand-in (``kubelet_standin.py``) runs each pod's llama-server on its loopback IP and
plays the kubelet's termination (preStop sleep, SIGTERM, SIGKILL at the grace period,
then the pod's removal). Two long streams go through the Kubernetes gateway, one per
replica, and the Model is scaled to one through its ``/scale`` subresource (what the
autoscaler writes) while they stream. Then:

* the ReplicaSet deletes one pod; the EndpointSlice marks it not ready at once and the
  gateway's discovery drops it while its engine still serves (the preStop sleep);
* requests sent from then on all go to the surviving pod (its own
  ``llamacpp:tokens_predicted_total`` accounts for every one of their tokens);
* SIGTERM comes while both streams are still running: llama-server (with
  ``scripts/llama-server-patches/0002-drain-on-sigterm.patch``) answers anything new 503,
  finishes its stream, and exits 0 by itself, long before the grace period's SIGKILL;
* every stream ends with a ``finish_reason`` and no error, and the pod is gone.

The autoscaler stays out of the way: it would want one replica (a target of 1000
requests each) but holds two for its ``scaleDownDelay`` of an hour, and with
``lookAhead`` off and ``headroom: 0`` a rising load never asks for more.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletion

from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import LABEL_ENGINE, LABEL_MODEL
from aiplane.runtime.kubernetes.discovery import KubernetesDiscovery
from aiplane.runtime.kubernetes.gateway import build_app
from aiplane.runtime.kubernetes.lowering.model import PRESTOP_SLEEP_S
from aiplane.runtime.kubernetes.objects import API
from tests.k8s.conftest import K8sCluster, eventually
from tests.k8s.kubelet_standin import Engine, KubeletStandIn, smollm2_model_yaml
from tests.k8s.operator_fixture import Operator, apply_yaml, operator_and_scheduler

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]  # about 60-95 s here

PREDICTED = "llamacpp:tokens_predicted_total"
PROCESSING = "llamacpp:requests_processing"
REQUEST_TIMEOUT_S = 150  # the grace period is 10 s more
# The streams must outlast the scale-down, the preStop sleep and a margin after SIGTERM:
# about STREAM_S of tokens at the rate measured just before (ignore_eos: no early stop).
# The rate is measured on a short answer; a story's decode slows as its context grows
# (one thread: ~145 tokens/s at first, ~25 at 3,000 tokens), so the count is capped: 2,400
# tokens took ~50 s here, well inside the grace period.
STREAM_S = 22.0
CONTEXT = 4096
MIN_TOKENS, MAX_TOKENS = 200, 2400
NEW_REQUESTS = 3
SERVE_S = 60.0
PUBLISH_S = 20.0
DROP_S = 5.0  # deletion -> EndpointSlice not ready -> the gateway's next poll (1 s)


def model_yaml(name: str, served: str) -> str:
    return smollm2_model_yaml(
        name,
        served,
        contextLength=str(CONTEXT),
        args='["--threads", "1"]',  # two engines on two cores: no spinning threads fighting
        replicas="{min: 1, max: 2, desired: 2}",
        autoscaling="{metric: concurrency, target: 1000, scaleDownDelay: 1h, lookAhead: false, headroom: 0}",
        timeouts=f"{{request: {REQUEST_TIMEOUT_S}s}}",
    )


@pytest.fixture(scope="module")
def operator(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with operator_and_scheduler(k8s_cluster, tmp_path_factory.mktemp("drain")) as op:
        yield op


@pytest.fixture
async def kube(k8s_cluster: K8sCluster, k8s_namespace: str, operator: Operator) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as client:
        yield client


async def metric(http: aiohttp.ClientSession, engine: Engine, name: str) -> float:
    """One of llama-server's own counters, read from its /metrics on the pod IP."""
    async with http.get(engine.url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def decode_rate(http: aiohttp.ClientSession, engine: Engine) -> float:
    """Tokens/s of one request on the engine right now, from llama-server's own timings."""
    body = {
        "messages": [{"role": "user", "content": "Count sheep."}],
        "max_tokens": 48,
        "ignore_eos": True,
        "temperature": 0,
    }
    async with http.post(engine.url + "/v1/chat/completions", json=body) as resp:
        data = await resp.json()
    return float(data["timings"]["predicted_per_second"])


def listening(engine: Engine) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((engine.ip, engine.port)) == 0


@dataclass
class Stream:
    """One streamed chat completion, as the openai client saw it (written by its thread)."""

    chunks: int = 0
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    last_at: float = 0.0  # time.monotonic(), the stand-in's clock too
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_stream(client: openai.OpenAI, served: str, i: int, tokens: int, out: Stream) -> None:
    try:
        for chunk in client.chat.completions.create(
            model=served,
            messages=[{"role": "user", "content": f"Tell story number {i} about a lighthouse."}],
            max_tokens=tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # llama-server: every token asked for
        ):
            with out.lock:
                out.chunks += 1
                out.last_at = time.monotonic()
                if chunk.choices and chunk.choices[0].delta.content:
                    out.text += chunk.choices[0].delta.content
                if chunk.choices and chunk.choices[0].finish_reason:
                    out.finish_reason = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    out.completion_tokens = chunk.usage.completion_tokens
    except Exception as exc:  # reported by the test, with the other streams' outcomes
        out.error = f"{type(exc).__name__}: {exc}"


async def test_a_scale_down_during_streaming_completes_every_stream(
    kube: Kube, k8s_namespace: str, k8s_cluster: K8sCluster, operator: Operator, tmp_path: Path
) -> None:
    ns, served = k8s_namespace, f"drain-{k8s_namespace}"
    out = apply_yaml(k8s_cluster, model_yaml("drain", served), ns)
    assert out.returncode == 0, out.stderr
    stand_in = KubeletStandIn(kube, ns, f"{LABEL_ENGINE}=llamacpp", tmp_path)
    discovery = KubernetesDiscovery(kube, ns)
    async with (
        stand_in.running(),
        TestServer(build_app(discovery), host="127.0.0.1") as server,
        aiohttp.ClientSession() as http,
    ):
        first = await stand_in.wait_serving(SERVE_S)
        second = await stand_in.wait_serving(SERVE_S, exclude={first.pod})
        engines = {e.url: e for e in (first, second)}

        async def routed_to_both() -> bool:
            return sorted(u.base_url for u in discovery.upstreams(served)) == sorted(engines)

        await eventually(routed_to_both, PUBLISH_S, f"the gateway routing {served} to both pods")
        rate = min(await asyncio.gather(*(decode_rate(http, e) for e in engines.values())))
        tokens = int(min(max(rate * STREAM_S, MIN_TOKENS), MAX_TOKENS))
        before = {url: await metric(http, e, PREDICTED) for url, e in engines.items()}
        client = openai.OpenAI(
            base_url=str(server.make_url("/v1")), api_key="x", max_retries=0, timeout=REQUEST_TIMEOUT_S
        )

        # 1. Two long streams, one per replica (one slot each; least-load routing). One
        #    token apart, so the survivor's own count says which one it served.
        streams = [Stream(), Stream()]
        running = [
            asyncio.create_task(asyncio.to_thread(run_stream, client, served, i, tokens + i, s))
            for i, s in enumerate(streams)
        ]

        async def one_each() -> bool:
            busy = [await metric(http, e, PROCESSING) for e in engines.values()]
            return busy == [1, 1] and all(s.chunks > 0 for s in streams)

        await eventually(one_each, 20, "a stream on each replica")

        # 2. Scale to one through /scale, as the autoscaler does.
        scaled_at = time.monotonic()
        await kube.patch_merge(API, "Model", "drain", ns, {"spec": {"replicas": 1}}, "scale")

        async def deleted() -> str | None:
            pods = await kube.list("v1", "Pod", ns, f"{LABEL_MODEL}=drain")
            return next((p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp")), None)

        gone = await eventually(deleted, 15, "a pod deleted by the ReplicaSet")
        draining = next(e for e in engines.values() if e.pod == gone)
        survivor = next(e for e in engines.values() if e.pod != gone)

        # 3. While its engine still serves (the preStop sleep), the terminating pod is out
        #    of the EndpointSlice's ready endpoints and out of the gateway's routes.
        async def dropped() -> bool:
            return [u.base_url for u in discovery.upstreams(served)] == [survivor.url]

        async def seen() -> bool:
            return draining.terminating_at is not None

        await eventually(seen, DROP_S, f"the stand-in terminating {draining.pod}")
        await eventually(dropped, DROP_S, f"the gateway dropping {draining.url}")
        dropped_at = time.monotonic()
        assert draining.terminating_at is not None and draining.sigterm_at is None, "no longer in preStop"
        assert draining.running and listening(draining)
        slices = await kube.list(
            "discovery.k8s.io/v1", "EndpointSlice", ns, "kubernetes.io/service-name=drain"
        )
        endpoints = {ep["addresses"][0]: ep["conditions"] for s in slices for ep in s.get("endpoints") or []}
        assert endpoints[draining.ip] == {"ready": False, "serving": True, "terminating": True}, endpoints
        assert endpoints[survivor.ip]["ready"] is True, endpoints
        chunks_at_drop = sum(s.chunks for s in streams)

        # 4. New requests from now on: all of them to the survivor.
        def chat(i: int) -> ChatCompletion:
            return client.chat.completions.create(
                model=served, max_tokens=8, messages=[{"role": "user", "content": f"Name a color, {i}."}]
            )

        answers = [asyncio.create_task(asyncio.to_thread(chat, i)) for i in range(NEW_REQUESTS)]

        # 5. SIGTERM after the preStop sleep, with both streams still going: the engine
        #    answers anything new 503 and finishes its stream.
        async def sigterm() -> bool:
            return draining.sigterm_at is not None

        await eventually(sigterm, PRESTOP_SLEEP_S + 5, "SIGTERM after the preStop sleep", interval=0.05)
        assert draining.sigterm_at is not None and draining.terminating_at is not None
        prestop = draining.sigterm_at - draining.terminating_at
        assert PRESTOP_SLEEP_S - 0.5 <= prestop <= PRESTOP_SLEEP_S + 1.5, prestop
        assert sum(s.chunks for s in streams) > chunks_at_drop, "the streams stalled during the preStop sleep"
        assert all(s.finish_reason is None for s in streams), "a stream ended before SIGTERM: make it longer"

        async with http.get(draining.url + "/health") as resp:
            refused = (resp.status, await resp.text())
        refused_while_running = draining.running

        await asyncio.gather(*running)
        results = await asyncio.gather(*answers)
        code = await stand_in.wait_stopped(draining, 30)

        # 6. Every stream completed; nothing was dropped.
        for i, s in enumerate(streams):
            assert s.error is None, [(x.error, x.chunks, x.finish_reason) for x in streams]
            assert (s.finish_reason, s.completion_tokens) == ("length", tokens + i), (
                s.finish_reason,
                s.chunks,
            )
            assert s.last_at > draining.sigterm_at, "the stream ended before SIGTERM"
        for answer in results:
            assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage is not None

        # 7. The draining engine exited by itself, 0, once its stream ended: no SIGKILL, far
        #    inside the grace period; the pod is gone, and the survivor took every new token.
        assert code == 0 and not draining.sigkilled, (code, draining.log_text(2000))
        assert refused_while_running and refused[0] == 503 and "Shutting down" in refused[1], refused
        assert draining.exited_at is not None and draining.kill_at is not None
        assert draining.exited_at < draining.kill_at - 30, (draining.exited_at, draining.kill_at)
        assert "requests in flight have finished" in draining.log_text(20_000)

        async def removed() -> bool:
            return await kube.get("v1", "Pod", draining.pod, ns) is None

        await eventually(removed, 10, f"pod {draining.pod} removed")
        after = await metric(http, survivor, PREDICTED)
        new_tokens = sum(a.usage.completion_tokens for a in results if a.usage is not None)
        served_stream = int(after - before[survivor.url] - new_tokens) - tokens
        assert served_stream in (0, 1), (before, after, new_tokens)  # one stream and every new request
        drained = streams[1 - served_stream]  # the draining engine's stream
        assert draining.exited_at >= drained.last_at - 0.5, "the engine exited before its stream ended"
        assert survivor.running and not stand_in.errors, stand_in.errors
        pods = await kube.list("v1", "Pod", ns, f"{LABEL_MODEL}=drain")
        assert [p["metadata"]["name"] for p in pods] == [survivor.pod]
        timeline = {
            "deleted": draining.terminating_at - scaled_at,
            "dropped": dropped_at - draining.terminating_at,
            "sigterm": draining.sigterm_at - draining.terminating_at,
            "exited": draining.exited_at - draining.sigterm_at,
            "stream_end": drained.last_at - draining.sigterm_at,
            "tokens": tokens,
            "tokens/s": round(rate, 1),
        }
        print(f"drain timeline (s): {timeline}")
