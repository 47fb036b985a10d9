"""The load signals every policy reads, and the protocol every body provides them through.

One shape for the local runtime (the gateway's counters and the replicas' ``/metrics``),
Kubernetes (the gateway's demand and the pods' metrics, or Prometheus) and the serving
simulator, so the autoscalers and routers run unchanged on all three. A signal a body
cannot observe is ``None``, never a made-up zero: a policy that needs it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ModelSignals:
    """One model's load at one instant, summed (counts) or averaged (ratios) over replicas."""

    in_flight: float = 0.0  # requests the gateway has at engines
    held: float = 0.0  # requests the gateway holds because no replica is ready (cold start)
    queued: float = 0.0  # requests the gateway holds for a free slot on a ready replica
    engine_running: float | None = None  # the engines' own running count (vllm:num_requests_running)
    engine_waiting: float | None = None  # the engines' own queue (vllm:num_requests_waiting)
    kv_cache: float | None = None  # mean KV-cache use of ready replicas, 0..1
    tokens_per_second: float | None = None  # generated tokens/s over the recent window
    ttft_p95: float | None = None  # seconds, requests that got a first token in the recent window
    latency_p95: float | None = None  # seconds, whole requests in the recent window
    arrival_rate: float | None = None  # requests/s arriving over the recent window
    cold_start: float | None = None  # seconds from a replica's start to ready, recent mean
    cpu_utilization: float | None = None  # of the CPU requested, 0..1 (what an HPA reads)

    @property
    def demand(self) -> float:
        """Requests wanting service now: at engines, and held or queued in the gateway."""
        return self.in_flight + self.held + self.queued


class Signals(Protocol):
    """A body's source of signals: the gateway's counters plus what the engines report."""

    def read(self, model: str, now: float) -> ModelSignals: ...
