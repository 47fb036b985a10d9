"""The gateway's view of load: requests in flight, held and queued, and recent outcomes.

The autoscalers read it through a runtime's ``Signals`` (concurrency, held requests at
zero replicas, p95 time to first token, arrival rate, tokens/s); the routers read each
replica's in-flight count. Windows are kept on the gateway's own monotonic clock.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiplane.policies.signals import ModelSignals

WINDOW = 60.0  # seconds of outcomes the percentiles and rates are taken over


def p95(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class _Recent:
    """One model's outcomes within the window: (time, value) pairs, oldest first."""

    arrivals: deque[float] = field(default_factory=deque)
    ttft: deque[tuple[float, float]] = field(default_factory=deque)
    latency: deque[tuple[float, float]] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)

    def trim(self, now: float) -> None:
        cutoff = now - WINDOW
        while self.arrivals and self.arrivals[0] < cutoff:
            self.arrivals.popleft()
        for series in (self.ttft, self.latency, self.tokens):
            while series and series[0][0] < cutoff:
                series.popleft()


class LoadTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self.held: defaultdict[str, int] = defaultdict(int)  # waiting for any ready replica
        self.queued: defaultdict[str, int] = defaultdict(int)  # waiting for a free slot
        self.per_replica: defaultdict[str, int] = defaultdict(int)
        self._recent: defaultdict[str, _Recent] = defaultdict(_Recent)
        self._since = clock()

    def start(self, model: str, replica_id: str) -> None:
        self.in_flight[model] += 1
        self.per_replica[replica_id] += 1

    def finish(self, model: str, replica_id: str) -> None:
        self.in_flight[model] -= 1
        self.per_replica[replica_id] -= 1
        if self.per_replica[replica_id] <= 0:
            del self.per_replica[replica_id]

    def replica_load(self, replica_id: str) -> int:
        return self.per_replica.get(replica_id, 0)

    def arrived(self, model: str) -> None:
        recent = self._recent[model]
        now = self.clock()
        recent.arrivals.append(now)
        recent.trim(now)

    def completed(self, model: str, *, ttft: float | None, latency: float, tokens: int) -> None:
        """A request served: its first-token time (the latency when it was not streamed),
        its whole latency, and the tokens it generated."""
        recent = self._recent[model]
        now = self.clock()
        recent.ttft.append((now, latency if ttft is None else ttft))
        recent.latency.append((now, latency))
        if tokens:
            recent.tokens.append((now, tokens))
        recent.trim(now)

    def demand(self, model: str) -> float:
        return self.in_flight.get(model, 0) + self.held.get(model, 0) + self.queued.get(model, 0)

    def signals(self, model: str) -> ModelSignals:
        """The gateway's half of a model's signals; the engines' half is the runtime's."""
        now = self.clock()
        recent = self._recent[model]
        recent.trim(now)
        span = min(WINDOW, max(now - self._since, 1.0))
        return ModelSignals(
            in_flight=float(self.in_flight.get(model, 0)),
            held=float(self.held.get(model, 0)),
            queued=float(self.queued.get(model, 0)),
            tokens_per_second=sum(n for _, n in recent.tokens) / span,
            ttft_p95=p95([v for _, v in recent.ttft]),
            latency_p95=p95([v for _, v in recent.latency]),
            arrival_rate=len(recent.arrivals) / span,
        )
