"""The local controller: level-triggered reconcile of desired Models against replicas.

Each tick reads desired state from SQLite, asks the autoscaling policy how many
replicas each model needs, places them on GPUs with the shared scheduling cycle (the
one local jobs run in, with the jobs runner's reservations, so a replica never takes
the GPUs held for a starving job), and tells the supervisor to start or stop processes.
Only this module writes observed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aiplane.api import Model, parse_duration
from aiplane.engines import EngineRegistry, LocalLaunch, resolve_local
from aiplane.errors import AiplaneError
from aiplane.gateway.load import LoadTracker
from aiplane.observe.families import ModelRow
from aiplane.policies.autoscaling import AutoscalerState, AutoscalingContext, autoscaler_for, decide
from aiplane.policies.scheduling import Gpu
from aiplane.runtime.local.cycle import Wait, place_replica
from aiplane.runtime.local.discovery import LocalDiscovery
from aiplane.runtime.local.gpus import visible_devices_env
from aiplane.runtime.local.jobs import JobRunner
from aiplane.runtime.local.process import alive, cmdline, free_port, kill_group, probe
from aiplane.runtime.local.signals import LocalSignals
from aiplane.runtime.local.store import ModelStatusRow, ReplicaRow, Store
from aiplane.runtime.local.supervisor import Replica, State, Supervisor
from aiplane.runtime.model_route import autoscaling_config

log = logging.getLogger(__name__)
EventSink = Callable[[str, str, str], None]


class LocalController:
    def __init__(
        self,
        store: Store,
        engines: EngineRegistry,
        load: LoadTracker,
        gpus: list[Gpu],
        logs: Path,
        host: str = "127.0.0.1",
        on_event: EventSink | None = None,
        tick: float = 0.25,
    ) -> None:
        self.store, self.engines, self.load, self.gpus = store, engines, load, gpus
        self.logs, self.host, self.tick_seconds = logs, host, tick
        self._on_event = on_event
        self.supervisor = Supervisor(self._replica_changed)
        self.discovery = LocalDiscovery(self.supervisor, engines)
        self._states: dict[str, AutoscalerState] = {}
        self._draining: dict[str, float] = {}
        self._last_reason: dict[str, str] = {}
        self._seen: dict[str, State] = {}
        self._shares: dict[str, float] = {}
        self._drain_for: dict[str, float] = {}  # model -> the longest a draining replica waits
        self._written: dict[str, tuple[object, ...]] = {}
        self.model_rows: dict[str, ModelRow] = {}  # the last decision per model, for metrics
        self.signals = LocalSignals(load, self.supervisor, engines)
        checkpoints = logs.parent / "checkpoints"
        self.jobs = JobRunner(store, gpus, logs / "jobs", self.event, host, checkpoints=checkpoints)

    # -- events and observed state -------------------------------------------------
    def event(self, ref: str, reason: str, message: str) -> None:
        self.store.event(ref, reason, message)
        if self._on_event:
            self._on_event(ref, reason, message)

    def _replica_changed(self, replica: Replica) -> None:
        if replica.state is State.STOPPED:
            self.store.remove_replica(replica.id)
        else:
            self.store.put_replica(
                ReplicaRow(
                    replica.id, replica.model, replica.generation, replica.pid, replica.port,
                    replica.state.value, ",".join(map(str, replica.devices)), replica.restarts,
                    replica.started, str(replica.log_path), replica.message,
                    replica.launch.argv,
                )
            )  # fmt: skip
        if self._seen.get(replica.id) == replica.state:
            return  # same state, new detail (pid, restarts): stored, not evented
        recovered = self._seen.get(replica.id) is State.UNHEALTHY and replica.state is State.READY
        if replica.state is State.READY and not recovered:
            self.signals.replica_ready(replica)
        self._seen[replica.id] = replica.state
        if replica.state is State.STOPPED:
            self._seen.pop(replica.id, None)
        reason = {State.READY: "ReplicaReady", State.CRASH_LOOP: "CrashLoopBackOff"}.get(
            replica.state, f"Replica{replica.state.value}"
        )
        if recovered:
            reason = "ReplicaRecovered"
        self.event(f"Model/{replica.model}", reason, f"{replica.id}: {replica.message or replica.state}")
        self.discovery.notify()

    # -- adoption on start ---------------------------------------------------------
    async def adopt_or_replace(self) -> None:
        """Adopt live replicas a previous plane left; kill and forget everything else.

        Jobs are not adopted (their exit codes died with the plane): their leftover
        workers are killed and the jobs requeued.
        """
        await self.jobs.recover()
        desired = {s.resource.name: s for s in self.store.resources("Model")}
        for row in self.store.replicas():
            stored = desired.get(row.model)
            keep = (
                stored is not None
                and row.generation == stored.generation
                and row.pid is not None
                and alive(row.pid)
                and cmdline(row.pid) == row.argv
                and await probe(
                    self.supervisor.session,
                    f"http://{self.host}:{row.port}{self._launch_probe(stored.resource)}",
                )
            )
            if keep and stored is not None and isinstance(stored.resource, Model):
                model = stored.resource
                launch = self._launch(model, row.port, tuple(int(d) for d in row.devices.split(",") if d))
                replica = Replica(
                    row.id, row.model, row.generation, self.host, row.port,
                    tuple(int(d) for d in row.devices.split(",") if d), Path(row.log_path),
                    launch, pid=row.pid, restarts=row.restarts, started=row.started,
                )  # fmt: skip
                self.supervisor.adopt(replica)
                self.event(f"Model/{row.model}", "Adopted", f"{row.id} (pid {row.pid})")
            else:
                if row.pid and alive(row.pid) and cmdline(row.pid) == row.argv:
                    await kill_group(row.pid)
                self.store.remove_replica(row.id)
                self.event(f"Model/{row.model}", "Replaced", f"{row.id} (pid {row.pid}) removed")

    def _launch_probe(self, model: object) -> str:
        if not isinstance(model, Model):
            return "/health"
        return self._launch(model, 0, ()).probes.ready_path

    def _launch(self, model: Model, port: int, devices: tuple[int, ...]) -> LocalLaunch:
        path = str(resolve_local(model.spec.source))
        launch = self.engines.get(model.spec.engine).local(model, path, self.host, port)
        return replace(launch, env=launch.env | visible_devices_env(devices))

    # -- the loop ------------------------------------------------------------------
    async def run(self) -> None:
        scraping = asyncio.create_task(self.signals.run(), name="engine-metrics")
        try:
            while True:
                try:
                    await self.reconcile(time.time())
                except Exception:  # keep the loop alive; the failure is logged and evented
                    log.exception("reconcile failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick_seconds):
                        await self.discovery.demand.wait()
                self.discovery.demand.clear()
        finally:
            scraping.cancel()

    async def reconcile(self, now: float) -> None:
        stored = [s for s in self.store.resources("Model") if isinstance(s.resource, Model)]
        self.discovery.set_models([(s.resource, s.created) for s in stored])  # type: ignore[misc]
        self.signals.set_models(
            {s.resource.name: (s.resource.served_name, s.resource.spec.engine) for s in stored}  # type: ignore[union-attr]
        )
        self._drain_for = {
            s.resource.name: parse_duration(s.resource.spec.timeouts.request)  # type: ignore[union-attr]
            for s in stored
        }
        self._shares = {
            s.resource.name: min(s.resource.spec.resources.gpus, 1.0)  # type: ignore[union-attr]
            for s in stored
        }
        names = set()
        for item in stored:
            assert isinstance(item.resource, Model)
            names.add(item.resource.name)
            await self._reconcile_model(item.resource, item.generation, now)
        # After every status write: a status says what is wanted before a replica goes.
        self._drain(now)
        for replica in list(self.supervisor.replicas.values()):
            if replica.model not in names:
                self.supervisor.stop_soon(replica.id)
        for gone in (set(self._states) | set(self._written)) - names:
            self._states.pop(gone, None)
            self._written.pop(gone, None)
            self.model_rows.pop(gone, None)
            self.discovery.set_unavailable(gone, None)
        await self.jobs.reconcile(now, self._replicas_held())

    def _replicas_held(self) -> dict[int, float]:
        """The share of each GPU that model replicas hold (from this tick's read), stopping
        ones too: a GPU is free once the process is gone."""
        used: dict[int, float] = {}
        for r in self.supervisor.holding():
            share = self._gpu_share(r.model)
            for d in r.devices:
                used[d] = used.get(d, 0.0) + share
        return used

    async def _reconcile_model(self, model: Model, generation: int, now: float) -> None:
        mine = [r for r in self.supervisor.replicas.values() if r.model == model.name]
        current = [r for r in mine if r.generation == generation and r.id not in self._draining]
        old = [r for r in mine if r.generation != generation and r.id not in self._draining]
        state = self._states.get(model.name) or self._load_state(model.name)
        ctx = AutoscalingContext(
            now=now,
            current_replicas=len(current),
            signals=self.signals.read(model.name, now),
            config=autoscaling_config(model, self.engines),
            ready_replicas=sum(1 for r in current if r.routable),
        )
        decision, new_state = decide(autoscaler_for(model.spec.autoscaling.metric), ctx, state)
        self._states[model.name] = new_state
        reason = decision.reason
        if decision.replicas > len(current):
            reason = self._scale_up(model, generation, decision.replicas - len(current)) or reason
        elif decision.replicas < len(current):
            victims = sorted(current, key=lambda r: (r.routable, self.load.replica_load(r.id)))
            # Drain: out of routing now, stopped once its requests (streams too) finish.
            for replica in victims[: len(current) - decision.replicas]:
                self._draining[replica.id] = now
                self.event(model.ref, "ScaleDown", f"{replica.id}: {decision.reason}")
        ready_current = sum(1 for r in current if r.routable)
        cfg = ctx.config
        load = new_state.window[-1][1] * cfg.target if new_state.window else None
        self.model_rows[model.name] = ModelRow(
            model.name, decision.replicas, ready_current, cfg.min_replicas, cfg.max_replicas,
            cfg.metric, load, cfg.target,
            sum(self._gpu_share(model.name) * len(r.devices) for r in mine if r.devices),
        )  # fmt: skip
        if old and ready_current >= min(decision.replicas, len(current)):
            for replica in old:  # rolling update: old ones go once new ones serve
                self._draining[replica.id] = now
        if reason != self._last_reason.get(model.name) and decision.replicas != len(current):
            # Evented once per change of reason, not every tick.
            if reason.startswith("Pending: "):
                self.event(model.ref, "Unschedulable", reason.removeprefix("Pending: "))
            elif reason.startswith("EngineError: "):
                self.event(model.ref, "EngineError", reason.removeprefix("EngineError: "))
            else:
                self.event(model.ref, "Scale", f"{len(current)} -> {decision.replicas}: {reason}")
        self._last_reason[model.name] = reason
        self.discovery.set_unavailable(model.name, self._cannot_start(reason, current))
        # Written when it changes, not every 250 ms tick.
        durable = new_state.durable()
        key = (decision.replicas, ready_current, reason, tuple(durable.values()))
        if self._written.get(model.name) != key:
            self._written[model.name] = key
            self.store.set_status(
                ModelStatusRow(model.name, decision.replicas, ready_current, reason, durable, now)
            )

    @staticmethod
    def _cannot_start(reason: str, current: list[Replica]) -> str | None:
        """A launch error, or every replica of the current spec crash-looping: waiting won't help."""
        if reason.startswith("EngineError: "):
            return reason.removeprefix("EngineError: ")
        if current and all(r.state is State.CRASH_LOOP for r in current):
            return f"every replica is in CrashLoopBackOff: {current[0].message}"
        return None

    def _load_state(self, name: str) -> AutoscalerState:
        row = self.store.statuses().get(name)
        return AutoscalerState.restore(row.autoscaler if row else None)

    def _scale_up(self, model: Model, generation: int, count: int) -> str | None:
        resources = model.spec.resources
        for _ in range(count):
            snapshot = self.jobs.snapshot_for_replicas(self._replicas_held())
            placed = place_replica(snapshot, model.name, resources.gpus, resources.gpu_model)
            if isinstance(placed, Wait):
                return f"Pending: {placed.reason}"
            (devices,) = placed.devices
            port = free_port(self.host)
            try:
                launch = self._launch(model, port, devices)
            except AiplaneError as exc:
                return f"EngineError: {exc}"
            rid = f"{model.name}-{uuid.uuid4().hex[:6]}"
            replica = Replica(
                rid, model.name, generation, self.host, port, devices,
                self.logs / model.name / f"{rid}.log", launch,
            )  # fmt: skip
            self.event(model.ref, "ScaleUp", f"{rid} on port {port} ({placed.reason})")
            self.supervisor.start(replica)
        return None

    def _gpu_share(self, model_name: str) -> float:
        """The share of each of its devices a replica of this model holds (from this tick's read)."""
        return self._shares.get(model_name, 1.0)

    def _drain(self, now: float) -> None:
        """Stop draining replicas once their in-flight requests finish (or time runs out)."""
        for rid, since in list(self._draining.items()):
            replica = self.supervisor.replicas.get(rid)
            if replica is None:
                self._draining.pop(rid)
                continue
            if replica.state is State.READY:
                replica.state = State.DRAINING
                self._replica_changed(replica)
            # A stream may run as long as the Model's request timeout: only then is it cut.
            if self.load.replica_load(rid) == 0 or now - since > self._drain_for.get(replica.model, 600.0):
                self._draining.pop(rid)
                self.supervisor.stop_soon(rid)
