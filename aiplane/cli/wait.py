"""``aiplane wait job/NAME``: follow a local job to its end, with a progress bar.

The bar reads what ``aiplane get jobs`` reads (the job's status in SQLite, written by
the plane), every half second: a BatchJob's rows (good and bad) out of its input's
rows, a TrainingJob's steps out of ``total_steps``, with the rate and the time left
that rich computes from them. The exit code says how the job ended, so scripts can
``aiplane wait bj/embed && next-step``: 0 Succeeded, 1 Failed, 2 still running at
``--timeout``. A scheduled TrainingJob ends its wait when the run under way (or the
next one) ends.
"""

from __future__ import annotations

import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from aiplane.api import BatchJob, TrainingJob
from aiplane.cli.output import console
from aiplane.errors import AiplaneError, NotFoundError
from aiplane.runtime.local.paths import aiplane_home, db_path
from aiplane.runtime.local.store import JobStatusRow, Store
from aiplane.runtime.local.workloads import JOB_TARGETS

POLL_S = 0.5
EXIT_TIMEOUT = 2


class RateColumn(ProgressColumn):
    """``120 rows/s``: rich's own speed estimate, in the job's unit."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        return Text(f"{speed:.0f} {unit}/s" if speed else "", style="progress.data.speed")


def _input_rows(job: BatchJob) -> int | None:
    """The input's rows, when this process can read it (relative paths are the plane's)."""
    try:
        from aiplane.batch.inputs import open_input

        return open_input(job.spec.input).count()
    except (AiplaneError, ImportError, OSError):
        return None


def _done_and_total(resource: Any, row: JobStatusRow | None, rows: int | None) -> tuple[float, float | None]:
    fields = row.progress if row else {}
    if isinstance(resource, TrainingJob):
        total = fields.get("total_steps")
        return float(fields.get("step") or 0), float(total) if total else None
    processed = int(fields.get("rows") or 0) + int(fields.get("errors") or 0)
    return float(processed), float(rows) if rows is not None else None


def wait_job(target: str, timeout: float | None) -> int:
    prefix, slash, name = target.partition("/")
    kinds = JOB_TARGETS.get(prefix.lower()) if slash else None
    if kinds is None or not name:
        raise AiplaneError(f"wait needs job/NAME, trainingjob/NAME or batchjob/NAME (got {target!r})")
    store = Store(db_path(aiplane_home()))
    found = [(k, s) for k in kinds for s in store.resources(k) if s.resource.name == name]
    if not found:
        raise NotFoundError(f"no {' or '.join(kinds)} named {name!r}")
    kind, stored = found[0]
    resource = stored.resource
    rows = _input_rows(resource) if isinstance(resource, BatchJob) else None
    unit = "steps" if kind == "TrainingJob" else "rows"
    deadline = time.monotonic() + timeout if timeout else None
    first_fire: float | None = None  # a scheduled job's last fire when the wait began
    saw_run = False
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[phase]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"{kind}/{name}", total=None, phase="", unit=unit)
        while True:
            row = store.job_statuses().get((kind, name))
            current = row if row is not None and row.generation == stored.generation else None
            done, total = _done_and_total(resource, current, rows)
            phase = current.phase if current else "Pending"
            bar.update(task, completed=done, total=total, phase=phase)
            if current is not None and first_fire is None:
                first_fire = current.scheduled
            saw_run = saw_run or phase == "Running"
            if phase in ("Succeeded", "Failed"):
                bar.update(task, phase=f"{phase}: {current.reason if current else ''}"[:80])
                return 0 if phase == "Succeeded" else 1
            if (
                current is not None
                and phase == "Scheduled"
                and current.reason.startswith("last run ")
                and (saw_run or current.scheduled != first_fire)
            ):  # a scheduled job: the run this wait saw (or a later one) ended
                bar.update(task, phase=current.reason[:80])
                return 0 if current.reason.startswith("last run Succeeded") else 1
            if deadline is not None and time.monotonic() > deadline:
                bar.update(task, phase=f"{phase} (timed out)")
                return EXIT_TIMEOUT
            time.sleep(POLL_S)
