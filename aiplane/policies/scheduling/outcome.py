"""The one answer to "can this workload be admitted now": ordered, and with its reasons.

Modes are ordered like Kueue's flavor-assignment modes (``Fit > Preempt > NoFit``), so
a caller comparing choices (quota keys, flavors) keeps the best with ``max``. Reasons
are written for users: the job's ``Admitted`` condition, the CLI and simulator reports
all show the same strings, and that is how aiplane answers "why is this pending".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.IntEnum):
    NoFit = 0  # nothing, not even preemption, makes room now
    Preempt = 1  # room can be made by evicting ``victims``
    Fit = 2  # admit now


@dataclass(frozen=True)
class Outcome:
    """A scheduling attempt's result.

    ``flavor`` is the quota key the GPUs count against, ``borrowed`` how many of them
    come from idle quota of the cohort, ``victims`` the workload keys to evict first.
    """

    mode: Mode
    reasons: tuple[str, ...]
    flavor: str | None = None
    borrowed: float = 0
    victims: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.borrowed < 0:
            raise ValueError(f"borrowed must be >= 0 (got {self.borrowed!r})")
        if (self.mode == Mode.Preempt) != bool(self.victims):
            raise ValueError("an outcome has victims exactly when its mode is Preempt")

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)
