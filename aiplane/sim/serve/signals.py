"""The simulator's ``Signals``: the gateway's own counters plus what the simulated engines report.

The gateway half is aiplane's ``LoadTracker`` itself on the virtual clock (in-flight,
held, queued, arrival rate, tokens/s, p95 TTFT and latency over its 60 s window), so the
autoscalers see exactly what they see behind the real gateway. The engine half:

* ``engine_running`` / ``engine_waiting``: sequences scheduled / queued in the engines
  (``vllm:num_requests_running`` / ``_waiting``), ready and draining replicas summed;
* ``kv_cache``: mean KV reserved over capacity of the ready replicas;
* ``cold_start``: the mean measured start-to-ready time, None until a replica has started;
* ``cpu_utilization`` (what an HPA on CPU reads): an engine's serving loop keeps its CPU
  busy whenever it has a request, however many, and near idle otherwise. So each ready
  replica's use over the last reading is ``idle + (1 - idle) x (share of the time it had
  any request)``, the mean over ready replicas reported: CPU% says *busy or not*, not
  *how loaded*, which is why the textbook HPA scales LLM servers badly.
"""

from __future__ import annotations

from dataclasses import replace

from aiplane.gateway.load import LoadTracker
from aiplane.policies.signals import ModelSignals
from aiplane.sim.serve.fleet import Fleet
from aiplane.sim.serve.replica import Replica

MIN_CPU_SPAN = 1.0  # seconds: a reading sooner than this repeats the last one


class SimSignals:
    def __init__(self, load: LoadTracker, fleet: Fleet) -> None:
        self._load = load
        self._fleet = fleet
        self._cpu: dict[str, tuple[float, float, float]] = {}  # replica -> (time, busy s, use)

    def read(self, model: str, now: float) -> ModelSignals:
        ready = self._fleet.ready()
        serving = [r for r in self._fleet.alive() if r.state in ("ready", "draining")]
        starts = self._fleet.start_times
        return replace(
            self._load.signals(model),
            engine_running=float(sum(r.running for r in serving)),
            engine_waiting=float(sum(len(r.waiting) for r in serving)),
            kv_cache=sum(r.kv_use for r in ready) / len(ready) if ready else None,
            cold_start=sum(starts) / len(starts) if starts else None,
            cpu_utilization=sum(self._cpu_use(r, now) for r in ready) / len(ready) if ready else None,
        )

    def _cpu_use(self, replica: Replica, now: float) -> float:
        busy = replica.busy_until(now)
        since = replica.ready_at if replica.ready_at is not None else now
        t0, busy0, use = self._cpu.get(replica.id, (since, 0.0, 0.0))
        if now - t0 >= MIN_CPU_SPAN:
            share = min(1.0, max(0.0, (busy - busy0) / (now - t0)))
            idle = replica.profile.cpu_idle
            use = idle + (1.0 - idle) * share
            self._cpu[replica.id] = (now, busy, use)
        return use
