"""``TrainingJob`` and ``BatchJob``: run-to-completion work admitted through a ``Queue``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from aiplane.api.meta import Resource, Strict
from aiplane.api.quantity import Duration, Quantity, check_gpu_count

# Five cron fields, or one of the @-macros CronJob accepts.
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"


class Checkpoint(Strict):
    path: str = Field(min_length=1, description="directory (local) or PVC path for checkpoints")
    resume: bool = True
    size: Quantity | None = None


class TrainingJobSpec(Strict):
    image: str | None = None
    command: list[str] = Field(min_length=1)
    workers: int = Field(default=1, ge=1, le=4096)
    gpus_per_worker: float = Field(default=0, ge=0, alias="gpusPerWorker")
    gpu_model: str | None = Field(default=None, alias="gpuModel")
    cpu: Quantity | None = None
    memory: Quantity | None = None
    queue: str = "default"
    priority: int = 0
    checkpoint: Checkpoint | None = None
    schedule: str | None = Field(default=None, pattern=CRON_PATTERN, examples=["0 3 * * *"])
    max_restarts: int = Field(default=3, ge=0, alias="maxRestarts")
    active_deadline: Duration | None = Field(default=None, alias="activeDeadline")
    env: dict[str, str] = Field(default_factory=dict)
    grace_period: Duration = Field(
        default="120s",
        alias="gracePeriod",
        description="time to write a last checkpoint after SIGTERM (preemption, drain)",
    )

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_gpus(cls, value: float) -> float:
        return check_gpu_count(value)


class TrainingJob(Resource):
    kind_name: ClassVar[str] = "TrainingJob"
    plural: ClassVar[str] = "trainingjobs"
    short_names: ClassVar[tuple[str, ...]] = ("tj",)

    kind: Literal["TrainingJob"] = "TrainingJob"
    spec: TrainingJobSpec


class BatchJobSpec(Strict):
    task: Literal["embed", "generate", "custom"]
    model: str | None = Field(default=None, description="a Model name, for embed/generate")
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    shards: int = Field(default=1, ge=1, le=100000)
    parallelism: int = Field(default=1, ge=1)
    queue: str = "default"
    priority: int = 0
    image: str | None = None
    command: list[str] = Field(default_factory=list)
    gpus_per_shard: float = Field(default=0, ge=0, alias="gpusPerShard")
    max_retries: int = Field(default=3, ge=0, alias="maxRetries")
    grace_period: Duration = Field(
        default="120s", alias="gracePeriod", description="time a preempted shard gets to stop after SIGTERM"
    )

    @field_validator("gpus_per_shard")
    @classmethod
    def _whole_gpus(cls, value: float) -> float:
        return check_gpu_count(value)

    @model_validator(mode="after")
    def _task_needs(self) -> BatchJobSpec:
        if self.task in ("embed", "generate") and not self.model:
            raise ValueError(f"task {self.task!r} needs spec.model (the Model to run)")
        if self.task == "custom" and not self.command:
            raise ValueError("task 'custom' needs spec.command")
        return self


class BatchJob(Resource):
    kind_name: ClassVar[str] = "BatchJob"
    plural: ClassVar[str] = "batchjobs"
    short_names: ClassVar[tuple[str, ...]] = ("bj",)

    kind: Literal["BatchJob"] = "BatchJob"
    spec: BatchJobSpec
