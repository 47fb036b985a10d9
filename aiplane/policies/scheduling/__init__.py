"""Scheduling policies: local GPU placement, queue admission and cluster node placement."""

from aiplane.policies.scheduling.admission import Admit, Demand, Pending, admit
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
    "Admit",
    "AffinityTerm",
    "Demand",
    "Fit",
    "Gang",
    "GangDecision",
    "GangFit",
    "GangNoFit",
    "Gpu",
    "MatchExpression",
    "NoFit",
    "NodeInfo",
    "Pending",
    "PodRequest",
    "Taint",
    "Toleration",
    "admit",
    "place",
    "place_gang",
    "place_gangs",
]
