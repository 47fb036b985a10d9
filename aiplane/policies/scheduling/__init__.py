"""Scheduling policies: quota admission, preemption, placement and the cycle that joins them."""

from aiplane.policies.scheduling.filters import (
    AffinityTerm,
    Gang,
    MatchExpression,
    NodeInfo,
    PodRequest,
    Taint,
    Toleration,
)
from aiplane.policies.scheduling.gpus import Fit, Gpu, NoFit, place

__all__ = [
    "AffinityTerm",
    "Fit",
    "Gang",
    "Gpu",
    "MatchExpression",
    "NoFit",
    "NodeInfo",
    "PodRequest",
    "Taint",
    "Toleration",
    "place",
]
