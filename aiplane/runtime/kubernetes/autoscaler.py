"""The operator's autoscaler: each Model's signals, the shared policies, ``/scale``.

Every ``AUTOSCALE_SECONDS`` the operator calls :meth:`ModelAutoscaler.tick` for each
Model. It reads the gateways' and engines' signals (:mod:`.signals`), runs the policy
``autoscaling.metric`` names through the shared rules (``policies.autoscaling.decide``,
the same code the local plane and the simulator run), and writes a changed decision to
the Model's ``scale`` subresource (``spec.replicas.desired``), which the lowering turns
into the Deployment's replicas, so a resync never undoes it. What the rules remember
lives in ``status.autoscaler`` (the windows are kept in memory: they refill within a
minute of a restart, as Knative's do).

``cpu`` and ``memory`` Models are left to their HorizontalPodAutoscaler; Models with
``min == max`` have nothing to decide.

Where the gateways are: ``AIPLANE_GATEWAY_PODS`` (``namespace/label-selector``: the
install points it at the gateway's pods, each scraped at its ``http`` port, and their
counts summed), and/or ``AIPLANE_GATEWAY_METRICS``, comma-separated ``/metrics`` URLs
(tests point it at their in-process gateway). Without gateways the autoscaler still
sees the engines' own queues, but not a request held at zero (the gateway scales that
Model to one itself).

Where the engines' metrics come from: each ready pod's ``/metrics``, unless
``AIPLANE_PROMETHEUS_URL`` names a Prometheus (its base URL, e.g.
``http://prometheus-server.monitoring``) that scrapes the Model pods with the labels of
the ``kubernetes-pods`` job (:data:`.prometheus.KUBERNETES_PODS_JOB`); then one
instant query per engine signal and Model replaces the scrapes, and the pods are read
again while that Prometheus fails (:class:`.signals.KubernetesSignals`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from aiplane.api import Model
from aiplane.engines import EngineRegistry, default_registry
from aiplane.errors import AiplaneError
from aiplane.policies.autoscaling import AutoscalerState, AutoscalingContext, autoscaler_for, decide
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import LABEL_MODEL, PROMETHEUS_ENV
from aiplane.runtime.kubernetes.objects import API, from_body
from aiplane.runtime.kubernetes.signals import KubernetesSignals, pod_is_ready, port_url
from aiplane.runtime.model_route import autoscaling_config

log = logging.getLogger(__name__)
GATEWAY_METRICS_ENV = "AIPLANE_GATEWAY_METRICS"
GATEWAY_PODS_ENV = "AIPLANE_GATEWAY_PODS"
GATEWAY_EVERY_S = 0.9  # the gateways are scraped once per tick, not once per Model
ACTIVE_GRAIN_S = 10.0  # lastActive is stored to 10 s: a status write per 10 s while busy, not per tick


def status_of(state: AutoscalerState, replicas: int, reason: str) -> dict[str, Any]:
    """``status.autoscaler``: the decision and the durable part of the rules' memory."""
    active = state.last_active
    return {
        "replicas": replicas,
        "reason": reason,
        "lastActive": None if active is None else ACTIVE_GRAIN_S * (active // ACTIVE_GRAIN_S),
        "belowSince": state.below_since,
        "capacity": None if state.capacity is None else round(state.capacity, 3),
    }


def state_from(status: Mapping[str, Any] | None) -> AutoscalerState:
    status = status or {}
    return AutoscalerState.restore(
        {
            "last_active": status.get("lastActive"),
            "below_since": status.get("belowSince"),
            "capacity": status.get("capacity"),
        }
    )


class ModelAutoscaler:
    def __init__(
        self,
        kube: Kube,
        signals: KubernetesSignals,
        engines: EngineRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kube, self.signals, self._engines, self._clock = kube, signals, engines, clock
        self._states: dict[str, AutoscalerState] = {}
        self._reasons: dict[str, str] = {}
        self._gateways_at = float("-inf")
        pods = os.environ.get(GATEWAY_PODS_ENV, "")
        self._gateway_pods = tuple(pods.split("/", 1)) if "/" in pods else None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, kube: Kube, gateway_urls: list[str] | None = None, prometheus: str | None = None
    ) -> AsyncIterator[ModelAutoscaler]:
        if gateway_urls is None:
            gateway_urls = [
                u.strip() for u in os.environ.get(GATEWAY_METRICS_ENV, "").split(",") if u.strip()
            ]
        if prometheus is None:
            prometheus = os.environ.get(PROMETHEUS_ENV, "").strip() or None
        if prometheus:
            log.info("engine metrics from Prometheus at %s (the pods when it fails)", prometheus)
        engines = default_registry()
        async with aiohttp.ClientSession() as session:
            signals = KubernetesSignals(session, gateway_urls, engines, prometheus=prometheus)
            yield cls(kube, signals, engines)

    async def tick(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Decide for one Model and write ``/scale`` if the count changes; returns the
        ``status.autoscaler`` to keep, or None when this Model is not ours to scale."""
        model = from_body(body)
        assert isinstance(model, Model)
        spec = model.spec
        if spec.autoscaling.metric in ("cpu", "memory") or spec.replicas.min == spec.replicas.max:
            return None
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if time.monotonic() - self._gateways_at >= GATEWAY_EVERY_S:
            self._gateways_at = time.monotonic()
            await self.signals.refresh_gateways(await self._gateway_pod_urls())
        pods = await self._kube.list("v1", "Pod", meta["namespace"], f"{LABEL_MODEL}={meta['name']}")
        await self.signals.refresh_model(key, model.served_name, spec.engine, pods)

        now = self._clock()
        current = spec.replicas.count()
        state = self._states.get(key) or state_from((body.get("status") or {}).get("autoscaler"))
        ctx = AutoscalingContext(
            now=now,
            current_replicas=current,
            signals=self.signals.read(key, now),
            config=autoscaling_config(model, self._engines),
            ready_replicas=min(current, sum(1 for p in pods if pod_is_ready(p))),
        )
        decision, state = decide(autoscaler_for(spec.autoscaling.metric), ctx, state)
        self._states[key] = state
        if decision.replicas != current:
            await self._kube.patch_merge(
                API,
                "Model",
                meta["name"],
                meta["namespace"],
                {"spec": {"replicas": decision.replicas}},
                "scale",
            )
            log.info("scaled Model %s %d -> %d: %s", key, current, decision.replicas, decision.reason)
            self._reasons[key] = f"{current} -> {decision.replicas}: {decision.reason}"
        reason = self._reasons.get(key) or decision.reason
        self._reasons[key] = reason
        return status_of(state, decision.replicas, reason)

    async def _gateway_pod_urls(self) -> list[str]:
        if self._gateway_pods is None:
            return []
        namespace, selector = self._gateway_pods
        try:
            pods = await self._kube.list("v1", "Pod", namespace, selector)
        except AiplaneError as exc:
            log.warning("cannot list the gateway pods (%s): %s", selector, exc)
            return []
        return [url for p in pods if pod_is_ready(p) and (url := port_url(p, "http", "/metrics"))]

    def forget(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        self._states.pop(key, None)
        self._reasons.pop(key, None)
        self.signals.forget(key)
