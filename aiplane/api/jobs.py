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
    # "custom" is the first name of "command", still accepted (and read as "command")
    task: Literal["embed", "generate", "command", "custom"] = Field(
        description="embed or generate rows with spec.model, or run spec.command per shard"
    )
    model: str | None = Field(default=None, description="a Model name, for embed/generate")
    input: str = Field(
        min_length=1, description="JSONL, CSV or Parquet: a path, pvc://claim/path, or an fsspec URL"
    )
    output: str = Field(min_length=1, description="directory of per-shard outputs, manifests and errors")
    text_field: str | None = Field(
        default=None, alias="textField", description="the row field to embed or prompt with (text; prompt)"
    )
    id_field: str = Field(default="id", alias="idField", description="the row field that keys its output")
    concurrency: int = Field(default=4, ge=1, le=1024, description="generate: requests in flight per shard")
    max_tokens: int = Field(default=128, ge=1, alias="maxTokens", description="generate: tokens per answer")
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

    @field_validator("task", mode="before")
    @classmethod
    def _custom_is_command(cls, value: object) -> object:
        return "command" if value == "custom" else value

    @model_validator(mode="after")
    def _task_needs(self) -> BatchJobSpec:
        if self.task in ("embed", "generate") and not self.model:
            raise ValueError(f"task {self.task!r} needs spec.model (the Model to run)")
        if self.task == "command" and not self.command:
            raise ValueError("task 'command' needs spec.command (the argv each shard runs)")
        return self


class BatchJob(Resource):
    kind_name: ClassVar[str] = "BatchJob"
    plural: ClassVar[str] = "batchjobs"
    short_names: ClassVar[tuple[str, ...]] = ("bj",)

    kind: Literal["BatchJob"] = "BatchJob"
    spec: BatchJobSpec
