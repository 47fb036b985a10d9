"""All-or-nothing placement of a gang of pods on a :class:`Fleet`.

The pods are placed one by one, largest first, on a *copy* of the fleet, each seeing the
nodes as its peers left them. Only when every pod found a node is anything returned: a
half-placed gang would hold GPUs while waiting for peers that cannot start, which is how
gang jobs deadlock a cluster without a gang scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aiplane.policies.scheduling.fleet import Eligibility, Fleet, Placement, PodShape
from aiplane.policies.scheduling.scorers import Scorer


@dataclass(frozen=True)
class GangFit:
    placements: tuple[Placement, ...]  # in the order of the pods given


@dataclass(frozen=True)
class GangNoFit:
    reason: str
    pod: PodShape  # the first pod that found no node


def largest_first(pods: Sequence[PodShape]) -> list[int]:
    return sorted(range(len(pods)), key=lambda i: (-pods[i].total_milli, -pods[i].cpu_milli, i))


def explain(fleet: Fleet, pod: PodShape, eligible: Eligibility | None = None) -> str:
    """``0/1213 nodes fit: 1180 too few free GPUs, 33 GPU model not in V100M16|V100M32``."""
    counts = fleet.why_not(pod, eligible)
    fit = len(fleet) - sum(counts.values())
    parts = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda rn: (-rn[1], rn[0])))
    return f"{fit}/{len(fleet)} nodes fit" + (f": {parts}" if parts else "")


def place_gang(
    fleet: Fleet,
    pods: Sequence[PodShape],
    scorer: Scorer,
    rng: np.random.Generator,
    eligible: Sequence[Eligibility | None] | None = None,
    *,
    explained: bool = True,
) -> GangFit | GangNoFit:
    """Placements for every pod of the gang, or the reason the first misfit found none.

    ``fleet`` is not changed; the caller binds the placements it accepts (and tells the
    scorer, through :meth:`Scorer.bound`). A lone pod needs no scratch copy.
    ``eligible[i]`` restricts where pod ``i`` may go (None: anywhere it fits).
    ``explained=False`` skips the reason (a what-if only asks whether it fits).
    """
    where = list(eligible) if eligible is not None else [None] * len(pods)
    if len(pods) == 1:
        fits = np.flatnonzero(fleet.feasible(pods[0], where[0]))
        if not len(fits):
            return GangNoFit(explain(fleet, pods[0], where[0]) if explained else "", pods[0])
        return GangFit((scorer.place(fleet, pods[0], fits, rng),))
    scratch = fleet.copy()
    placed: dict[int, Placement] = {}
    for i in largest_first(pods):
        pod = pods[i]
        fits = np.flatnonzero(scratch.feasible(pod, where[i]))
        if not len(fits):
            if not explained:
                return GangNoFit("", pod)
            reason = f"gang of {len(pods)} pods, {len(placed)} fit; {explain(scratch, pod, where[i])}"
            return GangNoFit(reason, pod)
        placement = scorer.place(scratch, pod, fits, rng)
        scratch.bind(pod, placement)
        scorer.bound(placement.node)  # a scorer's cache follows the fleet it last saw
        placed[i] = placement
    return GangFit(tuple(placed[i] for i in range(len(pods))))
