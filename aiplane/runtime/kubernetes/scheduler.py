"""``aiplane scheduler``: one scheduler for every aiplane workload (``schedulerName: aiplane``).

It keeps Nodes, Pods, TrainingJobs, BatchJobs and Queues in informer caches (a LIST, then
a WATCH; no re-list per cycle) and, while it holds the Lease, runs one cycle each second
or at once when something changed:

1. build the view (:mod:`~aiplane.runtime.kubernetes.scheduling_view`): a fleet with
   every bound pod on its devices, what holds quota, what waits;
2. decide, purely (:func:`~aiplane.policies.scheduling.cycle.schedule`): admit by queue
   and quota, preempt, reserve nodes for a starving gang, place;
3. act:

   * **admit** a TrainingJob or BatchJob by writing ``status.admission`` (the operator
     follows it into the Job's ``suspend``), and keep the planned nodes so its pods,
     once the Job controller creates them, are bound where the room was held;
   * **bind** pods (``pods/binding``; the chosen GPU devices ride along as the
     ``aiplane.dev/gpu-devices`` annotation, which the API server copies onto the pod);
   * **preempt**: annotate the victim's pods (``aiplane.dev/preempted``), then record
     ``admitted: false`` with the reason: the operator suspends the Job and the Job
     controller deletes the pods, which get SIGTERM and the job's ``gracePeriod``
     (default 120 s) to checkpoint. The victim is requeued, not failed, and resumes
     from its checkpoint when admitted again;
   * **say why** a workload waits, quota and placement in one line, in
     ``status.admission.reason`` (the ``REASON`` printer column), the operator's
     ``Admitted`` condition and an Event; pods it places directly get the usual
     ``PodScheduled=False`` condition and ``FailedScheduling`` event;
   * write each Queue's status: quota used and borrowed per GPU model.

Two replicas run under one Lease (:class:`~aiplane.runtime.kubernetes.leader.LeaderElector`):
both keep their caches warm, only the leader acts. What the leader keeps in memory
(plans, reservations, who preempted whom) is an optimisation: a new leader rebuilds
what it needs from the objects, at worst placing a gang afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from aiplane import aio
from aiplane.aio import install_stop_signals, remove_stop_signals
from aiplane.api import API_VERSION
from aiplane.errors import AiplaneError, KubernetesError
from aiplane.observe import catalogue as c
from aiplane.observe.families import StateCollector, queue_families
from aiplane.policies.scheduling import scorers, stats
from aiplane.policies.scheduling.cycle import RESERVE_AFTER_S, CycleResult, schedule, usage_of
from aiplane.policies.scheduling.fragmentation import TargetWorkload
from aiplane.policies.scheduling.quota import Usage
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import (
    ANNOTATION_GPU_DEVICES,
    ANNOTATION_PREEMPTED,
    SCHEDULER_NAME,
)
from aiplane.runtime.kubernetes.informer import Informer, Informers
from aiplane.runtime.kubernetes.leader import LeaderElector
from aiplane.runtime.kubernetes.objects import admission_of
from aiplane.runtime.kubernetes.scheduling_view import (
    JobPlan,
    ShapeCache,
    View,
    build_view,
    devices_text,
    job_key,
    pod_owner_key,
)
from aiplane.runtime.kubernetes.snapshot import Manifest, owner_job, pod_ref

log = logging.getLogger(__name__)

COMPONENT = "aiplane-scheduler"
LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
INTERVAL_S = 1.0
STALE_AFTER_S = 60.0  # /healthz fails when no cycle succeeded for this long
MESSAGE_MAX = 1024  # what the API server accepts in an event's message
WRITES_IN_FLIGHT = 32  # binds and status writes of one cycle run this many at a time
LEASE_NAME = "aiplane-scheduler"
JOB_PLURALS = {"TrainingJob": "trainingjobs", "BatchJob": "batchjobs"}


class SchedulerMetrics:
    """A registry of its own, so several schedulers (tests) can live in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.binds = c.SCHEDULER_BINDS.counter(r)
        self.bind_errors = c.SCHEDULER_BIND_ERRORS.counter(r)
        self.admissions = c.SCHEDULER_ADMISSIONS.counter(r)
        self.preemptions = c.SCHEDULER_PREEMPTIONS.counter(r)
        self.unschedulable_gangs = c.SCHEDULER_UNSCHEDULABLE.gauge(r)
        self.leader = c.SCHEDULER_LEADER.gauge(r)
        self.cycle_duration = c.SCHEDULER_CYCLE.histogram(r)
        self.stats = stats.QueueStats()  # the last cycle's, exported at scrape time
        r.register(StateCollector(lambda: queue_families(self.stats)))


@dataclass(frozen=True)
class CycleReport:
    bound: int = 0
    unschedulable: int = 0
    reported: int = 0  # workloads or pods told of a new reason
    waiting: int = 0
    admitted: int = 0
    preempted: int = 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pods_path(namespace: str, name: str, sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
    return f"{path}/{sub}" if sub else path


def _job_path(kind: str, namespace: str, name: str) -> str:
    return f"/apis/{API_VERSION}/namespaces/{quote(namespace)}/{JOB_PLURALS[kind]}/{quote(name)}/status"


def scheduled_condition(pod: Manifest) -> Manifest | None:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "PodScheduled"), None)


def target_workload(view: View) -> TargetWorkload:
    """The pod shapes FGD weighs fragmentation by: what runs and what waits, now."""
    return stats.target_workload(view.holders, view.candidates)


def queue_status(name: str, view: View, usage: Usage, waiting: Iterable[str]) -> Manifest:
    """Quota used and borrowed per key, as numbers and as the printer columns' text."""
    spec = view.queues[name]
    flavors = []
    for flavor, quota in spec.quota.items():
        used, borrowed = usage.gpus(name, flavor), usage.borrowed(spec, flavor)
        flavors.append(
            {"name": flavor, "quota": quota, "used": round(used, 3), "borrowed": round(borrowed, 3)}
        )
    admitted = sum(1 for w in usage.workloads if w.queue == name)
    pending = sum(1 for key in waiting if key in view.jobs and _queue_of(view.jobs[key]) == name)
    return {
        "flavors": flavors,
        "used": ", ".join(f"{f['name']} {f['used']:g}/{f['quota']:g}" for f in flavors) or "-",
        "borrowed": ", ".join(f"{f['name']} {f['borrowed']:g}" for f in flavors if f["borrowed"]) or "0",
        "admittedWorkloads": admitted,
        "pendingWorkloads": pending,
    }


def _queue_of(body: Manifest) -> str:
    return str((body.get("spec") or {}).get("queue") or "default")


class Scheduler:
    def __init__(
        self,
        kube: Kube,
        metrics: SchedulerMetrics | None = None,
        *,
        interval: float = INTERVAL_S,
        reserve_after_s: float = RESERVE_AFTER_S,
        policy: str = "aiplane",
        event_every_s: float = 10.0,
    ) -> None:
        self.kube = kube
        self.metrics = metrics or SchedulerMetrics()
        self.interval = interval
        self.reserve_after_s = reserve_after_s
        self.policy = policy
        self.event_every_s = event_every_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.started = time.monotonic()
        self.last_success: float | None = None
        self._wake = asyncio.Event()
        self.cache = Informers(
            {
                "nodes": Informer(kube, "/api/v1/nodes", on_change=self._changed),
                "pods": Informer(kube, "/api/v1/pods", field_selector=LIVE_PODS, on_change=self._changed),
                "trainingjobs": Informer(kube, f"/apis/{API_VERSION}/trainingjobs", on_change=self._changed),
                "batchjobs": Informer(kube, f"/apis/{API_VERSION}/batchjobs", on_change=self._changed),
                "queues": Informer(kube, f"/apis/{API_VERSION}/queues", on_change=self._changed),
            }
        )
        self.rng = np.random.default_rng(0)
        self.shapes = ShapeCache()
        self.plans: dict[str, JobPlan] = {}
        self.reservations: dict[str, tuple[str, ...]] = {}  # workload key -> node names
        self.preempting: dict[str, list[str]] = {}  # preemptor -> victims still stopping
        self._said: dict[str, tuple[str, float]] = {}  # workload key -> (reason, when)
        self._queue_said: dict[str, Manifest] = {}
        self._writes = asyncio.Semaphore(WRITES_IN_FLIGHT)

    def _changed(self, _type: str, _obj: Manifest) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Run the next cycle now (new pods, a node freed) instead of at the next tick."""
        self._wake.set()

    def healthy(self) -> bool:
        return time.monotonic() - (self.last_success or self.started) < STALE_AFTER_S

    def forget(self) -> None:
        """Leadership lost: what this replica planned is no longer its to keep."""
        self.plans.clear()
        self.reservations.clear()
        self.preempting.clear()
        self._said.clear()
        self._queue_said.clear()

    async def run(self, stop: asyncio.Event, leading: asyncio.Event | None = None) -> None:
        """Cycle until ``stop`` is set, while ``leading`` is (always, without an election).

        A failed cycle is logged and retried at the next tick.
        """
        log.info("aiplane scheduler running (schedulerName=%s)", SCHEDULER_NAME)
        while not stop.is_set():
            if leading is None or leading.is_set():
                try:
                    await self.cycle()
                except AiplaneError as exc:
                    log.warning("scheduling cycle failed: %s", exc)
                except Exception:
                    log.exception("scheduling cycle failed")
            else:
                self.last_success = time.monotonic()  # a follower is healthy while it follows
            self._wake.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            # let a burst of changes (a Job creating its pods) settle into one cycle
            await asyncio.sleep(min(0.05, self.interval))

    async def _native_jobs(self, pods: Iterable[Manifest]) -> dict[tuple[str, str], Manifest | None]:
        """The batch Jobs owning aiplane pods that no TrainingJob or BatchJob runs (their gang size)."""
        wanted = sorted(
            {
                (p["metadata"].get("namespace", ""), job)
                for p in pods
                if not (p.get("spec") or {}).get("nodeName")
                and (p.get("spec") or {}).get("schedulerName") == SCHEDULER_NAME
                and pod_owner_key(p) is None
                and (job := owner_job(p))
            }
        )
        found = await asyncio.gather(*(self.kube.get("batch/v1", "Job", name, ns) for ns, name in wanted))
        return dict(zip(wanted, found, strict=True))

    def view(self, native: dict[tuple[str, str], Manifest | None], now: float) -> View:
        # list items of some servers omit kind: the view keys jobs by it
        jobs = [
            {**body, "kind": kind, "apiVersion": API_VERSION}
            for kind, plural in JOB_PLURALS.items()
            for body in self.cache[plural].items()
        ]
        self.shapes.begin()
        return build_view(
            self.cache["nodes"].items(),
            self.cache["pods"].items(),
            jobs,
            self.cache["queues"].items(),
            self.plans,
            now,
            native,
            shape_of=self.shapes,
        )

    async def cycle(self) -> CycleReport:
        started = time.monotonic()
        with self.metrics.cycle_duration.time():
            native = await self._native_jobs(self.cache["pods"].items())
            view = self.view(native, time.time())
            for problem in view.problems:
                log.debug("%s", problem)
            if not view.candidates and not view.direct:
                self.metrics.stats = stats.queue_stats(view.fleet, view.queues, view.holders, [], {})
                await self._tidy(view, CycleResult())
                self.metrics.unschedulable_gangs.set(0)
                self.last_success = time.monotonic()
                return CycleReport()
            index = {name: i for i, name in enumerate(view.fleet.names)}
            reservations = {
                key: tuple(index[n] for n in names if n in index) for key, names in self.reservations.items()
            }
            (scorer,) = scorers.make([self.policy], target_workload(view))
            result = schedule(
                view.fleet,
                view.queues,
                view.holders,
                view.candidates,
                scorer,
                self.rng,
                reservations=reservations,
                preempting=self.preempting,
                reserve_after_s=self.reserve_after_s,
            )
            pending = stats.pending_of(result.waits, view.candidates)
            self.metrics.stats = stats.queue_stats(
                view.fleet, view.queues, view.holders, view.candidates, pending
            )
            report = await self._act(view, result)
            await self._tidy(view, result)
        self.last_success = time.monotonic()
        if report.bound or report.reported or report.admitted or report.preempted:
            log.info(
                "cycle in %.0f ms: %d admitted, %d bound, %d preempted, %d waiting",
                (time.monotonic() - started) * 1000,
                report.admitted,
                report.bound,
                report.preempted,
                report.waiting,
            )
        return report

    # -- acting ------------------------------------------------------------------------------
    async def _gather(self, calls: Sequence[Awaitable[int]]) -> int:
        async def limited(call: Awaitable[int]) -> int:
            async with self._writes:
                return await call

        return sum(await asyncio.gather(*(limited(c) for c in calls)))

    async def _act(self, view: View, result: CycleResult) -> CycleReport:
        fleet = view.fleet
        binds: list[Awaitable[int]] = [
            self._bind(pod, node, devices, "the place held for it at admission")
            for pod, node, devices in view.direct
        ]
        admitted = 0
        writes: list[Awaitable[int]] = []
        for start in result.starts:
            body = view.jobs.get(start.key)
            if body is not None and not admission_of(body).get("admitted"):
                self.plans[start.key] = JobPlan(
                    tuple((fleet.names[p.node], p.devices) for p in start.placements)
                )
                writes.append(self._admit(body, start.flavor, start.borrowed, start.reason))
                admitted += 1
                continue
            for pod, placement in zip(view.pods.get(start.key, []), start.placements, strict=False):
                binds.append(self._bind(pod, fleet.names[placement.node], placement.devices, start.reason))
        preempted = 0
        for evict in result.evictions:
            body = view.jobs.get(evict.key)
            if body is None:
                continue
            self.preempting.setdefault(evict.by, []).append(evict.key)
            self.plans.pop(evict.key, None)
            writes.append(self._preempt(body, view.active_pods.get(evict.key, []), evict.by, evict.reason))
            preempted += 1
        reported = 0
        for wait in result.waits:
            body = view.jobs.get(wait.key)
            if body is not None and not admission_of(body).get("admitted"):
                writes.append(self._pending(body, wait.reason))
            else:
                for pod in view.pods.get(wait.key, []):
                    writes.append(self._unschedulable(pod, wait.reason))
        bound = await self._gather(binds)
        reported = await self._gather(writes) - admitted - preempted
        self.metrics.admissions.inc(admitted)
        self.metrics.preemptions.inc(preempted)
        self.metrics.unschedulable_gangs.set(len(result.waits))
        self.reservations = {k: tuple(fleet.names[i] for i in v) for k, v in result.reservations.items()}
        return CycleReport(bound, len(result.waits), max(0, reported), len(result.waits), admitted, preempted)

    async def _tidy(self, view: View, result: CycleResult) -> None:
        """Forget what no longer matters, clear the quota record of stopped jobs, write queues."""
        holding = {h.key: h for h in view.holders}
        for by in list(self.preempting):
            left = [v for v in self.preempting[by] if v in holding]
            if left:
                self.preempting[by] = left
            else:
                del self.preempting[by]
        waiting = {c.key for c in view.candidates}
        started = {s.key for s in result.starts}  # admitted just now: the view predates that
        for key in list(self.plans):
            body = view.jobs.get(key)
            if key in started:
                continue
            if body is None or not admission_of(body).get("admitted") or key not in holding:
                self.plans.pop(key, None)
        writes: list[Awaitable[int]] = []
        for key, body in view.jobs.items():
            admission = admission_of(body)
            if not admission.get("admitted") and admission.get("flavor") and key not in holding:
                writes.append(self._write_admission(body, {"flavor": None, "borrowed": None}))
        for name in view.queues:
            status = queue_status(name, view, usage_of(view.holders), waiting)
            if self._queue_said.get(name) != status:
                writes.append(self._queue(name, status))
        await self._gather(writes)

    async def _write_admission(self, body: Manifest, fields: Manifest) -> int:
        meta = body["metadata"]
        try:
            await self.kube.request(
                "PATCH",
                _job_path(body["kind"], meta["namespace"], meta["name"]),
                {"status": {"admission": fields}},
                content_type="application/merge-patch+json",
            )
        except KubernetesError as exc:
            log.warning("could not update %s/%s: %s", body["kind"], meta["name"], exc)
            return 0
        return 1

    async def _admit(self, body: Manifest, flavor: str | None, borrowed: float, reason: str) -> int:
        key = job_key(body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        queue = _queue_of(body)
        fields = {
            "admitted": True,
            "run": (body.get("status") or {}).get("activeRun"),  # a scheduled job: this run only
            "queue": queue,
            "flavor": flavor,
            "borrowed": borrowed,
            "reason": reason[:MESSAGE_MAX],
            "admittedAt": _now(),
            "preempted": None,
        }
        done = await self._write_admission(body, fields)
        if done:
            self._said[key] = (reason, time.monotonic())
            await self._event(body, "Admitted", reason, "Normal")
            log.info("admitted %s: %s", key, reason)
        return done

    async def _pending(self, body: Manifest, reason: str) -> int:
        """Say why it waits when that changed (and not more often than ``event_every_s``)."""
        key = job_key(body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        message = reason[:MESSAGE_MAX]
        admission = admission_of(body)
        said, when = self._said.get(key, (admission.get("reason"), 0.0))
        if said == message or time.monotonic() - when < self.event_every_s:
            return 0
        fields: Manifest = {"admitted": False, "reason": message, "queue": _queue_of(body)}
        if not admission.get("pendingSince"):
            fields["pendingSince"] = body["metadata"].get("creationTimestamp") or _now()
        done = await self._write_admission(body, fields)
        if done:
            self._said[key] = (message, time.monotonic())
            await self._event(body, "Pending", message, "Warning")
        return done

    async def _preempt(self, body: Manifest, pods: Sequence[Manifest], by: str, reason: str) -> int:
        """The grace signal first (pods annotated), then ``admitted: false`` (the operator suspends)."""
        meta = body["metadata"]
        for pod in pods:
            patch = {"metadata": {"annotations": {ANNOTATION_PREEMPTED: reason[:MESSAGE_MAX]}}}
            try:
                await self.kube.request(
                    "PATCH",
                    _pods_path(pod["metadata"]["namespace"], pod["metadata"]["name"]),
                    patch,
                    content_type="application/merge-patch+json",
                )
            except KubernetesError as exc:
                log.warning("could not annotate %s: %s", pod_ref(pod), exc)
        text = f"{reason}; requeued, resumes when admitted again"
        fields = {
            "admitted": False,
            "reason": text[:MESSAGE_MAX],
            "preempted": {"by": by, "reason": reason[:MESSAGE_MAX], "at": _now()},
            "pendingSince": _now(),
        }
        done = await self._write_admission(body, fields)
        if done:
            key = job_key(body["kind"], meta["namespace"], meta["name"])
            self._said[key] = (text, time.monotonic())
            await self._event(body, "Preempted", text, "Warning")
            log.info("preempted %s: %s", key, reason)
        return done

    async def _queue(self, name: str, status: Manifest) -> int:
        try:
            await self.kube.request(
                "PATCH",
                f"/apis/{API_VERSION}/queues/{quote(name)}/status",
                {"status": status},
                content_type="application/merge-patch+json",
            )
        except KubernetesError as exc:
            log.warning("could not update queue %s: %s", name, exc)
            return 0
        self._queue_said[name] = status
        return 0  # not a workload told anything

    async def _bind(self, pod: Manifest, node: str, devices: Sequence[int], why: str) -> int:
        meta = pod["metadata"]
        body: Manifest = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta.get("uid")},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        if devices:  # the API server copies a Binding's annotations onto the pod
            body["metadata"]["annotations"] = {ANNOTATION_GPU_DEVICES: devices_text(devices)}
        try:
            await self.kube.request("POST", _pods_path(meta["namespace"], meta["name"], "binding"), body)
        except KubernetesError as exc:  # deleted meanwhile (404), or bound already (409)
            self.metrics.bind_errors.inc()
            log.warning("could not bind %s to %s: %s", pod_ref(pod), node, exc)
            return 0
        self.metrics.binds.inc()
        log.debug("bound %s to %s %s (%s)", pod_ref(pod), node, devices_text(devices), why)
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
            await self._event(pod, "FailedScheduling", message, "Warning")
        except KubernetesError as exc:
            log.warning("could not report %s unschedulable: %s", pod_ref(pod), exc)
            return 0
        log.info("%s unschedulable: %s", pod_ref(pod), message)
        return 1

    async def _event(self, obj: Manifest, reason: str, message: str, kind: str) -> None:
        meta, now = obj["metadata"], _now()
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"),
                "kind": obj.get("kind", "Pod"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:MESSAGE_MAX],
            "type": kind,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "action": "Scheduling",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.request("POST", f"/api/v1/namespaces/{quote(meta['namespace'])}/events", event)
        except KubernetesError as exc:
            log.warning("could not post an event for %s: %s", meta["name"], exc)


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


@dataclass(frozen=True)
class Settings:
    """How one ``aiplane scheduler`` process runs (the CLI's flags)."""

    interval: float = INTERVAL_S
    reserve_after_s: float = RESERVE_AFTER_S
    leader_elect: bool = True
    lease_namespace: str = "default"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str | None = None


async def _start_caches(scheduler: Scheduler, stop: asyncio.Event) -> bool:
    """LIST everything, retrying while the API is not ready (CRDs just installed, a 429 while
    storage initialises, RBAC not yet bound): a scheduler pod waits rather than crash-loops."""
    delay = 0.5
    while not stop.is_set():
        try:
            await scheduler.cache.start()
            return True
        except KubernetesError as exc:
            log.warning("caches not ready (%s); again in %.1fs", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 10.0)
    return False


async def serve(
    kubeconfig: str | None,
    health_address: str | None,
    stop: asyncio.Event | None = None,
    settings: Settings | None = None,
) -> None:
    """Schedule (and serve health and metrics) until ``stop`` is set or SIGTERM/SIGINT arrives."""
    settings = settings or Settings()
    stop = stop or asyncio.Event()
    signals = install_stop_signals(stop)
    try:
        async with Kube.connect(kubeconfig) as kube:
            metrics = SchedulerMetrics()
            scheduler = Scheduler(
                kube, metrics, interval=settings.interval, reserve_after_s=settings.reserve_after_s
            )
            async with contextlib.AsyncExitStack() as stack:
                if health_address:
                    host, port = split_address(health_address)
                    await stack.enter_async_context(aio.serve_app(health_app(scheduler, metrics), host, port))
                    log.info("health and metrics on http://%s:%d", host, port)
                if not await _start_caches(scheduler, stop):
                    return
                stack.push_async_callback(scheduler.cache.stop)
                leading: asyncio.Event | None = None
                election: asyncio.Task[None] | None = None
                if settings.leader_elect:

                    def stopped_leading() -> None:
                        metrics.leader.set(0)
                        scheduler.forget()

                    elector = LeaderElector(
                        kube,
                        LEASE_NAME,
                        settings.lease_namespace,
                        settings.identity or scheduler.instance,
                        lease_duration=settings.lease_duration,
                        renew_deadline=settings.renew_deadline,
                        retry_period=settings.retry_period,
                        on_started_leading=lambda: metrics.leader.set(1),
                        on_stopped_leading=stopped_leading,
                    )
                    leading = elector.leading
                    election = asyncio.create_task(elector.run(stop))
                else:
                    metrics.leader.set(1)
                try:
                    await scheduler.run(stop, leading)
                finally:
                    if election is not None:
                        stop.set()
                        await election  # releases the Lease, so a peer takes over at once
    finally:
        remove_stop_signals(signals)
    log.info("aiplane scheduler stopped")


def run_scheduler(
    kubeconfig: str | None = None, health_address: str | None = None, settings: Settings | None = None
) -> None:
    """Blocking entry point for ``aiplane scheduler``; returns after SIGTERM or SIGINT.

    ``kubeconfig=None`` means in-cluster credentials, else the default kubeconfig;
    ``health_address=None`` serves no ``/healthz`` or ``/metrics``. Raises an
    :class:`~aiplane.errors.AiplaneError` (one line for the CLI) when it cannot start.
    """
    if not logging.getLogger().handlers:
        level = logging.DEBUG if os.environ.get("AIPLANE_DEBUG") else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(kubeconfig, health_address, settings=settings))
