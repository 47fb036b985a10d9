"""Queue admission: does a job's GPU need fit its queue's quota right now?

The minimal rule the operator needs today (quota per GPU model, with ``*`` for any
model, and unlimited CPU-only jobs); fair share, borrowing within a cohort and
preemption build on the same inputs. Outcomes carry their reason, which the job's
``Admitted`` condition and the CLI show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiplane.policies.scheduling.gpumodel import first_match

ANY_MODEL = "*"


@dataclass(frozen=True)
class Demand:
    gpus: float
    gpu_model: str | None = None


@dataclass(frozen=True)
class Admit:
    flavor: str | None
    reason: str


@dataclass(frozen=True)
class Pending:
    reason: str


def flavor_for(demand: Demand, quota: Mapping[str, float]) -> str | None:
    """The quota key a demand counts against: a key its GPU model matches, else ``*``."""
    if demand.gpu_model and (key := first_match(demand.gpu_model, [k for k in quota if k != ANY_MODEL])):
        return key
    if ANY_MODEL in quota:
        return ANY_MODEL
    return None


def admit(
    demand: Demand, queue_name: str, quota: Mapping[str, float] | None, used: Mapping[str, float]
) -> Admit | Pending:
    """Admit when the queue's quota for the demand's flavor has room for all of it (a gang)."""
    if demand.gpus <= 0:
        return Admit(None, "no GPUs requested")
    if quota is None:
        return Pending(f"queue {queue_name!r} does not exist")
    flavor = flavor_for(demand, quota)
    if flavor is None:
        model = demand.gpu_model or "any GPU model"
        return Pending(f"queue {queue_name!r} has no quota for {model}")
    free = quota[flavor] - used.get(flavor, 0.0)
    if demand.gpus <= free + 1e-9:
        return Admit(flavor, f"{demand.gpus:g} {flavor} GPUs of {free:g} free in queue {queue_name!r}")
    have = f"{max(free, 0):g} of {quota[flavor]:g}"
    return Pending(f"needs {demand.gpus:g} {flavor} GPUs, {have} free in queue {queue_name!r}")
