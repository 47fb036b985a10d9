"""Scheduling policies: quota admission, preemption, placement and the cycle that joins them."""

from aiplane.policies.scheduling.gpus import Fit, Gpu, NoFit, place
from aiplane.policies.scheduling.nodes import (
    AffinityTerm,
    Gang,
    GangDecision,
    GangFit,
    GangNoFit,
    MatchExpression,
    NodeInfo,
    PodRequest,
    Taint,
    Toleration,
    place_gang,
    place_gangs,
)

__all__ = [
    "AffinityTerm",
    "Fit",
    "Gang",
    "GangDecision",
    "GangFit",
    "GangNoFit",
    "Gpu",
    "MatchExpression",
    "NoFit",
    "NodeInfo",
    "PodRequest",
    "Taint",
    "Toleration",
    "place",
    "place_gang",
    "place_gangs",
]
