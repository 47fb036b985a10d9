"""What the admission core knows of a workload, whatever kind it is.

TrainingJob, BatchJob and Model replicas all reach quota admission as a ``Workload``:
one key, one queue, a priority, an age, a gang size and the total it asks for. The
runtime adapters implement the Protocol over their own objects; the simulator and the
tests use the frozen ``WorkloadInfo``. Kueue's ``GenericJob`` is the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

RESOURCES = ("gpu", "cpu", "memory")
# GPU amounts are sums of fractions (0.5 + 0.25 ...): compare them with this slack.
EPS = 1e-9


@dataclass(frozen=True)
class Demand(Mapping[str, float]):
    """The whole of what a workload needs (all pods of a gang), as ``resource -> amount``.

    ``gpu`` may be fractional (0.5 of a device), ``cpu`` is cores, ``memory`` bytes.
    ``gpu_model`` is a spec such as ``"A100"`` or ``"V100M16|V100M32"`` (any of them);
    None accepts any model. It is not one of the mapping's keys: it says where the GPUs
    may come from, not how many.
    """

    gpu: float = 0.0
    cpu: float = 0.0
    memory: float = 0.0
    gpu_model: str | None = None

    def __post_init__(self) -> None:
        for name in RESOURCES:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"demand {name} must be a finite amount >= 0 (got {value!r})")

    def __getitem__(self, resource: str) -> float:
        if resource not in RESOURCES:
            raise KeyError(resource)
        return float(getattr(self, resource))

    def __iter__(self) -> Iterator[str]:
        return iter(RESOURCES)

    def __len__(self) -> int:
        return len(RESOURCES)


class Workload(Protocol):
    """The one Protocol every workload kind implements for admission (read-only)."""

    @property
    def key(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def created(self) -> float:
        """Seconds on the runtime's clock: older workloads go first among equals."""
        ...

    @property
    def gang_size(self) -> int:
        """Pods that must run together; ``demand`` is already their total."""
        ...

    @property
    def demand(self) -> Demand: ...
    @property
    def suspended(self) -> bool: ...
    @property
    def finished(self) -> bool: ...
    @property
    def preemption_grace_s(self) -> float:
        """How long a victim gets to stop; the runtime honours it, the policy only carries it."""
        ...


@dataclass(frozen=True)
class WorkloadInfo:
    """A plain ``Workload``: what the simulator replays and the tests build."""

    key: str
    queue: str
    demand: Demand = field(default_factory=Demand)
    priority: int = 0
    created: float = 0.0
    gang_size: int = 1
    suspended: bool = False
    finished: bool = False
    preemption_grace_s: float = 30.0  # Kubernetes' default terminationGracePeriodSeconds

    def __post_init__(self) -> None:
        if self.gang_size < 1:
            raise ValueError(f"workload {self.key}: gang size must be >= 1 (got {self.gang_size})")
        if self.preemption_grace_s < 0:
            raise ValueError(f"workload {self.key}: preemption grace must be >= 0 s")
