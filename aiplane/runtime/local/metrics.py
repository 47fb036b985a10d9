"""The local plane's own metrics, read from its state at scrape time: what the
autoscaler decided per model, each job's phase and progress, the queues and GPUs as the
job runner's cycle sees them. Registered on the gateway's registry, so the plane's one
``/metrics`` serves everything a dashboard asks of it."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import Metric

from aiplane.api import BatchJob, TrainingJob
from aiplane.observe.families import JobRow, job_families, model_families, queue_families
from aiplane.runtime.local.controller import LocalController
from aiplane.runtime.local.store import JobStatusRow
from aiplane.runtime.local.workloads import JOB_KINDS


def _job_row(
    kind: str, name: str, queue: str, row: JobStatusRow | None, created: float, gpus: float
) -> JobRow:
    now = time.time()
    phase = row.phase if row else "Pending"
    pending = None
    if phase == "Pending":
        pending = max(0.0, now - (row.updated if row and row.started else created))
    progress = row.progress if row else {}

    def number(key: str) -> float | None:
        value = progress.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def count(key: str) -> int | None:
        value = number(key)
        return None if value is None else int(value)

    if kind == "BatchJob":
        return JobRow(
            kind, name, queue, phase, pending, gpus,
            shards_completed=count("completed"), shards_total=count("shards"),
            rows=count("rows"), errors=count("errors"),
        )  # fmt: skip
    return JobRow(
        kind, name, queue, phase, pending, gpus,
        step=count("step"), total_steps=count("total_steps"), loss=number("loss"),
    )  # fmt: skip


def job_rows(controller: LocalController) -> list[JobRow]:
    statuses = controller.store.job_statuses()
    runs = controller.jobs.runs
    rows = []
    for kind in JOB_KINDS:
        for item in controller.store.resources(kind):
            job = item.resource
            assert isinstance(job, TrainingJob | BatchJob)
            run = runs.get(f"{kind}/{job.name}")
            gpus = run.job.gpus_per_slot * len(run.devices) if run is not None else 0.0
            row = statuses.get((kind, job.name))
            rows.append(_job_row(kind, job.name, job.spec.queue, row, item.created, gpus))
    return rows


def plane_families(controller: LocalController) -> Iterator[Metric]:
    yield from model_families(list(controller.model_rows.values()))
    yield from job_families(job_rows(controller))
    yield from queue_families(controller.jobs.queue_stats())
