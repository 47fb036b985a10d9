"""The local plane's ``Signals``: the gateway's counters plus each replica's engine metrics.

Engine metrics are scraped in the background every ``SCRAPE_EVERY`` seconds (a slow engine
never delays a reconcile tick); CPU use (of one core) is read from ``/proc/<pid>/stat``
deltas, for the ``cpu`` metric; the cold start is measured from each replica's start to its first Ready.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace

from aiplane.engines import EngineRegistry
from aiplane.gateway.load import LoadTracker
from aiplane.policies.signals import ModelSignals
from aiplane.runtime.engine_metrics import EngineSample, combine, scrape
from aiplane.runtime.local.supervisor import Replica, Supervisor

SCRAPE_EVERY = 2.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (utime, stime), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


class LocalSignals:
    def __init__(self, load: LoadTracker, supervisor: Supervisor, engines: EngineRegistry) -> None:
        self._load, self._supervisor, self._engines = load, supervisor, engines
        self._served: dict[str, tuple[str, str]] = {}  # model name -> (served name, engine)
        self._engine: dict[str, EngineSample] = {}  # replica id -> last sample
        self._cpu: dict[str, tuple[float, float, float]] = {}  # replica -> (wall, cpu s, use)
        self._cold_start: dict[str, float] = {}

    def set_models(self, models: dict[str, tuple[str, str]]) -> None:
        """Model name -> (served name, engine), from this tick's desired state."""
        self._served = models

    def replica_ready(self, replica: Replica) -> None:
        """A replica turned Ready: its start-to-ready time is the model's cold start."""
        if replica.started is not None and replica.ready_at is not None and replica.restarts == 0:
            self._cold_start[replica.model] = max(0.0, replica.ready_at - replica.started)

    def engine_hint(self, replica_id: str) -> tuple[float | None, float | None]:
        """One replica's last engine report (waiting, KV use), for the gateway's routers."""
        sample = self._engine.get(replica_id)
        return (sample.waiting, sample.kv_cache) if sample else (None, None)

    def read(self, model: str, now: float) -> ModelSignals:
        served, _ = self._served.get(model, (model, ""))
        gateway = self._load.signals(served)
        mine = [r for r in self._supervisor.replicas.values() if r.model == model and r.routable]
        engine = combine([self._engine[r.id] for r in mine if r.id in self._engine])
        uses = [self._cpu[r.id][2] for r in mine if r.id in self._cpu]
        return replace(
            gateway,
            engine_running=engine.running,
            engine_waiting=engine.waiting,
            kv_cache=engine.kv_cache,
            cold_start=self._cold_start.get(model),
            cpu_utilization=sum(uses) / len(uses) if uses else None,
        )

    async def run(self) -> None:
        """Scrape every ready replica's engine metrics and CPU use, forever."""
        while True:
            await self.scrape_once()
            await asyncio.sleep(SCRAPE_EVERY)

    async def scrape_once(self) -> None:
        replicas = [r for r in self._supervisor.replicas.values() if r.routable]
        engines = {name: engine for name, (_, engine) in self._served.items()}
        jobs, ids = [], []
        for r in replicas:
            path = r.launch.probes.metrics_path
            engine = engines.get(r.model)
            if path and engine:
                names = self._engines.get(engine).metrics
                jobs.append(scrape(self._supervisor.session, r.base_url + path, names))
                ids.append(r.id)
            self._sample_cpu(r)
        samples = await asyncio.gather(*jobs)
        live = {r.id for r in replicas}
        self._engine = {rid: s for rid, s in zip(ids, samples, strict=True)}
        self._cpu = {rid: v for rid, v in self._cpu.items() if rid in live}

    def _sample_cpu(self, replica: Replica) -> None:
        if replica.pid is None or (used := cpu_seconds(replica.pid)) is None:
            return
        wall = time.monotonic()
        previous = self._cpu.get(replica.id)
        use = 0.0
        if previous is not None and wall > previous[0]:
            use = max(0.0, (used - previous[1]) / (wall - previous[0]))
        self._cpu[replica.id] = (wall, used, use)
