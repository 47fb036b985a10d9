"""A GPU of this machine, as discovery reports it (NVML, or a named fake inventory).

Local Model replicas are placed by the shared scheduling cycle, as jobs are
(:func:`aiplane.runtime.local.cycle.place_replica`): there is no local placement rule
of its own here to drift from the cycle's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    model: str
    memory_mb: int = 0
