"""Pick GPUs for one replica on one machine: the local runtime's placement.

Whole GPUs go to the free devices of the requested model; a fraction goes to the
fullest GPU it still fits on (best fit), so shared GPUs are packed and whole ones stay
free for the jobs that need them: placement that avoids fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiplane.policies.scheduling.gpumodel import spec_matches


@dataclass(frozen=True)
class Gpu:
    index: int
    model: str
    memory_mb: int = 0


@dataclass(frozen=True)
class Fit:
    devices: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class NoFit:
    reason: str


def place(gpus: list[Gpu], used: dict[int, float], need: float, gpu_model: str | None = None) -> Fit | NoFit:
    """Devices for a replica needing ``need`` GPUs, given what is ``used`` per index."""
    if need <= 0:
        return Fit((), "no GPU requested")
    candidates = [g for g in gpus if spec_matches(gpu_model, g.model)]
    if not candidates:
        if not gpus:
            return NoFit(f"needs {need:g} GPU(s); this machine has no GPU")
        have = sorted({g.model for g in gpus})
        return NoFit(f"no GPU of model {gpu_model!r} on this machine (have: {', '.join(have)})")
    if need < 1:
        fits = [g for g in candidates if used.get(g.index, 0.0) + need <= 1.0 + 1e-9]
        if not fits:
            return NoFit(f"no GPU has {need:g} free")
        best = max(fits, key=lambda g: (used.get(g.index, 0.0), -g.index))
        return Fit((best.index,), f"shares GPU {best.index} (best fit)")
    count = math.ceil(need)
    free = [g.index for g in candidates if used.get(g.index, 0.0) == 0.0]
    if len(free) < count:
        return NoFit(f"needs {count} free GPU(s), {len(free)} free of {len(candidates)}")
    return Fit(tuple(free[:count]), f"{count} whole GPU(s)")
