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
from aiplane.policies.scheduling.gpus import Gpu

__all__ = [
    "AffinityTerm",
    "Gang",
    "Gpu",
    "MatchExpression",
    "NodeInfo",
    "PodRequest",
    "Taint",
    "Toleration",
]
