"""Autoscaling policies and the rules (bounds, delays, scale-to-zero) that wrap them."""

from aiplane.policies.autoscaling.base import (
    Autoscaler,
    AutoscalerState,
    AutoscalingContext,
    ScaleTo,
)
from aiplane.policies.autoscaling.concurrency import ConcurrencyAutoscaler
from aiplane.policies.autoscaling.rules import decide

__all__ = [
    "Autoscaler",
    "AutoscalerState",
    "AutoscalingContext",
    "ConcurrencyAutoscaler",
    "ScaleTo",
    "decide",
]
