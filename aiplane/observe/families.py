"""State turned into metric families at scrape time, the same way for every runtime.

The local plane and the Kubernetes components hand over plain rows (what the
autoscaler decided, what the queues hold, where each job is); these functions name the
series from :mod:`.catalogue`, so both runtimes export the same thing. A value a runtime
does not know is left out, never exported as a made-up zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from aiplane.observe import catalogue as c
from aiplane.policies.scheduling.stats import QueueStats


@dataclass(frozen=True)
class ModelRow:
    model: str
    desired: int
    ready: int
    min: int
    max: int
    metric: str | None = None  # the autoscaling.metric it scales on
    value: float | None = None
    target: float | None = None
    gpus: float | None = None  # held by its replicas


@dataclass(frozen=True)
class JobRow:
    kind: str
    job: str
    queue: str
    phase: str
    pending_s: float | None = None
    gpus: float = 0.0
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    shards_completed: int | None = None
    shards_failed: int | None = None
    shards_total: int | None = None
    rows: int | None = None
    errors: int | None = None


def model_families(rows: Iterable[ModelRow]) -> Iterator[Metric]:
    desired, ready = c.AUTOSCALER_DESIRED.family(), c.AUTOSCALER_READY.family()
    low, high = c.AUTOSCALER_MIN.family(), c.AUTOSCALER_MAX.family()
    value, target, gpus = c.AUTOSCALER_VALUE.family(), c.AUTOSCALER_TARGET.family(), c.MODEL_GPUS.family()
    for r in rows:
        desired.add_metric([r.model], r.desired)
        ready.add_metric([r.model], r.ready)
        low.add_metric([r.model], r.min)
        high.add_metric([r.model], r.max)
        if r.metric and r.value is not None:
            value.add_metric([r.model, r.metric], r.value)
        if r.metric and r.target is not None:
            target.add_metric([r.model, r.metric], r.target)
        if r.gpus is not None:
            gpus.add_metric([r.model], r.gpus)
    yield from (desired, ready, low, high, value, target, gpus)


def job_families(rows: Iterable[JobRow]) -> Iterator[Metric]:
    phase, pending, gpus = c.JOB_PHASE.family(), c.JOB_PENDING.family(), c.JOB_GPUS.family()
    step, total, loss = c.JOB_STEP.family(), c.JOB_TOTAL_STEPS.family(), c.JOB_LOSS.family()
    shards, done, errors = c.JOB_SHARDS.family(), c.JOB_ROWS.family(), c.JOB_ROW_ERRORS.family()
    for r in rows:
        ident = [r.kind, r.job, r.queue]
        phase.add_metric([*ident, r.phase], 1)
        gpus.add_metric(ident, r.gpus)
        if r.pending_s is not None:
            pending.add_metric(ident, r.pending_s)
        for family, got in ((step, r.step), (total, r.total_steps), (loss, r.loss)):
            if got is not None:
                family.add_metric([r.job], got)
        counts = {"completed": r.shards_completed, "failed": r.shards_failed, "total": r.shards_total}
        for state, n in counts.items():
            if n is not None:
                shards.add_metric([r.job, state], n)
        if r.rows is not None:
            done.add_metric([r.job], r.rows)
        if r.errors is not None:
            errors.add_metric([r.job], r.errors)
    yield from (phase, pending, gpus, step, total, loss, shards, done, errors)


def queue_families(stats: QueueStats) -> Iterator[Metric]:
    pending, admitted = c.QUEUE_PENDING.family(), c.QUEUE_ADMITTED.family()
    nominal, used, borrowed = c.QUEUE_NOMINAL.family(), c.QUEUE_USED.family(), c.QUEUE_BORROWED.family()
    gpus = c.CLUSTER_GPUS.family()
    for (queue, reason), n in sorted(stats.pending.items()):
        pending.add_metric([queue, reason], n)
    for queue, n in sorted(stats.admitted.items()):
        admitted.add_metric([queue], n)
    for family, values in ((nominal, stats.nominal), (used, stats.used), (borrowed, stats.borrowed)):
        for (queue, flavor), v in sorted(values.items()):
            family.add_metric([queue, flavor], v)
    for (model, state), v in sorted(stats.gpus.items()):
        gpus.add_metric([model, state], v)
    yield from (pending, admitted, nominal, used, borrowed, gpus)


class StateCollector(Collector):
    """A collector over a callable returning families, read at every scrape."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families()
