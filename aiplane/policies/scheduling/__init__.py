"""Scheduling policies: local GPU placement and queue admission."""

from aiplane.policies.scheduling.admission import Admit, Demand, Pending, admit
from aiplane.policies.scheduling.gpus import Fit, Gpu, NoFit, place

__all__ = ["Admit", "Demand", "Fit", "Gpu", "NoFit", "Pending", "admit", "place"]
