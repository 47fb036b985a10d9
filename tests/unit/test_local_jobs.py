"""Local jobs: the pure one-node cycle, the Workload adapters, job status in SQLite, and
the runner with real (tiny) processes on a fake GPU inventory.

The GPUs here are ``Gpu`` values a test writes down (``fake-H100``), standing in for
what NVML would report; everything else is the real code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aiplane.api import BatchJob, Queue, TrainingJob
from aiplane.policies.scheduling import Gpu
from aiplane.policies.scheduling.outcome import Mode
from aiplane.policies.scheduling.quota import QueueSpec, Usage, admit
from aiplane.runtime.job_env import shard_env
from aiplane.runtime.local import cycle
from aiplane.runtime.local.cycle import Evict, Running, Snapshot, Start, Wait, queue_specs
from aiplane.runtime.local.jobs import STOPPING_REASON, JobRunner
from aiplane.runtime.local.store import JobStatusRow, Store
from aiplane.runtime.local.workloads import LocalJob, local_job

H100S = tuple(Gpu(i, "fake-H100") for i in range(2))


def training(name: str, workers: int = 1, gpus: float = 2, **spec: Any) -> TrainingJob:
    body = {"command": ["true"], "workers": workers, "gpusPerWorker": gpus, **spec}
    return TrainingJob.model_validate({"kind": "TrainingJob", "metadata": {"name": name}, "spec": body})


def job(name: str, workers: int = 1, gpus: float = 2, created: float = 0.0, **spec: Any) -> LocalJob:
    return local_job(training(name, workers, gpus, **spec), 1, created)


def schedule(snapshot: Snapshot) -> list[Start | Wait]:
    """The decisions of one cycle (it picks no victims in these tests)."""
    result = cycle.schedule(snapshot)
    assert result.evictions == []
    return result.decisions


def by_key(decisions: list[Start | Wait]) -> dict[str, Start | Wait]:
    return {d.key: d for d in decisions}


# -- the cycle ----------------------------------------------------------------------
def test_two_jobs_wanting_more_gpus_than_there_are_one_starts_one_waits() -> None:
    first, second = job("a", created=1.0), job("b", created=2.0)
    out = by_key(schedule(Snapshot(H100S, pending=(second, first))))
    assert out["TrainingJob/a"] == Start("TrainingJob/a", ((0, 1),), None, out["TrainingJob/a"].reason)
    wait = out["TrainingJob/b"]
    assert isinstance(wait, Wait) and wait.cause == "placement"
    assert wait.reason == "0/1 nodes fit: 1 too few free GPUs"


def test_what_running_jobs_and_replicas_hold_is_not_free() -> None:
    one = job("one", gpus=1)
    # a replica holds half of GPU 0: a whole-GPU job gets GPU 1, a two-GPU one waits
    assert schedule(Snapshot(H100S, {0: 0.5}, (one,)))[0] == Start(one.key, ((1,),), None, "on local")
    (wait,) = schedule(Snapshot(H100S, {0: 0.5}, (job("two"),)))
    assert isinstance(wait, Wait) and "too few free GPUs" in wait.reason
    # a fraction packs next to the replica's half
    (share,) = schedule(Snapshot(H100S, {0: 0.5}, (job("half", gpus=0.5),)))
    assert isinstance(share, Start) and share.devices == ((0,),)


def test_priority_then_age_decides_who_gets_the_gpus() -> None:
    old, urgent = job("old", created=1.0), job("urgent", created=5.0, priority=10)
    out = by_key(schedule(Snapshot(H100S, pending=(old, urgent))))
    assert isinstance(out[urgent.key], Start) and isinstance(out[old.key], Wait)


def test_a_gang_is_all_or_nothing() -> None:
    (wait,) = schedule(Snapshot(H100S, pending=(job("gang", workers=3, gpus=1),)))
    assert isinstance(wait, Wait)
    assert wait.reason == "gang of 3 pods, 2 fit; 0/1 nodes fit: 1 too few free GPUs"
    (start,) = schedule(Snapshot(H100S, pending=(job("pair", workers=2, gpus=1),)))
    assert isinstance(start, Start) and sorted(start.devices) == [(0,), (1,)]


def test_a_smaller_job_fills_gpus_a_bigger_one_cannot_use() -> None:
    big, small = job("big", gpus=2, created=1.0), job("small", gpus=1, created=2.0)
    out = by_key(schedule(Snapshot(H100S, {0: 1.0}, (big, small))))
    assert isinstance(out[big.key], Wait)
    assert out[small.key] == Start(small.key, ((1,),), None, out[small.key].reason)


def test_a_machine_without_gpus_runs_cpu_jobs_and_explains_gpu_ones() -> None:
    out = by_key(schedule(Snapshot((), pending=(job("gpu", gpus=1), job("cpu", gpus=0)))))
    assert out["TrainingJob/cpu"] == Start("TrainingJob/cpu", ((),), None, "on local")
    assert out["TrainingJob/gpu"] == Wait("TrainingJob/gpu", "0/1 nodes fit: 1 no GPU", "placement")


def test_gpu_models_are_matched_on_a_mixed_machine() -> None:
    gpus = (Gpu(0, "NVIDIA H100 80GB HBM3"), Gpu(1, "NVIDIA A100-SXM4-80GB"))
    (start,) = schedule(Snapshot(gpus, pending=(job("a100", gpus=1, gpuModel="A100"),)))
    assert isinstance(start, Start) and start.devices == ((1,),)
    (wait,) = schedule(Snapshot(gpus, pending=(job("l4", gpus=1, gpuModel="L4"),)))
    assert isinstance(wait, Wait) and "GPU model not in L4" in wait.reason


def test_quota_is_checked_before_placement_when_queues_exist() -> None:
    four = tuple(Gpu(i, "fake-H100") for i in range(4))
    queues = {"team-a": QueueSpec("team-a", {"*": 2})}
    running = job("running", queue="team-a")
    waiting = job("waiting", queue="team-a")
    holds = (Running(running, ((0, 1),), "*"),)
    (wait,) = schedule(Snapshot(four, {}, (waiting,), holds, queues))
    assert isinstance(wait, Wait) and wait.cause == "quota"
    assert wait.reason.startswith("queue team-a: GPU quota 2/2 in use, needs 2")
    # no Queue named 'default': a job of the default queue has no quota, as on Kubernetes
    (start,) = schedule(Snapshot(four, {}, (job("free"),), holds, queues))
    assert isinstance(start, Start) and start.devices == ((2, 3),) and start.reason == "on local"
    # with quota, a job that fits it but not the GPUs says both
    (short,) = schedule(
        Snapshot(four, {1: 1.0, 2: 1.0, 3: 1.0}, (job("short", queue="team-a"),), queues=queues)
    )
    assert short == Wait(
        short.key,
        "queue team-a: 2 GPU fit its quota (quota 0/2 in use); 0/1 nodes fit: 1 too few free GPUs",
        "placement",
    )
    (missing,) = schedule(Snapshot(four, pending=(job("lost", queue="nope"),), queues=queues))
    assert isinstance(missing, Wait) and missing.reason == "queue 'nope' does not exist"


def test_one_cycle_never_gives_quota_or_gpus_twice() -> None:
    four = tuple(Gpu(i, "fake-H100") for i in range(4))
    queues = {"team-a": QueueSpec("team-a", {"*": 2})}
    out = by_key(
        schedule(
            Snapshot(
                four, pending=(job("x", queue="team-a"), job("y", queue="team-a", created=1)), queues=queues
            )
        )
    )
    assert isinstance(out["TrainingJob/x"], Start) and isinstance(out["TrainingJob/y"], Wait)


def test_work_without_a_queue_is_not_ordered_behind_work_with_one() -> None:
    queues = {"team-a": QueueSpec("team-a", {"*": 2})}
    old, newer = job("no-queue", created=1.0), job("queued", created=2.0, queue="team-a")
    out = by_key(schedule(Snapshot(H100S, pending=(newer, old), queues=queues)))
    assert isinstance(out[old.key], Start) and isinstance(out[newer.key], Wait)


def test_a_higher_priority_job_preempts_a_lower_one_but_never_a_replica() -> None:
    low, high = job("low", created=1.0), job("high", created=2.0, priority=10)
    result = cycle.schedule(Snapshot(H100S, pending=(high,), running=(Running(low, ((0, 1),)),)))
    assert result.evictions == [Evict(low.key, high.key, "preempted by TrainingJob/high (priority 10 > 0)")]
    assert result.decisions == [Wait(high.key, "preempting 1 workload(s): TrainingJob/low", "preemption")]
    # while the victim stops it still holds its GPUs: the preemptor waits, no one else is evicted
    stopping = Running(low, ((0, 1),), stopping=True)
    again = cycle.schedule(
        Snapshot(H100S, pending=(high,), running=(stopping,), preempting={high.key: [low.key]})
    )
    assert again.evictions == []
    assert again.decisions == [
        Wait(high.key, "waiting for 1 preempted workload(s) to stop: TrainingJob/low", "preemption")
    ]
    (wait,) = schedule(Snapshot(H100S, {0: 1.0, 1: 1.0}, (high,)))
    assert wait == Wait(high.key, "0/1 nodes fit: 1 too few free GPUs", "placement")


def test_a_gang_passed_over_for_long_enough_reserves_the_gpus() -> None:
    busy = (Running(job("busy", gpus=1), ((0,),)),)
    big, small = job("big", gpus=2, created=0.0), job("small", gpus=1, created=1.0)
    # early on, the smaller job backfills the GPU the big one cannot use yet
    out = by_key(schedule(Snapshot(H100S, pending=(big, small), running=busy, now=10.0)))
    assert isinstance(out[small.key], Start) and isinstance(out[big.key], Wait)
    # once the big one waited reserve_after_s, the machine is held for it
    result = cycle.schedule(Snapshot(H100S, pending=(big, small), running=busy, now=400.0))
    assert result.reservations == {big.key: (0,)}
    out = by_key(result.decisions)
    assert out[big.key].reason == "0/1 nodes fit: 1 too few free GPUs; waited 400s, reserved local"
    assert out[small.key] == Wait(small.key, "0/1 nodes fit: 1 reserved for TrainingJob/big", "placement")
    # the reservation is handed back in and kept while the big job waits
    kept = cycle.schedule(
        Snapshot(H100S, pending=(big, small), running=busy, reservations=result.reservations, now=10.0)
    )
    assert kept.reservations == {big.key: (0,)}


def test_queue_specs_from_stored_queues() -> None:
    assert queue_specs([]) is None
    q = Queue.model_validate(
        {"kind": "Queue", "metadata": {"name": "t"}, "spec": {"quota": {"H100": 4}, "cohort": "c"}}
    )
    (spec,) = queue_specs([q]).values()  # type: ignore[union-attr]
    assert (spec.name, dict(spec.quota), spec.cohort) == ("t", {"H100": 4}, "c")


def test_unsupported_jobs_wait_with_their_reason() -> None:
    unfit = replace(local_job(training("t"), 1, 0.0), unsupported="needs what this machine lacks")
    (wait,) = schedule(Snapshot(H100S, pending=(unfit,)))
    assert wait == Wait("TrainingJob/t", "needs what this machine lacks", "unsupported")


def test_an_embed_batch_job_runs_the_shard_runner_with_the_shared_shard_env() -> None:
    embed = BatchJob.model_validate(
        {
            "kind": "BatchJob",
            "metadata": {"name": "e"},
            "spec": {"task": "embed", "model": "m", "input": "in.jsonl", "output": "out", "shards": 3},
        }
    )
    w = local_job(embed, 1, 0.0)
    assert w.command == (sys.executable, "-m", "aiplane", "run-shard") and not w.gang
    assert (w.tasks, w.model, w.task, w.output) == (3, "m", "embed", "out")
    assert w.env == shard_env(embed)
    assert {k: w.env[k] for k in ("AIPLANE_TASK", "AIPLANE_SHARDS", "AIPLANE_INPUT", "AIPLANE_MODEL")} == {
        "AIPLANE_TASK": "embed", "AIPLANE_SHARDS": "3", "AIPLANE_INPUT": "in.jsonl", "AIPLANE_MODEL": "m",
    }  # fmt: skip
    (start,) = schedule(Snapshot(H100S, pending=(w,)))
    assert isinstance(start, Start)


# -- the adapters ---------------------------------------------------------------------
def test_a_training_job_is_a_workload_the_quota_core_admits() -> None:
    w = job("t", workers=2, gpus=4, created=7.0, queue="team-a", priority=3, gpuModel="H100")
    assert (w.key, w.queue, w.priority, w.created, w.gang_size) == ("TrainingJob/t", "team-a", 3, 7.0, 2)
    assert (w.demand.gpu, w.demand.gpu_model, w.finished, w.suspended) == (8, "H100", False, False)
    assert [(p.gpus, p.gpu_milli, p.gpu_spec) for p in w.pods()] == [(4, 1000, "H100")] * 2
    outcome = admit(w, {"team-a": QueueSpec("team-a", {"H100": 8})}, Usage())
    assert outcome.mode is Mode.Fit and outcome.flavor == "H100"
    assert local_job(training("t"), 1, 0.0, "Succeeded").finished


def test_a_custom_batch_job_runs_its_shards_through_parallel_slots() -> None:
    bj = BatchJob.model_validate(
        {
            "kind": "BatchJob",
            "metadata": {"name": "b"},
            "spec": {
                "task": "custom",
                "command": ["x"],
                "input": "i",
                "output": "o",
                "shards": 5,
                "parallelism": 2,
                "gpusPerShard": 1,
            },
        }
    )
    w = local_job(bj, 1, 0.0)
    assert (w.slots, w.tasks, w.gang, w.demand.gpu, w.unsupported) == (2, 5, False, 2, None)
    assert w.env["AIPLANE_SHARDS"] == "5"


# -- the store ------------------------------------------------------------------------
def status(name: str, **fields: Any) -> JobStatusRow:
    row: dict[str, Any] = {
        "kind": "TrainingJob", "name": name, "generation": 1, "phase": "Running", "reason": "r",
        "flavor": "*", "devices": [[0, 1]], "pids": [42], "argv": ["python", "t.py"], "restarts": 1,
        "started": 10.0, "finished": None, "updated": 11.0,
    }  # fmt: skip
    row.update(fields)
    return JobStatusRow(**row)


def test_job_status_round_trips_and_goes_with_its_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.apply(training("t"))
    store.set_job_status(status("t"))
    assert store.job_statuses() == {("TrainingJob", "t"): status("t")}
    store.delete("TrainingJob", "t")
    assert store.job_statuses() == {}


def test_an_older_database_gains_the_job_status_table(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE resources (kind TEXT, name TEXT, manifest TEXT)")
    Store(path)
    Store(path)  # idempotent
    assert Store(path).job_statuses() == {}


def test_get_jobs_shows_phase_devices_and_the_pending_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner
    from typer.main import get_command

    from aiplane.cli.main import app

    monkeypatch.setenv("AIPLANE_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    store = Store(tmp_path / "state.db")
    for name in ("run", "wait", "new"):
        store.apply(training(name))
    store.set_job_status(status("run"))
    store.set_job_status(
        status("wait", phase="Pending", reason="0/1 nodes fit: 1 too few free GPUs", devices=[])
    )
    out = CliRunner().invoke(get_command(app), ["get", "jobs"]).output
    lines = {ln.split()[1]: ln for ln in out.splitlines()[1:]}
    assert out.split()[:10] == [
        "KIND",
        "NAME",
        "QUEUE",
        "PHASE",
        "GPUS",
        "DEVICES",
        "RESTARTS",
        "PROGRESS",
        "AGE",
        "REASON",
    ]
    assert lines["run"].split()[2:7] == ["default", "Running", "2", "0,1", "1"]
    assert "Pending" in lines["wait"] and lines["wait"].rstrip().endswith(
        "0/1 nodes fit: 1 too few free GPUs"
    )
    assert "waiting for a plane" in lines["new"]


# -- the runner, with real processes --------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, ref: str, reason: str, message: str) -> None:
        self.events.append((ref, reason, message))


async def run_until(runner: JobRunner, store: Store, done: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await runner.reconcile(time.time(), {})
        if done(store.job_statuses()):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(store.job_statuses())


async def test_a_failing_worker_restarts_the_gang_then_fails(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    code = (
        "import os, sys; print('rank', os.environ['RANK'], os.environ['CUDA_VISIBLE_DEVICES']);"
        "sys.exit(int(os.environ['RANK']))"
    )
    store.apply(training("flaky", workers=2, gpus=1, command=[sys.executable, "-c", code], maxRestarts=1))
    events = Recorder()
    async with JobRunner(store, list(H100S), tmp_path / "logs", events) as runner:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("aiplane.runtime.local.jobs.BACKOFF_START", 0.05)
            await run_until(
                runner,
                store,
                lambda s: s.get(("TrainingJob", "flaky")) and s[("TrainingJob", "flaky")].phase == "Failed",
            )
        row = store.job_statuses()[("TrainingJob", "flaky")]
        assert (
            row.restarts == 1
            and "worker 1 exited with code 1" in row.reason
            and "maxRestarts 1" in row.reason
        )
        assert sorted(row.devices) == [[0], [1]]
        assert runner.snapshot_for_replicas({}).running == () and runner.pids() == []
    reasons = [r for ref, r, _ in events.events if ref == "TrainingJob/flaky"]
    assert reasons == ["Started", "Restarting", "Failed"]
    log = (tmp_path / "logs" / "trainingjob-flaky" / "worker-1.log").read_text()
    assert log.count("rank 1 1") == 2  # both attempts, on its own GPU


async def test_a_stopping_plane_requeues_what_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.apply(training("long", gpus=1, command=[sys.executable, "-c", "import time; time.sleep(60)"]))
    async with JobRunner(store, list(H100S), tmp_path / "logs", Recorder()) as runner:
        await run_until(
            runner, store, lambda s: s.get(("TrainingJob", "long")) and s[("TrainingJob", "long")].pids
        )
        (pid,) = store.job_statuses()[("TrainingJob", "long")].pids
    row = store.job_statuses()[("TrainingJob", "long")]
    assert (row.phase, row.reason) == ("Pending", "requeued: the plane stopped")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def phase_of(kind: str, name: str, *phases: str) -> Any:
    return lambda s: (row := s.get((kind, name))) is not None and row.phase in phases


async def test_a_job_past_its_active_deadline_fails(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    store.apply(training("slow", gpus=1, command=slow, activeDeadline="1s"))
    async with JobRunner(store, list(H100S), tmp_path / "logs", Recorder()) as runner:
        await run_until(runner, store, phase_of("TrainingJob", "slow", "Failed", "Succeeded"))
        assert runner.pids() == []
    row = store.job_statuses()[("TrainingJob", "slow")]
    assert (row.phase, row.reason) == ("Failed", "DeadlineExceeded: ran longer than activeDeadline (1s)")


async def test_a_command_batch_job_runs_every_shard_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    out = tmp_path / "out"
    code = (
        "import os; from aiplane import progress\n"
        "open(os.environ['AIPLANE_SHARD_OUTPUT'], 'w').write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n')\n"
        "progress.report(shard=int(os.environ['AIPLANE_SHARD']), rows=int(os.environ['AIPLANE_SHARD']) + 1)\n"
    )
    spec = {
        "task": "custom",  # the first name of "command"
        "command": [sys.executable, "-c", code],
        "input": "in",
        "output": str(out),
    }
    spec |= {"shards": 5, "parallelism": 2, "gpusPerShard": 1}
    store.apply(BatchJob.model_validate({"kind": "BatchJob", "metadata": {"name": "b"}, "spec": spec}))
    async with JobRunner(store, list(H100S), tmp_path / "logs", Recorder()) as runner:
        await run_until(runner, store, phase_of("BatchJob", "b", "Failed", "Succeeded"))
    row = store.job_statuses()[("BatchJob", "b")]
    assert (row.phase, row.reason, sorted(row.devices)) == ("Succeeded", "5 shard(s) exited 0", [[0], [1]])
    assert row.progress == {"completed": 5, "shards": 5, "rows": 1 + 2 + 3 + 4 + 5, "errors": 0}
    manifests = sorted(out.glob("*.manifest.json"))
    assert len(manifests) == 5
    devices = {(out / json.loads(m.read_text())["output"]).read_text() for m in manifests}
    assert devices == {"0\n", "1\n"}  # each shard wrote its output through the runner, on its GPU


async def test_a_new_plane_kills_what_a_dead_one_left_running_and_requeues_it(tmp_path: Path) -> None:
    import subprocess

    store = Store(tmp_path / "state.db")
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    left = subprocess.Popen(argv, start_new_session=True)
    store.apply(training("orphan", gpus=1, command=argv))
    store.set_job_status(status("orphan", pids=[left.pid], argv=argv))
    events = Recorder()
    async with JobRunner(store, list(H100S), tmp_path / "logs", events) as runner:
        await runner.recover()
        assert left.wait(timeout=10) != 0
        row = store.job_statuses()[("TrainingJob", "orphan")]
        assert (row.phase, row.reason, row.restarts) == (
            "Pending",
            "requeued: the plane stopped while it ran",
            1,
        )
        assert events.events == [
            ("TrainingJob/orphan", "Requeued", "requeued: the plane stopped while it ran")
        ]


PREEMPTIBLE = """\
import os, signal, sys, time
checkpoint = sys.argv[1]
if os.path.exists(checkpoint):
    print("resumed from", open(checkpoint).read(), flush=True)
    sys.exit(0)
def stop(*_):
    open(checkpoint, "w").write("step 7")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""


def ready(log: Path) -> Any:
    """The worker printed its 'ready' line (the runner's start line quotes the command, which
    says 'ready' too: matching a substring raced the worker's own signal setup)."""
    return lambda _: log.exists() and "ready" in log.read_text().splitlines()


async def test_a_preempted_job_checkpoints_on_sigterm_and_runs_again_after(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    checkpoint = tmp_path / "ckpt"
    low_cmd = [sys.executable, "-c", PREEMPTIBLE, str(checkpoint)]
    store.apply(training("low", command=low_cmd, gracePeriod="30s"))
    events = Recorder()
    async with JobRunner(store, list(H100S), tmp_path / "logs", events) as runner:
        log = tmp_path / "logs" / "trainingjob-low" / "worker-0.log"
        await run_until(runner, store, ready(log))
        (victim,) = store.job_statuses()[("TrainingJob", "low")].pids
        high_cmd = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
        store.apply(training("high", command=high_cmd, priority=10))
        await run_until(runner, store, phase_of("TrainingJob", "high", "Succeeded", "Failed"))
        with pytest.raises(ProcessLookupError):
            os.kill(victim, 0)
        assert checkpoint.read_text() == "step 7"  # it had its grace to write a checkpoint
        await run_until(runner, store, phase_of("TrainingJob", "low", "Succeeded", "Failed"))
        assert runner.preempting == {} and runner.snapshot_for_replicas({}).running == ()
    assert store.job_statuses()[("TrainingJob", "low")].phase == "Succeeded"
    assert "resumed from step 7" in log.read_text()
    low = [(r, m) for ref, r, m in events.events if ref == "TrainingJob/low"]
    assert low[1] == (
        "Preempted",
        "requeued: preempted by TrainingJob/high (priority 10 > 0); workers get SIGTERM and 30s to stop",
    )
    assert [r for r, _ in low][-2:] == ["Started", "Succeeded"]
    high = [r for ref, r, _ in events.events if ref == "TrainingJob/high"]
    assert high[0] == "Preempting" and high[-2:] == ["Started", "Succeeded"]
    assert (tmp_path / "logs" / "trainingjob-high" / "worker-0.log").read_text().splitlines()[-1] == "0,1"


def queue(name: str, gpus: float) -> Queue:
    spec = {"quota": {"*": gpus}, "cohort": "research"}
    return Queue.model_validate({"kind": "Queue", "metadata": {"name": name}, "spec": spec})


async def test_reclaimed_gpus_go_to_the_lender_not_back_to_the_borrower(tmp_path: Path) -> None:
    """team-b lends its GPU to team-a's higher-priority job, then wants it back. Once the
    borrower has stopped, the lender must get the GPU: the borrower, first by priority,
    would otherwise borrow it again and be reclaimed again, for ever."""
    store = Store(tmp_path / "state.db")
    store.apply(queue("team-a", 1))
    store.apply(queue("team-b", 1))
    checkpoint = tmp_path / "ckpt"
    borrower = [sys.executable, "-c", PREEMPTIBLE, str(checkpoint)]
    store.apply(training("a", gpus=2, command=borrower, queue="team-a", priority=5, gracePeriod="30s"))
    events = Recorder()
    async with JobRunner(store, list(H100S), tmp_path / "logs", events) as runner:
        await run_until(runner, store, ready(tmp_path / "logs" / "trainingjob-a" / "worker-0.log"))
        lender = [sys.executable, "-c", "import time; time.sleep(1)"]
        store.apply(training("b", gpus=1, command=lender, queue="team-b"))
        await run_until(runner, store, phase_of("TrainingJob", "b", "Running", "Succeeded", "Failed"))
        row = store.job_statuses()[("TrainingJob", "a")]
        assert row.phase == "Pending" and row.reason.startswith("queue team-a: GPU quota 0/1 in use, needs 2")
        # b's second leaves nothing to borrow: a resumes once b is done
        await run_until(runner, store, phase_of("TrainingJob", "a", "Succeeded", "Failed"))
    assert store.job_statuses()[("TrainingJob", "b")].phase == "Succeeded"
    reasons = [r for ref, r, _ in events.events if ref == "TrainingJob/a"]
    assert reasons.count("Preempted") == 1 and reasons.count("Started") == 2, events.events


async def test_a_preempted_worker_that_ignores_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ready', flush=True); time.sleep(60)"
    )
    store.apply(training("stubborn", command=[sys.executable, "-c", stubborn], gracePeriod="3s"))
    async with JobRunner(store, list(H100S), tmp_path / "logs", Recorder()) as runner:
        await run_until(runner, store, ready(tmp_path / "logs" / "trainingjob-stubborn" / "worker-0.log"))
        (victim,) = store.job_statuses()[("TrainingJob", "stubborn")].pids
        store.apply(training("urgent", command=["true"], priority=10))
        await runner.reconcile(time.time(), {})  # decides the preemption: SIGTERM now
        preempted = time.monotonic()
        row = store.job_statuses()[("TrainingJob", "stubborn")]
        assert (row.phase, row.reason) == (
            "Pending",
            "requeued: preempted by TrainingJob/urgent (priority 10 > 0)",
        )
        await asyncio.sleep(0.5)
        os.kill(victim, 0)  # still alive: SIGTERM is ignored and its grace is not over
        await run_until(runner, store, phase_of("TrainingJob", "urgent", "Running", "Succeeded"))
        assert 2.9 <= time.monotonic() - preempted < 30  # SIGKILL after the 3s grace, not 120s
        with pytest.raises(ProcessLookupError):
            os.kill(victim, 0)


async def test_a_changed_job_waits_for_its_old_workers_then_runs_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    long = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]
    store.apply(training("t", command=long))
    events = Recorder()
    async with JobRunner(store, list(H100S), tmp_path / "logs", events) as runner:
        await run_until(runner, store, ready(tmp_path / "logs" / "trainingjob-t" / "worker-0.log"))
        store.apply(training("t", command=["true"]))
        await runner.reconcile(time.time(), {})  # the old run stops; the new one may not start yet
        row = store.job_statuses()[("TrainingJob", "t")]
        assert (row.generation, row.phase, row.reason) == (2, "Pending", STOPPING_REASON)
        await run_until(runner, store, phase_of("TrainingJob", "t", "Succeeded", "Failed"))
    assert store.job_statuses()[("TrainingJob", "t")].generation == 2
    assert [r for _, r, _ in events.events] == ["Started", "Stopped", "Unschedulable", "Started", "Succeeded"]


async def test_a_scheduled_job_runs_at_each_fire_and_skips_fires_while_it_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    marker = tmp_path / "runs"
    code = f"open({str(marker)!r}, 'a').write('run\\n')"
    store.apply(training("nightly", command=[sys.executable, "-c", code], schedule="* * * * *"))
    created = store.resources("TrainingJob")[0].created
    minute = (created // 60 + 1) * 60  # the first fire after the job was created
    clock = [minute - 5]
    events = Recorder()
    async with JobRunner(store, list(H100S), tmp_path / "logs", events) as runner:
        runner.wall_clock = lambda: clock[0]
        await runner.reconcile(time.time(), {})
        row = store.job_statuses()[("TrainingJob", "nightly")]
        assert row.phase == "Scheduled" and row.reason.startswith("next run at ") and not runner.runs
        clock[0] = minute + 1
        await run_until(runner, store, lambda s: s[("TrainingJob", "nightly")].reason.startswith("last run"))
        row = store.job_statuses()[("TrainingJob", "nightly")]
        assert (row.phase, row.scheduled) == ("Scheduled", minute)
        assert row.reason.startswith("last run Succeeded: 1 worker(s) exited 0; next run at ")
        await runner.reconcile(time.time(), {})  # the same minute: no second run
        assert not runner.runs and marker.read_text() == "run\n"
        clock[0] = minute + 61
        await run_until(runner, store, lambda s: s[("TrainingJob", "nightly")].scheduled == minute + 60)
        await run_until(runner, store, lambda s: s[("TrainingJob", "nightly")].reason.startswith("last run"))
    assert marker.read_text() == "run\nrun\n"
    started = [m for ref, r, m in events.events if ref == "TrainingJob/nightly" and r == "Started"]
    assert len(started) == 2


async def test_a_fire_while_the_last_run_runs_waits_for_it_and_is_dropped_when_too_old(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state.db")
    sleeper = [sys.executable, "-c", "import time; time.sleep(3)"]
    store.apply(training("slow", command=sleeper, schedule="0 * * * *"))
    hour = (store.resources("TrainingJob")[0].created // 3600 + 1) * 3600
    clock = [hour + 1]
    events = Recorder()
    async with JobRunner(store, list(H100S), tmp_path / "logs", events) as runner:
        runner.wall_clock = lambda: clock[0]
        await run_until(runner, store, lambda s: s[("TrainingJob", "slow")].phase == "Running")
        clock[0] = hour + 3601  # the next fire comes while it runs: no second run (Forbid)
        await runner.reconcile(time.time(), {})
        assert len(runner.runs) == 1
        clock[0] = hour + 3600 + 601  # the run ends after that fire's starting deadline: dropped
        await run_until(runner, store, lambda s: s[("TrainingJob", "slow")].phase == "Scheduled")
        await runner.reconcile(time.time(), {})
        assert not runner.runs
        assert store.job_statuses()[("TrainingJob", "slow")].scheduled == hour
    assert [r for ref, r, _ in events.events if ref == "TrainingJob/slow"].count("Started") == 1


async def test_rank_zeros_progress_lines_and_the_checkpoint_dir_reach_the_status(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    code = (
        "import json, os, sys, time\n"
        "from aiplane import progress\n"
        "rank, restart = int(os.environ['RANK']), int(os.environ['AIPLANE_RESTART'])\n"
        "ckpt = os.environ['AIPLANE_CHECKPOINT_DIR']\n"
        "resume = os.environ['AIPLANE_CHECKPOINT_RESUME']\n"
        "open(os.path.join(ckpt, f'rank{rank}-{restart}'), 'w').write(resume)\n"
        "if rank == 0 and restart: progress.report(resumed_from=40)\n"
        "for step in range(3): progress.report(step=step + 1, loss=3.0 - step, rank=rank); time.sleep(0.2)\n"
        "sys.exit(1 if restart == 0 and rank == 1 else 0)\n"
    )
    checkpoint = {"path": "ckpt", "resume": False}
    store.apply(
        training("p", 2, 0, command=[sys.executable, "-c", code], maxRestarts=2, checkpoint=checkpoint)
    )
    async with JobRunner(store, list(H100S), tmp_path / "logs", Recorder()) as runner:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("aiplane.runtime.local.jobs.BACKOFF_START", 0.05)
            await run_until(runner, store, phase_of("TrainingJob", "p", "Failed", "Succeeded"))
    row = store.job_statuses()[("TrainingJob", "p")]
    assert (row.phase, row.restarts) == ("Succeeded", 1)
    assert row.progress == {"resumed_from": 40, "step": 3, "loss": 1.0, "rank": 0}  # rank 0's lines only
    directory = tmp_path / "checkpoints" / "p" / "ckpt"
    assert sorted(p.name for p in directory.iterdir()) == ["rank0-0", "rank0-1", "rank1-0", "rank1-1"]
    assert (directory / "rank1-1").read_text() == "false"
