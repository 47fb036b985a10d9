"""Autoscaling types: the configuration, the context a policy sees, its state, its decision.

A policy turns signals into *desired replicas* (fractional: load over target). The
shared rules (``rules.decide``) then apply windows, look-ahead over the cold start,
bounds, the scale-down delay and scale-to-zero. ``now`` is an input: only runtimes read
a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiplane.policies.signals import ModelSignals


@dataclass(frozen=True)
class AutoscalingConfig:
    """A Model's ``spec.autoscaling`` and ``spec.replicas``, in seconds and counts."""

    metric: str = "concurrency"
    target: float = 1.0
    min_replicas: int = 1
    max_replicas: int = 1
    scale_to_zero_after: float = 300.0
    scale_down_delay: float = 30.0
    stable_window: float = 60.0
    panic_window: float = 6.0
    cold_start: float = 30.0  # assumed replica start time until one is measured
    look_ahead: bool = True  # scale for the load expected once a new replica is ready
    replica_concurrency: int | None = None  # requests one replica runs at once (its slots)
    hold: float = 5.0  # with look-ahead, scale-down waits hold x the cold start (or the delay)
    surge: bool = True  # with look-ahead, at most max(2 x ready, ready + 4) replicas at once
    headroom: float = 0.0  # spare replicas while serving: headroom x max(1, sqrt(load)); 0: none


@dataclass(frozen=True)
class AutoscalingContext:
    """One model at ``now``: its replicas of the current spec, and its signals."""

    now: float
    current_replicas: int  # wanted and existing: starting or ready (not draining)
    signals: ModelSignals
    config: AutoscalingConfig
    ready_replicas: int | None = None  # None: all current ones are ready

    @property
    def ready(self) -> int:
        return self.current_replicas if self.ready_replicas is None else self.ready_replicas


@dataclass(frozen=True)
class AutoscalerState:
    """What the rules and policy remember between decisions.

    ``durable()`` is what a runtime persists (SQLite, the Model's status): the windows
    refill within a minute of a restart, as Knative's autoscaler's do.
    """

    last_active: float | None = None
    below_since: float | None = None
    window: tuple[tuple[float, float], ...] = ()  # (time, desired replicas) samples
    capacity: float | None = None  # learned requests per replica at the SLO (latency policy)
    peaks: tuple[tuple[float, float], ...] = ()  # (time, wanted), decreasing: the scale-down window

    def durable(self) -> dict[str, float | None]:
        return {"last_active": self.last_active, "below_since": self.below_since, "capacity": self.capacity}

    @classmethod
    def restore(cls, stored: dict[str, object] | None) -> AutoscalerState:
        """From ``durable()``'s dict; anything unreadable starts fresh."""
        if not stored:
            return cls()
        values = {k: stored.get(k) for k in ("last_active", "below_since", "capacity")}
        if not all(v is None or isinstance(v, int | float) for v in values.values()):
            return cls()
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Desired:
    """A policy's recommendation before the rules: fractional replicas, and why."""

    replicas: float
    reason: str
    capacity: float | None = field(default=None)  # a latency policy's updated estimate


@dataclass(frozen=True)
class ScaleTo:
    replicas: int
    reason: str


class Autoscaler(Protocol):
    """Recommends replicas from signals alone; windows, bounds and delays come around it."""

    @property
    def name(self) -> str: ...

    def desired(self, ctx: AutoscalingContext, state: AutoscalerState) -> Desired: ...
