"""The Kubernetes body's ``Signals``: the gateways' counters and the engine pods' metrics.

The operator's autoscaler reads them. The gateway half comes from each gateway
replica's ``/metrics`` (summed over replicas): requests in flight, held at zero replicas,
queued for a slot, and the windows over the last minute (arrival rate, tokens/s, p95
time to first token from the histogram's bucket deltas, as PromQL's
``histogram_quantile(0.95, rate(...[1m]))`` would give). The engine half is scraped
from each ready pod of the Model at the address its ``prometheus.io/*`` annotations
give, by the engine adapter's ``MetricNames``; or, when a Prometheus URL is given, asked
of that Prometheus (:mod:`.prometheus`), which already scrapes those pods. When
Prometheus fails, is too slow, or has no series of a Model whose pods are ready, that
Model's engines are read from its pods for ``PROMETHEUS_RETRY_S`` (one warning per
Model until Prometheus answers again). The cold start is the newest pod's
creation-to-Ready time, always from the pods.

Parsing and window arithmetic are pure functions here; :class:`KubernetesSignals` does
the fetching.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from aiplane.engines import EngineRegistry, MetricNames
from aiplane.policies.signals import ModelSignals
from aiplane.runtime.engine_metrics import EngineSample, combine, scrape
from aiplane.runtime.kubernetes.prometheus import QUERY_TIMEOUT_S, PrometheusError, query_engines

log = logging.getLogger(__name__)
WINDOW = 60.0
P = "aiplane_gateway_"
PROMETHEUS_RETRY_S = 10.0  # after a failure, the pods' own metrics for this long (no timeout per tick)


@dataclass
class GatewaySample:
    """All gateway replicas at one instant, per served model: gauges and running totals."""

    at: float
    in_flight: dict[str, float] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)
    queued: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    ttft: dict[str, dict[float, float]] = field(default_factory=dict)  # le -> cumulative count


def parse_gateway_metrics(text: str, at: float, into: GatewaySample | None = None) -> GatewaySample:
    """Add one gateway's ``/metrics`` to ``into`` (several replicas sum)."""
    out = into or GatewaySample(at)
    gauges = {f"{P}requests_in_flight": out.in_flight, f"{P}requests_held": out.held,
              f"{P}requests_queued": out.queued}  # fmt: skip
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return out
    for family in families:
        for s in family.samples:
            model = s.labels.get("model")
            if model is None:
                continue
            if s.name in gauges:
                gauges[s.name][model] = gauges[s.name].get(model, 0.0) + s.value
            elif s.name == f"{P}requests_total":
                out.answered[model] = out.answered.get(model, 0.0) + s.value
            elif s.name == f"{P}tokens_total" and s.labels.get("kind") == "completion":
                out.tokens[model] = out.tokens.get(model, 0.0) + s.value
            elif s.name == f"{P}time_to_first_token_seconds_bucket":
                le = float(s.labels["le"])
                buckets = out.ttft.setdefault(model, {})
                buckets[le] = buckets.get(le, 0.0) + s.value
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` over cumulative bucket counts: linear within the
    bucket the rank falls in; the +Inf bucket answers its lower bound."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            width = count - below
            return lower + (le - lower) * ((rank - below) / width if width > 0 else 1.0)
        lower, below = le, count
    return lower


def gateway_signals(window: list[GatewaySample], model: str) -> ModelSignals:
    """The gateway half of a model's signals from samples oldest first (the last is now)."""
    if not window:
        return ModelSignals()
    first, last = window[0], window[-1]
    span = last.at - first.at
    rate = tokens = None
    ttft = None
    if span > 0:
        rate = max(0.0, last.answered.get(model, 0.0) - first.answered.get(model, 0.0)) / span
        tokens = max(0.0, last.tokens.get(model, 0.0) - first.tokens.get(model, 0.0)) / span
        old, new = first.ttft.get(model, {}), last.ttft.get(model, {})
        ttft = quantile(0.95, {le: max(0.0, n - old.get(le, 0.0)) for le, n in new.items()})
    return ModelSignals(
        in_flight=last.in_flight.get(model, 0.0),
        held=last.held.get(model, 0.0),
        queued=last.queued.get(model, 0.0),
        tokens_per_second=tokens,
        ttft_p95=ttft,
        arrival_rate=rate,
    )


def _stamp(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def cold_start_of(pods: Sequence[Mapping[str, Any]]) -> float | None:
    """The newest ready pod's time from creation to Ready (scheduling, pull, load)."""
    best: tuple[float, float] | None = None
    for pod in pods:
        created = _stamp((pod.get("metadata") or {}).get("creationTimestamp"))
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                ready = _stamp(c.get("lastTransitionTime"))
                if created is not None and ready is not None and (best is None or created > best[0]):
                    best = (created, max(0.0, ready - created))
    return best[1] if best else None


def metrics_url(pod: Mapping[str, Any]) -> str | None:
    """Where the lowering says the engine's metrics are (its ``prometheus.io/*`` annotations)."""
    notes = (pod.get("metadata") or {}).get("annotations") or {}
    ip = (pod.get("status") or {}).get("podIP")
    if notes.get("prometheus.io/scrape") != "true" or not ip or not notes.get("prometheus.io/port"):
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{notes['prometheus.io/port']}{notes.get('prometheus.io/path', '/metrics')}"


def port_url(pod: Mapping[str, Any], port_name: str, path: str) -> str | None:
    """``http://<pod IP>:<the container port named port_name><path>``, if the pod has both."""
    ip = (pod.get("status") or {}).get("podIP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name and ip:
                host = f"[{ip}]" if ":" in ip else ip
                return f"http://{host}:{port['containerPort']}{path}"
    return None


class KubernetesSignals:
    """Fetches what :func:`gateway_signals` and the engines report; ``read`` is then pure.

    ``prometheus``: the base URL of a Prometheus that scrapes the Model pods with
    :data:`~.prometheus.KUBERNETES_PODS_JOB`'s labels; None scrapes the pods directly.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_urls: list[str],
        engines: EngineRegistry,
        *,
        prometheus: str | None = None,
        prometheus_timeout: float = QUERY_TIMEOUT_S,
    ) -> None:
        self._session, self._gateways, self._engines = session, gateway_urls, engines
        self._prometheus, self._prometheus_timeout = prometheus, prometheus_timeout
        self._window: deque[GatewaySample] = deque()
        self._engine: dict[str, EngineSample] = {}  # "namespace/name" -> the model's engines
        self._source: dict[str, str] = {}  # "namespace/name" -> "prometheus" | "pods"
        self._retry_at: dict[str, float] = {}  # Models whose Prometheus query failed: when to ask again
        self._cold: dict[str, float] = {}
        self._served: dict[str, str] = {}
        self._refreshed = 0.0

    async def refresh_gateways(self, more: Sequence[str] = ()) -> None:
        """One sample of every gateway: the configured URLs and ``more`` (its pods now)."""
        now = time.monotonic()
        sample = GatewaySample(now)
        texts = await asyncio.gather(*(self._text(u) for u in [*self._gateways, *more]))
        for text in texts:
            if text is not None:
                parse_gateway_metrics(text, now, sample)
        self._window.append(sample)
        while self._window and now - self._window[0].at > WINDOW:
            self._window.popleft()

    async def refresh_model(
        self, key: str, served: str, engine: str, pods: Sequence[Mapping[str, Any]]
    ) -> None:
        """The engines of one Model (``key``: ``namespace/name``) and its cold start. The
        engines come from Prometheus when one is configured and answers, else from the
        Model's ready pods."""
        self._served[key] = served
        names = self._engines.get(engine).metrics
        urls = [u for p in pods if pod_is_ready(p) and (u := metrics_url(p))]
        sample, source = await self._from_prometheus(key, names, scrapeable=bool(urls)), "prometheus"
        if sample is None:
            samples = await asyncio.gather(*(scrape(self._session, u, names) for u in urls))
            sample, source = combine(list(samples)), "pods"
        self._engine[key], self._source[key] = sample, source
        if (cold := cold_start_of(pods)) is not None:
            self._cold[key] = cold

    async def _from_prometheus(self, key: str, names: MetricNames, scrapeable: bool) -> EngineSample | None:
        """Prometheus's answer for the Model, or None (read the pods) if there is none to
        ask, it failed lately, or it fails now."""
        if self._prometheus is None or time.monotonic() < self._retry_at.get(key, float("-inf")):
            return None
        namespace, _, model = key.partition("/")
        try:
            sample = await query_engines(
                self._session, self._prometheus, names, namespace, model, self._prometheus_timeout
            )
        except PrometheusError as exc:
            self._prometheus_failed(key, str(exc))
            return None
        if scrapeable and sample == EngineSample() and (names.running or names.waiting):
            # Ready pods but not one series: a pod started since the last scrape, or a scrape
            # job that does not label the series as KUBERNETES_PODS_JOB does.
            self._prometheus_failed(key, "no series although its pods are ready (not scraped yet?)")
            return None
        if self._retry_at.pop(key, None) is not None:
            log.info("engine metrics of %s: from Prometheus again", key)
        return sample

    def _prometheus_failed(self, key: str, reason: str) -> None:
        """Read the pods for PROMETHEUS_RETRY_S; warn once per run of failures, not every tick."""
        if key not in self._retry_at:
            log.warning("engine metrics of %s from Prometheus: %s; reading its pods instead", key, reason)
        self._retry_at[key] = time.monotonic() + PROMETHEUS_RETRY_S

    def engine_source(self, key: str) -> str | None:
        """Where the Model's last engine sample came from: ``prometheus`` or ``pods``."""
        return self._source.get(key)

    async def _text(self, url: str) -> str | None:
        try:
            async with asyncio.timeout(2.0), self._session.get(url) as resp:
                return await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    def read(self, model: str, now: float) -> ModelSignals:
        gateway = gateway_signals(list(self._window), self._served.get(model, model))
        engine = self._engine.get(model, EngineSample())
        return replace(
            gateway,
            engine_running=engine.running,
            engine_waiting=engine.waiting,
            kv_cache=engine.kv_cache,
            cold_start=self._cold.get(model),
        )

    def forget(self, model: str) -> None:
        for table in (self._engine, self._source, self._retry_at, self._cold, self._served):
            table.pop(model, None)
