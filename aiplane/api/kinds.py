"""The kinds the API knows, by name: one explicit table, no import-time registration."""

from __future__ import annotations

from aiplane.api.jobs import BatchJob, TrainingJob
from aiplane.api.model import Model
from aiplane.api.queue import Queue

AnyResource = Model | TrainingJob | BatchJob | Queue

KINDS: dict[str, type[Model] | type[TrainingJob] | type[BatchJob] | type[Queue]] = {
    "Model": Model,
    "TrainingJob": TrainingJob,
    "BatchJob": BatchJob,
    "Queue": Queue,
}
