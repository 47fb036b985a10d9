"""``aiplane scheduler``: the secondary scheduler for pods with ``schedulerName: aiplane``.

Every second (or at once after :meth:`Scheduler.wake`) one cycle runs:

1. read the cluster: Nodes, pending aiplane pods, every bound unfinished pod (usage), and
   the Jobs that own the pending pods;
2. decide, purely: :func:`~aiplane.runtime.kubernetes.snapshot.assemble_gangs` keeps the
   gangs whose pods all exist (a suspended Job has none), and
   :func:`~aiplane.policies.scheduling.nodes.place_gangs` places them in priority order;
3. act: bind each pod of a gang that fits (``pods/binding``); for a gang that does not,
   set ``PodScheduled=False, reason=Unschedulable`` with the policy's reason and post one
   ``FailedScheduling`` Warning event per pod, only when that reason changed.

The pod's own condition is the memory of what was last said, so a restarted scheduler
does not repeat events, and nothing lives only in this process. Lists are re-read every
cycle (no informer cache): simple and always consistent, and a cycle on a cluster of a
few thousand pods is a few list calls. Binding is per pod: the API has no atomic
multi-bind, so a pod deleted mid-gang leaves its peers bound (logged); the Job
controller recreates it and it joins its running peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from aiplane import aio
from aiplane.aio import install_stop_signals, remove_stop_signals
from aiplane.errors import AiplaneError, KubernetesError
from aiplane.policies.scheduling.nodes import GangFit, Profile, place_gangs
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import SCHEDULER_NAME
from aiplane.runtime.kubernetes.snapshot import (
    Manifest,
    PendingGang,
    SnapshotError,
    assemble_gangs,
    node_info,
    owner_job,
    pod_ref,
)

log = logging.getLogger(__name__)

COMPONENT = "aiplane-scheduler"
PENDING_PODS = f"spec.schedulerName={SCHEDULER_NAME},spec.nodeName="
BOUND_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
INTERVAL_S = 1.0
STALE_AFTER_S = 60.0  # /healthz fails when no cycle succeeded for this long
MESSAGE_MAX = 1024  # what the API server accepts in an event's message


class SchedulerMetrics:
    """A registry of its own, so several schedulers (tests) can live in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.binds = Counter("aiplane_scheduler_binds_total", "Pods bound to a node.", registry=self.registry)
        self.bind_errors = Counter(
            "aiplane_scheduler_bind_errors_total", "Bindings the API server refused.", registry=self.registry
        )
        self.unschedulable_gangs = Gauge(
            "aiplane_scheduler_unschedulable_gangs",
            "Gangs that did not fit in the last cycle.",
            registry=self.registry,
        )
        self.cycle_duration = Histogram(
            "aiplane_scheduler_cycle_duration_seconds",
            "Time of one scheduling cycle, reads and writes included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )


@dataclass(frozen=True)
class CycleReport:
    bound: int = 0
    unschedulable: int = 0
    reported: int = 0  # pods told (condition + event) of a new reason
    waiting: int = 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pods_path(namespace: str, name: str, sub: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/{sub}"


def scheduled_condition(pod: Manifest) -> Manifest | None:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "PodScheduled"), None)


class Scheduler:
    def __init__(
        self,
        kube: Kube,
        metrics: SchedulerMetrics | None = None,
        *,
        profile: Profile | None = None,
        interval: float = INTERVAL_S,
    ) -> None:
        self.kube = kube
        self.metrics = metrics or SchedulerMetrics()
        self.profile = profile
        self.interval = interval
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.started = time.monotonic()
        self.last_success: float | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Run the next cycle now (new pods, a node freed) instead of at the next tick."""
        self._wake.set()

    def healthy(self) -> bool:
        return time.monotonic() - (self.last_success or self.started) < STALE_AFTER_S

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle until ``stop`` is set. A failed cycle is logged and retried at the next tick."""
        log.info("aiplane scheduler running (schedulerName=%s)", SCHEDULER_NAME)
        while not stop.is_set():
            try:
                await self.cycle()
            except AiplaneError as exc:
                log.warning("scheduling cycle failed: %s", exc)
            except Exception:
                log.exception("scheduling cycle failed")
            self._wake.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def _list(self, path: str, field_selector: str | None = None) -> list[Manifest]:
        query = [("fieldSelector", field_selector)] if field_selector else None
        result = await self.kube.request("GET", path, query=query)
        items: list[Manifest] = result.get("items") or []
        return items

    async def _jobs(self, pods: Iterable[Manifest]) -> dict[tuple[str, str], Manifest | None]:
        wanted = sorted({(p["metadata"].get("namespace", ""), job) for p in pods if (job := owner_job(p))})
        found = await asyncio.gather(*(self.kube.get("batch/v1", "Job", name, ns) for ns, name in wanted))
        return dict(zip(wanted, found, strict=True))

    async def cycle(self) -> CycleReport:
        started = time.monotonic()
        with self.metrics.cycle_duration.time():
            pending = await self._list("/api/v1/pods", PENDING_PODS)
            if not pending:
                self.metrics.unschedulable_gangs.set(0)
                self.last_success = time.monotonic()
                return CycleReport()
            nodes_raw = await self._list("/api/v1/nodes")
            bound = await self._list("/api/v1/pods", BOUND_PODS)
            gangs, waiting = assemble_gangs(pending, bound, await self._jobs(pending))
            for w in waiting:
                log.debug("not placing %s: %s", w.key, w.reason)
            report = await self._place(gangs, nodes_raw, bound)
        self.last_success = time.monotonic()
        if report.bound or report.reported:  # quiet while nothing changes
            log.info(
                "cycle in %.0f ms: %d bound, %d gangs unschedulable, %d waiting",
                (time.monotonic() - started) * 1000,
                report.bound,
                report.unschedulable,
                len(waiting),
            )
        return CycleReport(report.bound, report.unschedulable, report.reported, len(waiting))

    async def _place(
        self, gangs: list[PendingGang], nodes_raw: list[Manifest], bound: list[Manifest]
    ) -> CycleReport:
        on_node: dict[str, list[Manifest]] = {}
        for pod in bound:
            on_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
        nodes = []
        for raw in nodes_raw:
            try:
                nodes.append(node_info(raw, on_node.get(raw["metadata"]["name"], [])))
            except SnapshotError as exc:
                log.warning("ignoring a node: %s", exc)
        manifests = {g.gang.job_key: g.pods for g in gangs}
        bound_count = unschedulable = reported = 0
        for decision in place_gangs(nodes, [g.gang for g in gangs], self.profile):
            pods = manifests[decision.gang.job_key]
            outcome = decision.outcome
            if isinstance(outcome, GangFit):
                for name, node in outcome.assignments.items():
                    bound_count += await self._bind(pods[name], node, outcome.reasons.get(name, ""))
                for name in sorted(pods.keys() - outcome.assignments.keys()):  # left out of a partial gang
                    reported += await self._unschedulable(
                        pods[name], outcome.reasons.get(name, "did not fit")
                    )
                continue
            unschedulable += 1
            for pod in pods.values():
                reported += await self._unschedulable(pod, outcome.reason)
        self.metrics.unschedulable_gangs.set(unschedulable)
        return CycleReport(bound_count, unschedulable, reported)

    async def _bind(self, pod: Manifest, node: str, why: str) -> int:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta.get("uid")},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            await self.kube.request("POST", _pods_path(meta["namespace"], meta["name"], "binding"), body)
        except KubernetesError as exc:  # deleted meanwhile (404), or bound already (409)
            self.metrics.bind_errors.inc()
            log.warning("could not bind %s to %s: %s", pod_ref(pod), node, exc)
            return 0
        self.metrics.binds.inc()
        log.info("bound %s to %s (%s)", pod_ref(pod), node, why)
        return 1

    async def _unschedulable(self, pod: Manifest, reason: str) -> int:
        """Say why once per change of reason: the condition, then one event. 1 if said."""
        message = reason[:MESSAGE_MAX]
        current = scheduled_condition(pod) or {}
        if (current.get("status"), current.get("reason"), current.get("message")) == (
            "False",
            "Unschedulable",
            message,
        ):
            return 0
        meta, now = pod["metadata"], _now()
        since = current.get("lastTransitionTime") if current.get("status") == "False" else None
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": since or now,
        }
        try:
            await self.kube.request(
                "PATCH",
                _pods_path(meta["namespace"], meta["name"], "status"),
                {"status": {"conditions": [condition]}},
                content_type="application/strategic-merge-patch+json",
            )
            await self._event(pod, message, now)
        except KubernetesError as exc:
            log.warning("could not report %s unschedulable: %s", pod_ref(pod), exc)
            return 0
        log.info("%s unschedulable: %s", pod_ref(pod), message)
        return 1

    async def _event(self, pod: Manifest, message: str, now: str) -> None:
        meta = pod["metadata"]
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": "FailedScheduling",
            "message": message,
            "type": "Warning",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "action": "Scheduling",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.kube.request("POST", f"/api/v1/namespaces/{quote(meta['namespace'])}/events", event)


# -- process -------------------------------------------------------------------------------------
def health_app(scheduler: Scheduler, metrics: SchedulerMetrics) -> web.Application:
    """``/healthz`` fails when no cycle has succeeded for a minute (API unreachable, a bug)."""

    async def healthz(_: web.Request) -> web.Response:
        if scheduler.healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"no successful scheduling cycle for {STALE_AFTER_S:.0f}s\n")

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app


def split_address(address: str) -> tuple[str, int]:
    """``0.0.0.0:8080``, ``[::]:8080`` or ``:8080`` (all interfaces)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise AiplaneError(f"--health-address: expected host:port (got {address!r})")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    kubeconfig: str | None,
    health_address: str | None,
    stop: asyncio.Event | None = None,
    *,
    interval: float = INTERVAL_S,
) -> None:
    """Schedule (and serve health and metrics) until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    signals = install_stop_signals(stop)
    try:
        async with Kube.connect(kubeconfig) as kube:
            metrics = SchedulerMetrics()
            scheduler = Scheduler(kube, metrics, interval=interval)
            async with contextlib.AsyncExitStack() as stack:
                if health_address:
                    host, port = split_address(health_address)
                    await stack.enter_async_context(aio.serve_app(health_app(scheduler, metrics), host, port))
                    log.info("health and metrics on http://%s:%d", host, port)
                await scheduler.run(stop)
    finally:
        remove_stop_signals(signals)
    log.info("aiplane scheduler stopped")


def run_scheduler(kubeconfig: str | None = None, health_address: str | None = None) -> None:
    """Blocking entry point for ``aiplane scheduler``; returns after SIGTERM or SIGINT.

    ``kubeconfig=None`` means in-cluster credentials, else the default kubeconfig;
    ``health_address=None`` serves no ``/healthz`` or ``/metrics``. Raises an
    :class:`~aiplane.errors.AiplaneError` (one line for the CLI) when it cannot start.
    """
    if not logging.getLogger().handlers:
        level = logging.DEBUG if os.environ.get("AIPLANE_DEBUG") else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(kubeconfig, health_address))
