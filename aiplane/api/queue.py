"""``Queue``: a team's GPU quota, its cohort for borrowing, and its fair-share weight."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from aiplane.api.meta import Resource, Strict


class QueueSpec(Strict):
    quota: dict[str, float] = Field(
        default_factory=dict,
        description="GPUs by model (H100: 16); the key '*' is a quota for any model",
    )
    cohort: str | None = None
    weight: float = Field(default=1.0, gt=0)
    borrowing: bool = True
    preemption: Literal["Never", "LowerPriority"] = "LowerPriority"

    @field_validator("quota")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for model, count in value.items():
            if count < 0:
                raise ValueError(f"quota for {model!r} must be >= 0 (got {count:g})")
        return value


class Queue(Resource):
    kind_name: ClassVar[str] = "Queue"
    plural: ClassVar[str] = "queues"
    short_names: ClassVar[tuple[str, ...]] = ("q",)
    namespaced: ClassVar[bool] = False

    kind: Literal["Queue"] = "Queue"
    spec: QueueSpec = Field(default_factory=QueueSpec)
