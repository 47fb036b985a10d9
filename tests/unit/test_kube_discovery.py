"""Kubernetes discovery without a cluster: slices -> upstreams, Models -> routes, the view.

Fixtures are the dicts the API server returns (trimmed), so these pin what each field
means for routing; tests/k8s/test_gateway_discovery.py checks the same against a real
control plane.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from builders import metrics_server

from aiplane.engines import default_registry
from aiplane.engines.base import CHAT, EMBED
from aiplane.errors import ValidationError
from aiplane.gateway.discovery import Upstream
from aiplane.runtime.kubernetes import discovery as kube_discovery
from aiplane.runtime.kubernetes.discovery import SLICE_SELECTOR, KubernetesDiscovery
from aiplane.runtime.kubernetes.routes import (
    ModelKey,
    elect,
    group_slices,
    route_from_body,
    slice_upstreams,
    upstreams_by_model,
)

ENGINES = default_registry()


# -- fixtures ------------------------------------------------------------------------
def model_body(
    name: str,
    namespace: str = "ns",
    *,
    created: str = "2025-01-01T00:00:00Z",
    generation: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    """A Model as the API server lists it: server metadata and a status included."""
    return {
        "apiVersion": "aiplane.dev/v1alpha1",
        "kind": "Model",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "generation": generation,
            "resourceVersion": "4242",
            "creationTimestamp": created,
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            "finalizers": ["kopf.aiplane.dev/finalizer"],
        },
        "spec": {"engine": "vllm", "source": "hf://org/model", **spec},
        "status": {"phase": "Ready", "readyReplicas": 1},
    }


def endpoint(ip: str, pod: str | None = None, *, ready: bool | None = True, terminating: bool = False) -> Any:
    out: dict[str, Any] = {"addresses": [ip], "conditions": {"terminating": terminating}}
    if ready is not None:
        out["conditions"]["ready"] = ready
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "ns"}
    return out


def eps(
    service: str,
    *endpoints: Any,
    namespace: str = "ns",
    name: str | None = None,
    address_type: str = "IPv4",
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service}-abcde",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service, "aiplane.dev/model": service},
        },
        "addressType": address_type,
        "endpoints": list(endpoints),
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
    }


# -- slices -> upstreams ---------------------------------------------------------------
def test_only_ready_endpoints_on_the_http_port_by_pod_name() -> None:
    slice_ = eps(
        "llama",
        endpoint("10.0.0.2", "llama-b", ready=True),
        endpoint("10.0.0.1", "llama-a", ready=True),
        endpoint("10.0.0.3", "llama-c", ready=False),  # starting, or failing its readiness probe
        endpoint("10.0.0.4", "llama-d", ready=False, terminating=True),  # draining in preStop
        ports=[{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}],
    )
    assert slice_upstreams([slice_]) == [
        Upstream("llama-a", "http://10.0.0.1:8000"),
        Upstream("llama-b", "http://10.0.0.2:8000"),
    ]


def test_unknown_readiness_counts_as_ready_and_the_ip_names_a_pod_without_a_ref() -> None:
    slice_ = eps("m", endpoint("10.0.0.7", None, ready=None))
    assert slice_upstreams([slice_]) == [Upstream("10.0.0.7", "http://10.0.0.7:8000")]


def test_no_http_port_fqdn_slices_and_empty_slices_give_nothing() -> None:
    assert (
        slice_upstreams([eps("m", endpoint("10.0.0.1", "p"), ports=[{"name": "grpc", "port": 9000}])]) == []
    )
    assert slice_upstreams([eps("m", endpoint("10.0.0.1", "p"), ports=[])]) == []
    assert slice_upstreams([eps("m", endpoint("pod.example", "p"), address_type="FQDN")]) == []
    assert slice_upstreams([{**eps("m"), "endpoints": None}]) == []
    assert slice_upstreams([eps("m", endpoint("not-an-ip", "p"))]) == []


def test_ipv6_is_bracketed_and_a_dual_stack_pod_is_one_upstream_preferring_ipv4() -> None:
    v6 = eps("m", endpoint("fd00::5", "p1"), endpoint("fd00::6", "p2"), name="m-a6", address_type="IPv6")
    v4 = eps("m", endpoint("10.0.0.5", "p1"), name="m-z4")
    assert slice_upstreams([v6, v4]) == [
        Upstream("p1", "http://10.0.0.5:8000"),
        Upstream("p2", "http://[fd00::6]:8000"),
    ]


def test_slices_are_grouped_by_namespace_and_service() -> None:
    slices = [
        eps("llama", endpoint("10.0.0.1", "l1"), name="llama-1"),
        eps("llama", endpoint("10.0.0.2", "l2"), name="llama-2"),  # a Service's second slice
        eps("llama", endpoint("10.1.0.1", "l3"), namespace="other"),
        {"metadata": {"name": "stray", "namespace": "ns", "labels": {}}, "endpoints": []},
    ]
    assert set(group_slices(slices)) == {ModelKey("ns", "llama"), ModelKey("other", "llama")}
    by_model = upstreams_by_model(slices)
    assert [u.replica_id for u in by_model[ModelKey("ns", "llama")]] == ["l1", "l2"]
    assert [u.replica_id for u in by_model[ModelKey("other", "llama")]] == ["l3"]


# -- Models -> routes ------------------------------------------------------------------
def test_route_from_a_listed_model_ignores_server_metadata() -> None:
    body = model_body(
        "llama",
        engine="tgi",
        servedModelName="meta-llama/Llama-3",
        routing={"strategy": "prefix-hash"},
        timeouts={"coldStart": "1m30s", "request": "10m"},
    )
    route = route_from_body(body, ENGINES)
    assert route.served_name == "meta-llama/Llama-3"
    assert route.owner == "ns/llama"
    assert route.endpoints == CHAT  # TGI serves no embeddings
    assert (
        route.router.name == "chwbl+sessions"
    )  # prefix-hash is CHWBL's old name; sticky sessions by default
    assert (route.cold_start_timeout, route.request_timeout) == (90.0, 600.0)
    assert route.created == 1735689600.0


def test_route_defaults_served_name_and_takes_endpoints_from_the_engine() -> None:
    route = route_from_body(model_body("minilm", engine="embeddings"), ENGINES)
    assert route.served_name == "minilm"
    assert route.endpoints == EMBED
    assert route.router.name == "least-load+sessions"
    assert route.cold_start_timeout == 120.0


def test_a_spec_the_api_rejects_raises_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="replicas"):
        route_from_body(model_body("bad", replicas={"min": 3, "max": 1}), ENGINES)


def test_the_oldest_model_keeps_a_served_name_and_the_conflict_is_reported() -> None:
    new = model_body("llama", "team-b", created="2025-02-01T00:00:00Z", servedModelName="llama")
    old = model_body("llama", "team-a", created="2025-01-01T00:00:00Z", servedModelName="llama")
    other = model_body("mistral", "team-b")
    elected = elect(
        (ModelKey(b["metadata"]["namespace"], b["metadata"]["name"]), route_from_body(b, ENGINES))
        for b in (new, old, other)
    )
    assert sorted(elected.routes) == ["llama", "mistral"]
    assert elected.owners["llama"] == ModelKey("team-a", "llama")
    assert elected.conflicts == [
        "served model name 'llama' is claimed by Model team-a/llama and Model team-b/llama; "
        "routing to team-a/llama (created first), ignoring team-b/llama"
    ]


def test_a_creation_tie_is_broken_by_namespace_and_name_so_every_replica_agrees() -> None:
    a = model_body("x", "b-ns", servedModelName="same")
    b = model_body("x", "a-ns", servedModelName="same")
    for order in ((a, b), (b, a)):
        elected = elect(
            (ModelKey(m["metadata"]["namespace"], "x"), route_from_body(m, ENGINES)) for m in order
        )
        assert elected.owners["same"] == ModelKey("a-ns", "x")


# -- the discovery's view --------------------------------------------------------------
class FakeKube:
    """Serves whatever the test puts in ``models`` and ``slices``; records each LIST."""

    def __init__(self) -> None:
        self.models: list[dict[str, Any]] = []
        self.slices: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.patches: list[tuple[str, str | None, dict[str, Any], str]] = []

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        self.calls.append((kind, namespace, selector))
        return list(self.models if kind == "Model" else self.slices)

    async def patch_merge(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: Any, sub: str = ""
    ) -> dict[str, Any]:
        self.patches.append((name, namespace, patch, sub))
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_refresh_lists_models_and_model_slices_in_the_namespace() -> None:
    kube = FakeKube()
    kube.models = [model_body("llama", servedModelName="llama-3")]
    kube.slices = [eps("llama", endpoint("10.0.0.1", "llama-a"))]
    discovery = KubernetesDiscovery(kube, "ns")
    await discovery.refresh()
    assert kube.calls == [("Model", "ns", None), ("EndpointSlice", "ns", SLICE_SELECTOR)]
    assert [r.served_name for r in discovery.models()] == ["llama-3"]
    assert discovery.upstreams("llama-3") == [Upstream("llama-a", "http://10.0.0.1:8000")]
    assert discovery.lookup("llama") is None  # routed by served name, not by object name
    assert discovery.upstreams("nope") == []


async def test_a_bad_model_is_skipped_and_the_rest_still_route(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    kube.models = [model_body("bad", replicas={"min": 3, "max": 1}), model_body("good")]
    discovery = KubernetesDiscovery(kube, "ns")
    await discovery.refresh()
    await discovery.refresh()
    assert [r.served_name for r in discovery.models()] == ["good"]
    warnings = [r.getMessage() for r in caplog.records if "not routed" in r.getMessage()]
    assert len(warnings) == 1 and "ns/bad" in warnings[0]  # once per spec generation, not per poll


async def test_routes_are_parsed_once_per_generation() -> None:
    kube = FakeKube()
    kube.models = [model_body("m")]
    discovery = KubernetesDiscovery(kube, "ns")
    await discovery.refresh()
    first = discovery.lookup("m")
    await discovery.refresh()
    assert discovery.lookup("m") is first
    kube.models = [model_body("m", generation=2, timeouts={"coldStart": "5s"})]
    await discovery.refresh()
    route = discovery.lookup("m")
    assert route is not None and route.cold_start_timeout == 5.0


async def test_a_served_name_conflict_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    kube.models = [
        model_body("m", "b", created="2025-02-01T00:00:00Z"),
        model_body("m", "a", created="2025-01-01T00:00:00Z"),
    ]
    kube.slices = [eps("m", endpoint("10.0.0.1", "a-pod"), namespace="a"),
                   eps("m", endpoint("10.0.0.2", "b-pod"), namespace="b")]  # fmt: skip
    discovery = KubernetesDiscovery(kube)
    for _ in range(3):
        await discovery.refresh()
    assert [u.replica_id for u in discovery.upstreams("m")] == ["a-pod"]
    assert sum("claimed by Model a/m and Model b/m" in r.getMessage() for r in caplog.records) == 1


async def test_a_reported_upstream_is_suspect_for_a_while_then_routable_again() -> None:
    kube, clock = FakeKube(), Clock()
    kube.models = [model_body("m")]
    kube.slices = [eps("m", endpoint("10.0.0.1", "p1"), endpoint("10.0.0.2", "p2"))]
    discovery = KubernetesDiscovery(kube, "ns", clock=clock, suspect_for=5.0)
    await discovery.refresh()
    p1, p2 = discovery.upstreams("m")
    discovery.report_failure(p1, "connection refused")
    assert discovery.upstreams("m") == [p2]
    clock.now += 4.9
    await discovery.refresh()  # a refresh does not clear a live suspicion
    assert discovery.upstreams("m") == [p2]
    clock.now += 0.2
    assert discovery.upstreams("m") == [p1, p2]


async def test_reporting_an_upstream_the_slice_already_dropped_changes_nothing() -> None:
    kube, clock = FakeKube(), Clock()
    kube.models = [model_body("m")]
    kube.slices = [eps("m", endpoint("10.0.0.1", "p1"))]
    discovery = KubernetesDiscovery(kube, "ns", clock=clock)
    await discovery.refresh()
    discovery.report_failure(Upstream("gone", "http://10.0.0.9:8000"), "refused")
    assert discovery.upstreams("m") == [Upstream("p1", "http://10.0.0.1:8000")]
    # A replacement pod on a new IP is a different upstream: no suspicion carries over.
    discovery.report_failure(Upstream("p1", "http://10.0.0.1:8000"), "refused")
    kube.slices = [eps("m", endpoint("10.0.0.3", "p1"))]
    await discovery.refresh()
    assert discovery.upstreams("m") == [Upstream("p1", "http://10.0.0.3:8000")]


async def test_a_waiter_counts_as_demand_and_wakes_on_the_refresh_that_brings_a_pod() -> None:
    kube = FakeKube()
    kube.models = [model_body("m")]
    discovery = KubernetesDiscovery(kube, "ns")
    await discovery.refresh()
    waiter = asyncio.create_task(discovery.wait_for_upstreams("m", 10.0))
    await asyncio.sleep(0.05)
    assert discovery.demand() == {"m": 1}
    kube.slices = [eps("m", endpoint("10.0.0.1", "p1"))]
    started = time.monotonic()
    await discovery.refresh()
    assert await asyncio.wait_for(waiter, 1.0) == [Upstream("p1", "http://10.0.0.1:8000")]
    assert time.monotonic() - started < 0.5
    assert discovery.demand() == {}


async def test_a_wait_ends_empty_at_its_timeout_or_at_once_for_an_unknown_model() -> None:
    kube = FakeKube()
    kube.models = [model_body("m")]
    discovery = KubernetesDiscovery(kube, "ns")
    await discovery.refresh()
    started = time.monotonic()
    assert await discovery.wait_for_upstreams("m", 0.3) == []
    assert 0.25 < time.monotonic() - started < 1.0
    started = time.monotonic()
    assert await discovery.wait_for_upstreams("unknown", 5.0) == []
    assert time.monotonic() - started < 0.1
    assert discovery.demand() == {}


async def test_the_poller_keeps_the_last_view_while_the_api_fails() -> None:
    class Flaky(FakeKube):
        failing = False

        async def list(
            self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
        ) -> list[dict[str, Any]]:
            if self.failing:
                raise ConnectionResetError("api server restarting")
            return await super().list(api_version, kind, namespace, selector)

    kube = Flaky()
    kube.models = [model_body("m")]
    kube.slices = [eps("m", endpoint("10.0.0.1", "p1"))]
    discovery = KubernetesDiscovery(kube, "ns", interval=0.02)
    async with discovery.running():
        kube.failing = True
        await asyncio.sleep(0.2)
        assert [u.replica_id for u in discovery.upstreams("m")] == ["p1"]
        kube.failing = False
        kube.slices = [eps("m", endpoint("10.0.0.2", "p2"))]
        for _ in range(100):  # the backoff after failures is at most a few intervals
            if [u.replica_id for u in discovery.upstreams("m")] == ["p2"]:
                break
            await asyncio.sleep(0.02)
        assert [u.replica_id for u in discovery.upstreams("m")] == ["p2"]


async def test_a_request_held_at_zero_replicas_scales_the_model_to_one_through_scale() -> None:
    kube = FakeKube()
    kube.models = [model_body("m", replicas={"min": 0, "max": 3}), model_body("warm", replicas={"min": 1})]
    skew = [0.0]
    discovery = KubernetesDiscovery(kube, "ns", clock=lambda: time.monotonic() + skew[0])
    await discovery.refresh()
    assert await discovery.wait_for_upstreams("warm", 0.05) == []
    assert kube.patches == []  # a Model that runs a replica is the autoscaler's, not the gateway's
    assert await discovery.wait_for_upstreams("m", 0.05) == []
    assert kube.patches == [("m", "ns", {"spec": {"replicas": 1}}, "scale")]
    # A second held request does not ask again while the Model's count still reads zero ...
    assert await discovery.wait_for_upstreams("m", 0.05) == []
    await discovery.refresh()
    assert await discovery.wait_for_upstreams("m", 0.05) == []
    assert len(kube.patches) == 1
    # ... until WAKE_EVERY_S has passed (the first ask was lost, or the autoscaler undid it).
    skew[0] += 5.0
    assert await discovery.wait_for_upstreams("m", 0.05) == []
    assert len(kube.patches) == 2
    # A Model whose /scale already asks for one is not patched.
    kube.models = [model_body("m", replicas={"min": 0, "max": 3, "desired": 1})]
    await discovery.refresh()
    skew[0] += 10.0
    assert await discovery.wait_for_upstreams("m", 0.05) == []
    assert len(kube.patches) == 2


# -- engine hints ----------------------------------------------------------------------
LLAMA_METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 96
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 40
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 3
"""
VLLM_METRICS = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
"""


def http_port(port: int) -> list[dict[str, Any]]:
    return [{"name": "http", "port": port, "protocol": "TCP"}]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_engine_hints_are_scraped_from_ready_pods_and_forgotten_when_they_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube_discovery, "SCRAPE_TIMEOUT_S", 0.3)
    kube = FakeKube()
    kube.models = [model_body("llama", engine="llamacpp"), model_body("big", engine="vllm"),
                   model_body("slow", engine="llamacpp")]  # fmt: skip
    async with (
        metrics_server(LLAMA_METRICS) as llama,
        metrics_server(VLLM_METRICS) as vllm,
        metrics_server(LLAMA_METRICS, delay=10.0) as slow,  # hangs: must not hold up the others
    ):
        kube.slices = [
            eps("llama", endpoint("127.0.0.1", "llama-a"), ports=http_port(llama)),
            eps("big", endpoint("127.0.0.1", "big-a"), ports=http_port(vllm)),
            eps("slow", endpoint("127.0.0.1", "slow-a"), ports=http_port(slow)),
        ]
        discovery = KubernetesDiscovery(kube, "ns", interval=0.02, scrape_every=0.05)
        async with discovery.running():
            # Keyed by the replica id the gateway builds each ReplicaLoad with.
            assert [u.replica_id for u in discovery.upstreams("llama")] == ["llama-a"]
            await until(lambda: discovery.engine_hint("llama-a") != (None, None), 2.0)
            assert discovery.engine_hint("llama-a") == (3.0, None)  # llama-server exports no KV gauge
            assert discovery.engine_hint("big-a") == (5.0, 0.25)
            assert discovery.engine_hint("slow-a") == (None, None)  # timed out: unknown, not stale
            assert discovery.engine_hint("nobody") == (None, None)

            kube.slices = kube.slices[1:]  # llama-a left its slice
            await until(lambda: discovery.engine_hint("llama-a") == (None, None), 2.0)
            assert discovery.upstreams("llama") == []
            assert discovery.engine_hint("big-a") == (5.0, 0.25)
        assert discovery.engine_hint("big-a") == (None, None)  # nothing outlives running()


async def test_engines_that_export_no_load_gauges_are_not_scraped() -> None:
    hits = 0

    async def metrics(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(text=LLAMA_METRICS)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    kube = FakeKube()
    kube.models = [model_body("py", engine="llamacpp-python"), model_body("own", engine="custom", image="x")]
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        kube.slices = [eps("py", endpoint("127.0.0.1", "py-a"), ports=http_port(server.port)),
                       eps("own", endpoint("127.0.0.1", "own-a"), ports=http_port(server.port))]  # fmt: skip
        discovery = KubernetesDiscovery(kube, "ns", scrape_every=0.02)
        async with discovery.running():
            await asyncio.sleep(0.2)
            assert [r.served_name for r in discovery.models()] == ["own", "py"]
    assert hits == 0
