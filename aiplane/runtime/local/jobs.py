"""Run local TrainingJobs and BatchJobs: the scheduling cycle's decisions, as processes.

Each controller tick reads the stored jobs, builds a one-node snapshot (this machine's
GPUs, what replicas and running jobs hold), runs the shared scheduling cycle on it
(:func:`cycle.schedule`), and applies its decisions: a job that fits starts; one that
does not stays ``Pending`` with the cycle's reason (stored, shown by ``aiplane get
jobs``, evented when it changes). A job the cycle preempts for a higher-priority one
gets SIGTERM, its ``gracePeriod`` to write a checkpoint, then SIGKILL, and is requeued;
its GPUs stay held until its workers are gone, and the preemptor starts after that.
A gang passed over by smaller jobs for ``reserve_after_s`` reserves the GPUs it needs
(the runner keeps the cycle's reservations from tick to tick, and hands them to the
controller, which places Model replicas in the same cycle: they cannot take them either).

A TrainingJob's workers are one world: ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``,
``MASTER_PORT`` and torchrun's ``PET_*`` variables, as on Kubernetes, where each worker
is a pod. Locally each worker is a process confined by ``CUDA_VISIBLE_DEVICES`` to its
own GPUs, so it is a node of its own too: ``LOCAL_RANK`` is 0 and ``cuda:0`` is its first
GPU. Every run gets ``AIPLANE_CHECKPOINT_DIR`` (docs/jobs.md: the job saves there and
resumes from there) and ``AIPLANE_RESTART``. When every worker exits 0 the job has
Succeeded; when one fails the others are stopped and the whole gang restarts on the same
GPUs, up to ``maxRestarts`` times, then Failed. Rank 0's progress lines
(:mod:`aiplane.progress`) become the status' progress: step, loss, throughput, and the
step a restart resumed from. A scheduled job (``spec.schedule``) runs once per cron fire
(:mod:`.cron`), each run queued on its own; between runs it is ``Scheduled``.

A BatchJob runs its shards through ``parallelism`` slots, each shard retried on its own
up to ``maxRetries``; every shard is ``python -m aiplane run-shard`` (the entrypoint of
a Kubernetes pod, :mod:`aiplane.batch`), which skips shards whose output is already
done. Its progress is the output's manifests plus the running shards' lines.

A plane that stops requeues what ran (``Pending``, to run again from the start, or from
its checkpoint); one that died leaves rows that the next plane finds: it kills the
workers still alive (same pid and argv) and requeues their jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiplane.api import Model, Queue
from aiplane.batch import scan
from aiplane.engines.sources import resolve_local
from aiplane.errors import AiplaneError
from aiplane.policies.scheduling import Gpu
from aiplane.policies.scheduling.stats import QueueStats
from aiplane.runtime.local.cron import due_fire, fire_text, next_fire
from aiplane.runtime.local.cycle import (
    RESERVE_AFTER_S,
    Evict,
    Running,
    Snapshot,
    Start,
    Wait,
    machine_stats,
    queue_specs,
    schedule,
)
from aiplane.runtime.local.gpus import visible_devices_env
from aiplane.runtime.local.job_progress import LogTail, batch_progress
from aiplane.runtime.local.process import alive, cmdline, free_port, kill_group, tail
from aiplane.runtime.local.store import JobStatusRow, Store
from aiplane.runtime.local.workloads import JOB_KINDS, LocalJob, devices_text, local_job

log = logging.getLogger(__name__)
BACKOFF_START, BACKOFF_CAP = 1.0, 10.0
STOP_TIMEOUT = 10.0  # a job's task gets this long (past its workers' grace) to stop them
STOP_GRACE = 5.0  # SIGTERM to SIGKILL when a job is deleted
# A stopping plane gives its jobs their gracePeriod to checkpoint, up to this much (the
# plane's watchdog ends a stop that takes 25 s, and the gateway's drain comes first).
SHUTDOWN_GRACE_CAP = 10.0
EVENT_OF = {
    "placement": "Unschedulable",
    "quota": "Queued",
    "preemption": "Preempting",
    "unsupported": "Unsupported",
}
STOPPING_REASON = "waiting for the workers of its previous run to stop"
PROGRESS_EVERY = 1.0  # a running job's logs (and outputs) are read for progress this often
EventSink = Callable[[str, str, str], None]


@dataclass
class Run:
    """A job this plane started: its slots' devices, and its processes while they run."""

    job: LocalJob
    devices: tuple[tuple[int, ...], ...]
    flavor: str | None
    started: float
    reason: str
    restarts: int = 0
    grace: float = STOP_GRACE  # SIGTERM to SIGKILL once it is told to stop (gracePeriod if preempted)
    procs: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    outcome: tuple[str, str] | None = None  # (Succeeded | Failed, reason) once it ended
    scheduled: float | None = None  # the cron fire this run is (scheduled TrainingJobs)
    progress: dict[str, Any] = field(default_factory=dict)  # merged progress lines (rank 0)
    tails: dict[int, LogTail] = field(default_factory=dict)  # slot -> its log, read since its start
    shard_lines: dict[int, dict[str, Any]] = field(default_factory=dict)  # shard -> its last line
    progress_read: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.returncode is None]


class WorkerFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobRunner:
    def __init__(
        self,
        store: Store,
        gpus: list[Gpu],
        logs: Path,
        event: EventSink,
        host: str = "127.0.0.1",
        reserve_after_s: float = RESERVE_AFTER_S,
        checkpoints: Path | None = None,
    ) -> None:
        self.store, self.gpus, self.logs, self.host = store, gpus, logs, host
        self.checkpoints = checkpoints or logs.parent / "checkpoints"
        self.gateway_url: str | None = None  # the plane's /v1, for embed and generate shards
        self.api_key: str | None = None
        self._event = event
        self.reserve_after_s = reserve_after_s
        self.runs: dict[str, Run] = {}
        self.reservations: dict[str, tuple[int, ...]] = {}  # job key -> fleet nodes held for it
        self.preempting: dict[str, list[str]] = {}  # preemptor -> its victims still stopping
        self._snapshot: Snapshot | None = None  # the last cycle's, for placing replicas
        self._held: Mapping[int, float] = {}  # what Model replicas held at the last tick
        self._waiting: dict[str, tuple[str, str]] = {}  # pending job key -> (queue, cause), this tick
        self._requeued: dict[str, float] = {}  # job key -> when it was preempted (waits since then)
        self._stopping: dict[int, Run] = {}  # by id(): stopped runs whose workers may still live
        self._background: set[asyncio.Task[None]] = set()  # stops running in the background
        self._closing = False
        self._fires: dict[str, float] = {}  # scheduled job key -> the cron fire its pending run is for
        self.wall_clock: Callable[[], float] = time.time  # cron reads this clock (tests move it)

    async def __aenter__(self) -> JobRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        await self.stop_all()

    # -- what the jobs hold ------------------------------------------------------------
    def _running(self) -> tuple[Running, ...]:
        """What the jobs hold: every run, and the stopped ones whose workers may still live."""
        running = [Running(r.job, r.devices, r.flavor) for r in self.runs.values()]
        running += [Running(r.job, r.devices, r.flavor, stopping=True) for r in self._stopping.values()]
        return tuple(running)

    def snapshot_for_replicas(self, models_held: Mapping[int, float]) -> Snapshot:
        """This machine for placing a Model replica (:func:`cycle.place_replica`): what jobs
        hold now, and the reservations, pending jobs and Queues of the last cycle."""
        last = self._snapshot
        return Snapshot(
            tuple(self.gpus),
            models_held,
            last.pending if last else (),
            self._running(),
            last.queues if last else None,
            now=last.now if last else 0.0,
            waiting=last.waiting if last else {},
            reservations=dict(self.reservations),
            preempting={k: list(v) for k, v in self.preempting.items()},
            reserve_after_s=self.reserve_after_s,
        )

    def queue_stats(self) -> QueueStats:
        """Quota use, GPUs by state and pending jobs by queue and cause, as of the last tick."""
        pending: dict[tuple[str, str], int] = {}
        for queue_cause in self._waiting.values():
            pending[queue_cause] = pending.get(queue_cause, 0) + 1
        snapshot = self.snapshot_for_replicas(self._held)
        queues = [q.resource for q in self.store.resources("Queue") if isinstance(q.resource, Queue)]
        return machine_stats(replace(snapshot, queues=queue_specs(queues)), pending)

    def pids(self) -> list[int]:
        """Process groups of every worker still running: what a hard stop must kill."""
        return [
            pid for run in [*list(self.runs.values()), *list(self._stopping.values())] for pid in run.pids
        ]

    # -- start and stop ------------------------------------------------------------------
    async def recover(self) -> None:
        """Requeue the jobs a previous plane ran; kill its workers that are still alive."""
        for row in self.store.job_statuses().values():
            if row.phase != "Running":
                continue
            for pid in row.pids:
                if alive(pid) and cmdline(pid) == row.argv:
                    await kill_group(pid)
            reason = "requeued: the plane stopped while it ran"
            self._write(
                row.kind, row.name, row.generation, "Pending", reason, restarts=row.restarts,
                progress=row.progress, scheduled=row.scheduled,
            )  # fmt: skip
            self._event(f"{row.kind}/{row.name}", "Requeued", reason)

    async def stop_all(self) -> None:
        """Stop every job (the plane is stopping), each with its grace to checkpoint; requeue it."""
        runs = list(self.runs.values())
        self.runs.clear()
        for run in runs:
            run.grace = min(run.job.preemption_grace_s, SHUTDOWN_GRACE_CAP)
        await asyncio.gather(*(self._stop(run) for run in runs), *self._background, return_exceptions=True)
        for run in runs:
            job = run.job
            if run.outcome is None:
                self._write(
                    job.kind,
                    job.name,
                    job.generation,
                    "Pending",
                    "requeued: the plane stopped",
                    restarts=run.restarts,
                    progress=run.progress,
                    scheduled=run.scheduled,
                )
            else:
                self._finish(run)

    async def _stop(self, run: Run) -> None:
        self._stopping[id(run)] = run
        try:
            if run.task is not None and not run.task.done():
                run.task.cancel()  # its workers get SIGTERM, then SIGKILL after run.grace
                _, pending = await asyncio.wait({run.task}, timeout=run.grace + STOP_TIMEOUT)
                if pending:
                    log.warning("job %s: task did not stop in %gs", run.job.key, run.grace + STOP_TIMEOUT)
            for pid in run.pids:
                await kill_group(pid, run.grace)
        finally:
            self._stopping.pop(id(run), None)

    def _stop_soon(self, run: Run) -> None:
        """Stop in the background; its GPUs stay held until its workers are gone."""
        self._stopping[id(run)] = run  # held from now, not from the task's first step
        task = asyncio.create_task(self._stop(run), name=f"stop-{run.job.key}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the tick ------------------------------------------------------------------------
    async def reconcile(self, now: float, models_held: Mapping[int, float]) -> None:
        statuses = self.store.job_statuses()
        self._held, self._waiting = models_held, {}
        jobs: dict[str, LocalJob] = {}
        for kind in JOB_KINDS:
            for item in self.store.resources(kind):
                row = statuses.get((kind, item.resource.name))
                phase = row.phase if row and row.generation == item.generation else None
                job = local_job(item.resource, item.generation, item.created, phase)
                jobs[job.key] = job
        for key, run in list(self.runs.items()):
            wanted = jobs.get(key)
            if wanted is None or wanted.generation != run.job.generation:
                del self.runs[key]
                if wanted is not None:  # changed: the next run resumes from what this one saves
                    run.grace = min(run.job.preemption_grace_s, SHUTDOWN_GRACE_CAP)
                self._stop_soon(run)
                why = "deleted" if wanted is None else "its spec changed; it runs again with the new one"
                self._event(key, "Stopped", f"{why}: workers stopped")
            elif run.outcome is not None:
                del self.runs[key]
                self._finish(run)  # a scheduled job's next fire is looked at from the next tick
                jobs[key] = local_job_finished(run.job)
            elif time.monotonic() - run.progress_read >= PROGRESS_EVERY:
                run.progress_read = time.monotonic()  # logs and manifests read once a second, not per tick
                if self._refresh_progress(run):
                    self._write_running(run)
        stopping = {run.job.key for run in self._stopping.values()}
        # a preemptor is told of its victims while they stop, and for one cycle after: in
        # that one it has the first turn at the room they left (cycle.schedule)
        preempting = self.preempting
        self.preempting = {
            by: left for by, victims in preempting.items() if (left := [v for v in victims if v in stopping])
        }
        for key in set(self._requeued) - jobs.keys():
            del self._requeued[key]

        def restarts_of(job: LocalJob) -> tuple[JobStatusRow | None, int]:
            row = statuses.get((job.kind, job.name))
            return row, row.restarts if row and row.generation == job.generation else 0

        pending: list[LocalJob] = []
        for key, job in jobs.items():
            if key in self.runs or job.finished:
                continue
            if job.schedule and not self._fire_due(job, statuses.get((job.kind, job.name))):
                continue
            if key in stopping:  # its last run's workers still hold its GPUs: not a candidate yet
                row, restarts = restarts_of(job)
                if not (row and row.generation == job.generation and row.phase == "Pending"):
                    self._wait(job, Wait(key, STOPPING_REASON, "placement"), row, restarts)
                continue
            pending.append(job)
        if not pending or self._closing:
            self.reservations, self._snapshot = {}, None
            return
        queues = [q.resource for q in self.store.resources("Queue") if isinstance(q.resource, Queue)]
        snapshot = Snapshot(
            tuple(self.gpus),
            models_held,
            tuple(pending),
            self._running(),
            queue_specs(queues),
            now=now,
            waiting={k: max(0.0, now - t) for k, t in self._requeued.items()},
            reservations=self.reservations,
            preempting=preempting,
            reserve_after_s=self.reserve_after_s,
        )
        result = schedule(snapshot)
        self.reservations, self._snapshot = result.reservations, snapshot
        for evict in result.evictions:
            victim = self.runs.get(evict.key)
            if victim is not None:
                self._preempt(victim, evict, now)
        for decision in result.decisions:
            job = jobs[decision.key]
            row, restarts = restarts_of(job)
            if isinstance(decision, Start):
                self._requeued.pop(job.key, None)
                self._start(job, decision, now, restarts)
            else:
                self._wait(job, decision, row, restarts)

    def _preempt(self, run: Run, evict: Evict, now: float) -> None:
        """Stop a victim with its grace (SIGTERM, ``gracePeriod``, SIGKILL) and requeue it."""
        job = run.job
        del self.runs[job.key]
        run.grace = job.preemption_grace_s
        self._stop_soon(run)  # its GPUs stay held, for the cycle, until its workers are gone
        self.preempting.setdefault(evict.by, []).append(job.key)
        self._requeued[job.key] = now
        reason = f"requeued: {evict.reason}"
        self._write(
            job.kind, job.name, job.generation, "Pending", reason, restarts=run.restarts,
            progress=run.progress, scheduled=run.scheduled,
        )  # fmt: skip
        self._event(job.key, "Preempted", f"{reason}; workers get SIGTERM and {run.grace:g}s to stop")

    def _wait(self, job: LocalJob, decision: Wait, row: JobStatusRow | None, restarts: int) -> None:
        cause = "reserved" if job.key in self.reservations else decision.cause
        self._waiting[job.key] = (job.queue, cause)
        current = row is not None and row.generation == job.generation
        if current and row is not None and row.phase == "Pending" and row.reason == decision.reason:
            return  # written and evented once per change, not every tick
        kept = row if current else None
        self._write(
            job.kind, job.name, job.generation, "Pending", decision.reason, restarts=restarts,
            progress=kept.progress if kept else None, scheduled=self._fires.get(job.key),
        )  # fmt: skip
        self._event(job.key, EVENT_OF[decision.cause], decision.reason)

    def _start(self, job: LocalJob, decision: Start, now: float, restarts: int) -> None:
        run = Run(job, decision.devices, decision.flavor, now, decision.reason, restarts=restarts)
        run.scheduled = self._fires.pop(job.key, None)
        self.runs[job.key] = run
        self._write_running(run)
        self._event(job.key, "Started", f"devices {devices_text(decision.devices)} ({decision.reason})")
        run.task = asyncio.create_task(self._execute(run), name=f"job-{job.key}")

    def _finish(self, run: Run) -> None:
        assert run.outcome is not None
        phase, reason = run.outcome
        job = run.job
        self._refresh_progress(run)
        shown, why = phase, reason
        if job.schedule and run.scheduled is not None:  # the job waits for its next fire
            at = fire_text(next_fire(job.schedule, max(run.scheduled, self.wall_clock())))
            shown, why = "Scheduled", f"last run {phase}: {reason}; next run at {at}"
        self._write(
            job.kind, job.name, job.generation, shown, why, flavor=run.flavor, devices=run.devices,
            restarts=run.restarts, started=run.started, finished=time.time(), progress=run.progress,
            scheduled=run.scheduled,
        )  # fmt: skip
        self._event(job.key, phase, reason)

    # -- cron and progress ----------------------------------------------------------------
    def _fire_due(self, job: LocalJob, row: JobStatusRow | None) -> bool:
        """Whether a scheduled job has a run to queue now (and note which fire it is)."""
        assert job.schedule
        if job.key in self._fires:
            return True  # a fire already queued, waiting for its turn
        current = row if row is not None and row.generation == job.generation else None
        if current is not None and current.phase == "Pending" and current.scheduled is not None:
            self._fires[job.key] = current.scheduled  # requeued (preempted, or the plane stopped)
            return True
        last = current.scheduled if current and current.scheduled is not None else job.created
        fire = due_fire(job.schedule, last, self.wall_clock())
        if fire is not None:
            self._fires[job.key] = fire
            return True
        if current is None:  # new (or changed): say when it first runs; a run's end says the next
            at = fire_text(next_fire(job.schedule, max(last, self.wall_clock())))
            self._write(job.kind, job.name, job.generation, "Scheduled", f"next run at {at}")
        return False

    def _refresh_progress(self, run: Run) -> bool:
        """Read what the run's logs gained; True when its progress changed."""
        before = dict(run.progress)
        if run.job.gang:
            if (tail0 := run.tails.get(0)) is not None:
                for fields in tail0.read():
                    run.progress.update(fields)
        else:
            for slot_tail in run.tails.values():
                for fields in slot_tail.read():
                    if isinstance(shard := fields.get("shard"), int):
                        run.shard_lines[shard] = fields
            run.progress = self._batch_progress(run)
        return run.progress != before

    def _batch_progress(self, run: Run) -> dict[str, Any]:
        job = run.job
        if job.output is None or job.task is None:
            return {}
        state = scan(job.output, job.tasks)
        return batch_progress(job.tasks, state.done, state.rows, state.errors, run.shard_lines)

    # -- status rows ----------------------------------------------------------------------
    def _write(
        self,
        kind: str,
        name: str,
        generation: int,
        phase: str,
        reason: str,
        *,
        flavor: str | None = None,
        devices: tuple[tuple[int, ...], ...] = (),
        pids: list[int] | None = None,
        argv: list[str] | None = None,
        restarts: int = 0,
        started: float | None = None,
        finished: float | None = None,
        progress: Mapping[str, Any] | None = None,
        scheduled: float | None = None,
    ) -> None:
        self.store.set_job_status(
            JobStatusRow(
                kind, name, generation, phase, reason, flavor, [list(d) for d in devices], pids or [],
                argv or [], restarts, started, finished, time.time(), dict(progress or {}), scheduled,
            )
        )  # fmt: skip

    def _write_running(self, run: Run) -> None:
        if self.runs.get(run.job.key) is not run:
            return  # stopped meanwhile: its status is no longer this run's
        job = run.job
        self._write(
            job.kind, job.name, job.generation, "Running", run.reason, flavor=run.flavor, devices=run.devices,
            pids=run.pids, argv=list(job.command), restarts=run.restarts, started=run.started,
            progress=run.progress, scheduled=run.scheduled,
        )  # fmt: skip

    # -- processes ------------------------------------------------------------------------
    async def _execute(self, run: Run) -> None:
        deadline = run.job.deadline_s
        try:
            async with asyncio.timeout(deadline):
                run.outcome = await (self._gang(run) if run.job.gang else self._shards(run))
        except TimeoutError:
            run.outcome = ("Failed", f"DeadlineExceeded: ran longer than activeDeadline ({deadline:g}s)")
        except WorkerFailed as exc:
            run.outcome = ("Failed", exc.message)
        except Exception as exc:  # a bug: say so in the job's status instead of hanging it
            log.exception("job %s: supervision failed", run.job.key)
            run.outcome = ("Failed", f"supervision failed: {exc.__class__.__name__}: {exc}")

    def _log_path(self, job: LocalJob, slot: int) -> Path:
        return self.logs / f"{job.kind.lower()}-{job.name}" / f"{'worker' if job.gang else 'slot'}-{slot}.log"

    async def _spawn(
        self, run: Run, slot: int, env: Mapping[str, str], what: str
    ) -> asyncio.subprocess.Process:
        job = run.job
        path = self._log_path(job, slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        full = os.environ | dict(env) | self._job_env(run) | dict(job.env)
        full |= visible_devices_env(run.devices[slot])
        with path.open("ab") as logf:
            logf.write(f"--- aiplane: starting {job.key} {what}: {json.dumps(list(job.command))}\n".encode())
            logf.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *job.command, stdin=asyncio.subprocess.DEVNULL, stdout=logf,
                    stderr=asyncio.subprocess.STDOUT, env=full, preexec_fn=os.setpgrp,
                )  # fmt: skip
            except OSError as exc:
                raise WorkerFailed(f"cannot start {job.command[0]!r}: {exc.strerror}") from exc
        run.procs[slot] = proc
        self._write_running(run)
        return proc

    def _job_env(self, run: Run) -> dict[str, str]:
        """What only this plane knows: the checkpoint directory, the gateway, the Model's file.

        ``PATH`` starts with this plane's interpreter's directory, so a job's ``python``,
        ``torchrun`` or ``aiplane`` is the environment aiplane runs in, as the image's
        would be in a pod.
        """
        job = run.job
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
        if job.gang:
            directory = self.checkpoint_dir(job)
            directory.mkdir(parents=True, exist_ok=True)
            return {
                "PATH": path,
                "AIPLANE_CHECKPOINT_DIR": str(directory),
                "AIPLANE_CHECKPOINT_RESUME": str(job.resume).lower(),
                "AIPLANE_RESTART": str(run.restarts),
            }
        env: dict[str, str] = {"PATH": path, "PYTHONUNBUFFERED": "1"}
        if job.task not in ("embed", "generate") or job.model is None:
            return env
        if job.task == "embed" and (onnx := self._local_embeddings(job.model)) is not None:
            # embedded in-process, as the engine does; the cores shared by the parallel shards
            # (onnxruntime would give each shard a thread per core: 0.76x instead of 0.97x of
            # one plain loop with 2 shards on 2 cores, bench/batch_embed.py)
            threads = max(1, (os.cpu_count() or 1) // job.slots)
            return env | {"AIPLANE_MODEL_PATH": str(onnx), "AIPLANE_THREADS": str(threads)}
        if self.gateway_url:
            env["AIPLANE_MODEL_URL"] = self.gateway_url
        if self.api_key:
            env["AIPLANE_API_KEY"] = self.api_key
        return env

    def checkpoint_dir(self, job: LocalJob) -> Path:
        """``spec.checkpoint.path`` when absolute; else under ``AIPLANE_HOME/checkpoints/<job>``."""
        if job.checkpoint and Path(job.checkpoint).is_absolute():
            return Path(job.checkpoint)
        return self.checkpoints / job.name / (job.checkpoint or "")

    def _local_embeddings(self, model: str) -> Path | None:
        """The ONNX file of a stored ``embeddings`` Model, which a shard can run itself."""
        stored = next((r.resource for r in self.store.resources("Model") if r.resource.name == model), None)
        if not isinstance(stored, Model) or stored.spec.engine != "embeddings":
            return None
        try:
            return resolve_local(stored.spec.source)
        except AiplaneError:
            return None  # not a local file: the shard goes through the gateway

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE) -> None:
        if proc.returncode is None:
            await kill_group(proc.pid, grace)
            await proc.wait()

    def _world(self, run: Run, rank: int, port: int) -> dict[str, str]:
        job, n = run.job, str(run.job.slots)
        master = self.host
        nproc = str(max(1, int(job.gpus_per_slot)))
        return {
            "WORLD_SIZE": n, "RANK": str(rank), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "NODE_RANK": str(rank), "NNODES": n, "MASTER_ADDR": master, "MASTER_PORT": str(port),
            "PET_MASTER_ADDR": master, "PET_MASTER_PORT": str(port), "PET_NNODES": n,
            "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": nproc,
            "AIPLANE_JOB": job.name, "AIPLANE_QUEUE": job.queue,
        }  # fmt: skip

    async def _gang(self, run: Run) -> tuple[str, str]:
        """All workers together; one failing stops the rest and restarts the gang."""
        job, backoff = run.job, BACKOFF_START
        while True:
            port = free_port(self.host)
            procs: list[asyncio.subprocess.Process] = []
            run.tails = {0: LogTail(self._log_path(job, 0))}  # rank 0 reports the job's progress
            try:
                for rank in range(job.slots):
                    procs.append(await self._spawn(run, rank, self._world(run, rank, port), f"worker {rank}"))
                failure = await _first_failure(procs)
            finally:
                await asyncio.gather(*(self._reap(p, run.grace) for p in procs))
            if failure is None:
                return "Succeeded", f"{job.slots} worker(s) exited 0"
            rank, code = failure
            message = f"worker {rank} exited with code {code}"
            if detail := tail(self._log_path(job, rank), 3):
                message += f": {detail}"
            if run.restarts >= job.max_restarts:
                return "Failed", f"{message} (maxRestarts {job.max_restarts} reached)"
            run.restarts += 1
            self._write_running(run)
            self._event(
                job.key, "Restarting", f"{message}; restart {run.restarts}/{job.max_restarts} in {backoff:g}s"
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _shards(self, run: Run) -> tuple[str, str]:
        """Shards through the slots, each retried on its own; one failing for good ends the job."""
        job = run.job
        todo = list(range(job.tasks))

        async def slot_loop(slot: int) -> None:
            run.tails[slot] = LogTail(self._log_path(job, slot))
            while todo:
                shard, tries, backoff = todo.pop(0), 0, BACKOFF_START
                while True:
                    env = {"AIPLANE_SHARD": str(shard)}
                    proc = await self._spawn(run, slot, env, f"shard {shard} (slot {slot})")
                    try:
                        code = await proc.wait()
                    finally:
                        await self._reap(proc, run.grace)
                    if code == 0:
                        break
                    message = f"shard {shard} exited with code {code}"
                    if tries >= job.max_restarts:
                        raise WorkerFailed(f"{message} (maxRetries {job.max_restarts} reached)")
                    tries += 1
                    run.restarts += 1
                    self._event(job.key, "Retrying", f"{message}; retry {tries}/{job.max_restarts}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP)

        tasks = [asyncio.create_task(slot_loop(s)) for s in range(job.slots)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return "Succeeded", f"{job.tasks} shard(s) exited 0"


async def _first_failure(procs: list[asyncio.subprocess.Process]) -> tuple[int, int] | None:
    """(rank, exit code) of the first worker to fail, or None once all exited 0."""
    waits = {asyncio.create_task(p.wait()): rank for rank, p in enumerate(procs)}
    pending = set(waits)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=waits.__getitem__):
                if (code := task.result()) != 0:
                    return waits[task], code
        return None
    finally:
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)


def local_job_finished(job: LocalJob) -> LocalJob:
    """The same job, known finished (its terminal status was just written)."""
    return replace(job, finished=True)
