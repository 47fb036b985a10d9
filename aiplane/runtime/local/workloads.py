"""Stored TrainingJobs and BatchJobs as the local runtime sees them: one ``Workload``.

The scheduling core asks every kind the same questions (``Workload`` in
:mod:`aiplane.policies.scheduling.workload`: key, queue, priority, age, gang size,
demand, finished). :class:`LocalJob` answers them, plus what the local runner needs
to start the processes: how many run at once (*slots*: a TrainingJob's workers, all
ranks of one world; a BatchJob's parallel shards), the command and its environment.
One adapter per kind builds it (``ADAPTERS``); nothing else looks at the kind.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from aiplane.api import BatchJob, TrainingJob, parse_duration
from aiplane.api.meta import Resource
from aiplane.policies.scheduling.fleet import MILLI, PodShape
from aiplane.policies.scheduling.workload import Demand
from aiplane.runtime.job_env import RUNNER_ARGV, shard_env

TERMINAL = ("Succeeded", "Failed")
#: Every local shard runs the shard runner (``aiplane run-shard``, as a Kubernetes pod
#: does), with the interpreter of this plane: a task ``command`` is run by it in turn.
SHARD_RUNNER = (sys.executable, "-m", "aiplane", *RUNNER_ARGV[1:])
JOB_KINDS = ("TrainingJob", "BatchJob")
#: ``KIND/NAME`` prefixes the CLI takes for jobs (``aiplane logs job/x``, ``aiplane wait bj/x``).
JOB_TARGETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "job": JOB_KINDS,
        "jobs": JOB_KINDS,
        "trainingjob": ("TrainingJob",),
        "tj": ("TrainingJob",),
        "batchjob": ("BatchJob",),
        "bj": ("BatchJob",),
    }
)


@dataclass(frozen=True)
class LocalJob:
    """A job to run on this machine; implements the scheduling core's ``Workload``.

    ``gang`` jobs (TrainingJob) start all ``slots`` processes together as one world
    and restart together; non-gang jobs (BatchJob) run ``tasks`` shards through their
    ``slots``, each shard on its own and retried on its own.
    """

    kind: str
    name: str
    generation: int
    created: float
    queue: str
    priority: int
    slots: int
    gpus_per_slot: float
    gpu_model: str | None
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    tasks: int = 1
    gang: bool = True
    max_restarts: int = 0
    deadline_s: float | None = None
    unsupported: str | None = None  # why this machine cannot run it (said once, as its reason)
    finished: bool = False
    suspended: bool = False
    preemption_grace_s: float = 120.0  # spec.gracePeriod: SIGTERM, then this long before SIGKILL
    schedule: str | None = None  # cron: each fire is a run of its own (TrainingJob)
    checkpoint: str | None = None  # spec.checkpoint.path (TrainingJob); the runner resolves it
    resume: bool = True
    model: str | None = None  # the Model an embed or generate BatchJob runs
    task: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def gang_size(self) -> int:
        return self.slots

    @property
    def demand(self) -> Demand:
        return Demand(gpu=self.slots * self.gpus_per_slot, gpu_model=self.gpu_model)

    def pods(self) -> tuple[PodShape, ...]:
        """One pod shape per slot: whole GPUs, or a share of one (0.5 -> 500 milli)."""
        need = self.gpus_per_slot
        if need <= 0:
            shape = PodShape(name=self.key)
        elif need < 1:
            shape = PodShape(self.key, gpus=1, gpu_milli=round(need * MILLI), gpu_spec=self.gpu_model or "")
        else:
            shape = PodShape(self.key, gpus=math.ceil(need), gpu_milli=MILLI, gpu_spec=self.gpu_model or "")
        return tuple(
            PodShape(f"{self.key}-{i}", 0, 0, shape.gpus, shape.gpu_milli, shape.gpu_spec)
            for i in range(self.slots)
        )


def _deadline(value: str | None) -> float | None:
    return parse_duration(value) if value else None


def _training(job: Resource, generation: int, created: float, finished: bool) -> LocalJob:
    assert isinstance(job, TrainingJob)
    spec = job.spec
    ckpt = spec.checkpoint
    return LocalJob(
        "TrainingJob", job.name, generation, created, spec.queue, spec.priority,
        slots=spec.workers, gpus_per_slot=spec.gpus_per_worker, gpu_model=spec.gpu_model,
        command=tuple(spec.command), env=spec.env, tasks=spec.workers, gang=True,
        max_restarts=spec.max_restarts, deadline_s=_deadline(spec.active_deadline),
        finished=finished, preemption_grace_s=parse_duration(spec.grace_period), schedule=spec.schedule,
        checkpoint=ckpt.path if ckpt else None, resume=ckpt.resume if ckpt else True,
    )  # fmt: skip


def _batch(job: Resource, generation: int, created: float, finished: bool) -> LocalJob:
    assert isinstance(job, BatchJob)
    spec = job.spec
    return LocalJob(
        "BatchJob", job.name, generation, created, spec.queue, spec.priority,
        slots=min(spec.parallelism, spec.shards), gpus_per_slot=spec.gpus_per_shard, gpu_model=None,
        command=SHARD_RUNNER, env=shard_env(job), tasks=spec.shards, gang=False,
        max_restarts=spec.max_retries, finished=finished, model=spec.model, task=spec.task,
        output=spec.output, preemption_grace_s=parse_duration(spec.grace_period),
    )  # fmt: skip


Adapter = Callable[[Resource, int, float, bool], LocalJob]
ADAPTERS: Mapping[str, Adapter] = MappingProxyType({"TrainingJob": _training, "BatchJob": _batch})


def local_job(resource: Resource, generation: int, created: float, phase: str | None = None) -> LocalJob:
    """The ``LocalJob`` of a stored job resource (``phase`` from its status, if any)."""
    adapter = ADAPTERS.get(resource.kind)
    if adapter is None:
        raise ValueError(f"{resource.kind} is not a job kind (known: {', '.join(ADAPTERS)})")
    return adapter(resource, generation, created, phase in TERMINAL)


def devices_text(devices: Sequence[Sequence[int]]) -> str:
    """``0,1`` for one worker, ``0; 1`` for two, ``-`` when none holds a GPU."""
    if not any(devices):
        return "-"
    return "; ".join(",".join(map(str, d)) or "-" for d in devices)
