"""Autoscaling policies, their registry keyed by ``autoscaling.metric``, and the shared rules."""

from aiplane.policies.autoscaling.base import (
    Autoscaler,
    AutoscalerState,
    AutoscalingConfig,
    AutoscalingContext,
    Desired,
    ScaleTo,
)
from aiplane.policies.autoscaling.policies import Concurrency, KvCache, Latency, QueueDepth, Utilization
from aiplane.policies.autoscaling.rules import decide

_POLICIES: dict[str, Autoscaler] = {
    "concurrency": Concurrency(),
    "queue-depth": QueueDepth(),
    "kv-cache": KvCache(),
    "latency": Latency(),
    "cpu": Utilization("cpu"),
    "memory": Utilization("memory"),
}
METRICS = tuple(_POLICIES)


def autoscaler_for(metric: str) -> Autoscaler:
    """The policy a Model's ``autoscaling.metric`` names."""
    try:
        return _POLICIES[metric]
    except KeyError:
        raise ValueError(f"unknown autoscaling metric {metric!r} (known: {', '.join(METRICS)})") from None


__all__ = [
    "METRICS",
    "Autoscaler",
    "AutoscalerState",
    "AutoscalingConfig",
    "AutoscalingContext",
    "Concurrency",
    "Desired",
    "KvCache",
    "Latency",
    "QueueDepth",
    "ScaleTo",
    "Utilization",
    "autoscaler_for",
    "decide",
]
