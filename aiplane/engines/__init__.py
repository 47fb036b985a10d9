"""Engine adapters: how each model server is launched, probed and measured."""

from aiplane.engines.base import ContainerLaunch, EngineAdapter, LocalLaunch, MetricNames, Probes
from aiplane.engines.registry import EngineRegistry, default_registry
from aiplane.engines.sources import resolve_local

__all__ = [
    "ContainerLaunch",
    "EngineAdapter",
    "EngineRegistry",
    "LocalLaunch",
    "MetricNames",
    "Probes",
    "default_registry",
    "resolve_local",
]
