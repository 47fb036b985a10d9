"""Autoscaling types: the context a policy sees, its typed state, and its decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AutoscalingContext:
    """One model's load at ``now``. ``now`` is an input: only runtimes read a clock."""

    now: float
    current_replicas: int
    in_flight: float
    queued: int
    target: float
    min_replicas: int
    max_replicas: int
    scale_to_zero_after: float
    scale_down_delay: float


@dataclass(frozen=True)
class AutoscalerState:
    """What a policy remembers between decisions; persisted by the runtime (SQLite, CRD)."""

    last_active: float | None = None
    below_since: float | None = None


@dataclass(frozen=True)
class ScaleTo:
    replicas: int
    reason: str


class Autoscaler(Protocol):
    """Recommends replicas from load alone; bounds and delays are applied around it."""

    @property
    def name(self) -> str: ...

    def recommend(self, ctx: AutoscalingContext) -> ScaleTo: ...
