"""What the simulator asks of an autoscaler, and aiplane's own behind that interface.

An autoscaler decides every ``interval`` seconds of virtual time over a ``View`` (the
model's signals, read through ``Signals`` as on the gateway, and its replica counts) and
returns ``ScaleTo`` with a new state: pure, ``now`` an input, state explicit. ``wake`` is
called when a request is held while no replica exists at all (the gateway's demand
signal); an autoscaler that cannot react to it (an HPA) returns None and waits for its
next sync.

aiplane's is ``decide(autoscaler_for(metric), ctx, state)``, the very call the local
controller makes every 250 ms and at once on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aiplane.policies.autoscaling import (
    AutoscalerState,
    AutoscalingConfig,
    AutoscalingContext,
    ScaleTo,
    autoscaler_for,
    decide,
)
from aiplane.policies.signals import ModelSignals

CONTROLLER_TICK = 0.25  # aiplane.runtime.local.controller's reconcile period
IDLE_TICK = 5.0  # while nothing happens and the windows are empty (see Aiplane.settled)


@dataclass(frozen=True)
class View:
    now: float
    signals: ModelSignals
    current: int  # starting or ready, not draining
    ready: int


class SimAutoscaler(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def interval(self) -> float: ...

    def initial(self) -> Any: ...

    def decide(self, view: View, state: Any) -> tuple[ScaleTo, Any]: ...

    def wake(self, view: View, state: Any) -> tuple[ScaleTo | None, Any]: ...


@dataclass(frozen=True)
class Aiplane:
    """aiplane's autoscaler: the shared rules around the policy its ``metric`` names."""

    config: AutoscalingConfig
    name: str = "aiplane"
    interval: float = CONTROLLER_TICK

    def initial(self) -> AutoscalerState:
        return AutoscalerState()

    def decide(self, view: View, state: AutoscalerState) -> tuple[ScaleTo, AutoscalerState]:
        ctx = AutoscalingContext(
            now=view.now,
            current_replicas=view.current,
            signals=view.signals,
            config=self.config,
            ready_replicas=view.ready,
        )
        return decide(autoscaler_for(self.config.metric), ctx, state)

    def wake(self, view: View, state: AutoscalerState) -> tuple[ScaleTo | None, AutoscalerState]:
        return self.decide(view, state)  # the controller reconciles at once on demand

    # A replay of a slow profile stretches a trace over many hours of idle fleet; deciding
    # every 250 ms through them all would cost minutes. When every sample in the rules'
    # window is zero and no request exists, a decision sees only zeros whatever the
    # sampling, so the simulator may tick every ``idle_interval`` until the next arrival
    # (which brings the 250 ms ticks back at once). Only timers (scaleDownDelay,
    # scaleToZeroAfter) can then fire up to that much late.
    idle_interval: float = IDLE_TICK

    def settled(self, state: AutoscalerState) -> bool:
        return all(v == 0 for _, v in state.window)
