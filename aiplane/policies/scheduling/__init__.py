"""Scheduling policies. The local runtime's GPU placement lives here today."""

from aiplane.policies.scheduling.gpus import Fit, Gpu, NoFit, place

__all__ = ["Fit", "Gpu", "NoFit", "place"]
