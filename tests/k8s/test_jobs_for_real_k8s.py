"""TrainingJobs and BatchJobs whose pods really run, on the dev cluster.

The job stand-in (``job_standin.py``) runs each job pod's own command as a local
process once KWOK has it Running: ``examples/train_tiny.py`` (DDP over gloo, on CPU;
the ``gpusPerWorker`` are KWOK's A100s, there only for the quota) and ``aiplane
run-shard``. It writes their exit into the pod's status as a kubelet does, and plays
the kubelet's termination (SIGTERM, the grace period, SIGKILL, the pod's removal). Pod
logs reach the API server through KWOK's server, every node's kubelet endpoint, so the
operator reads rank 0's progress lines with a plain ``pods/log`` GET.

* A TrainingJob in a Queue whose quota holds one job is preempted by one of higher
  priority: its workers get SIGTERM, all stop after the same step and save it, exit
  143; it is requeued (``Preempted``), re-admitted when the other finishes, and its new
  pods resume from exactly that step and finish.
* An ``embed`` BatchJob of 4 shards, 2 at a time, over a claim: every good row is
  embedded once, and the operator counts rows and bad rows from the termination messages.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.constants import LABEL_JOB
from tests.k8s.conftest import K8sCluster
from tests.k8s.job_standin import JobRun, JobStandIn, rank_log
from tests.k8s.operator_fixture import Operator, apply_yaml, kubectl_json, operator_and_scheduler

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]

T = TypeVar("T")
STEPS, DELAY = 300, 0.1  # ~45 s of training on 2 cores, with a checkpoint every 25 steps
SIGTERM_EXIT = 143


@pytest.fixture(scope="module")
def platform(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with operator_and_scheduler(k8s_cluster, tmp_path_factory.mktemp("jobs-for-real")) as op:
        yield op


@pytest.fixture
async def kube(k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as client:
        yield client


async def poll(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Call the (blocking) ``probe`` in a thread until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(probe)
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def apply(cluster: K8sCluster, text: str, ns: str | None = None) -> None:
    out = apply_yaml(cluster, text, ns)
    assert out.returncode == 0, out.stderr


def get(cluster: K8sCluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    got = kubectl_json(cluster, "get", kind, name, "-n", ns)
    assert got is not None, f"{kind} {name} is gone"
    return dict(got)


def status(cluster: K8sCluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    return dict(get(cluster, kind, name, ns).get("status") or {})


def status_when(
    cluster: K8sCluster, kind: str, name: str, ns: str, test: Callable[[dict[str, Any]], bool]
) -> Callable[[], dict[str, Any] | None]:
    """A probe for :func:`poll`: the object's status once ``test(status)`` holds."""

    def probe() -> dict[str, Any] | None:
        st = status(cluster, kind, name, ns)
        return st if test(st) else None

    return probe


def conditions(st: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st.get("conditions") or []}


def admission(st: dict[str, Any]) -> dict[str, Any]:
    return dict(st.get("admission") or {})


def checkpoint_step(st: dict[str, Any]) -> int:
    return int((st.get("progress") or {}).get("checkpoint_step") or 0)


# -- training, preempted and resumed ---------------------------------------------------------


def training_yaml(name: str, queue: str, priority: int, steps: int, delay: float) -> str:
    command = [
        "python", "examples/train_tiny.py", "--steps", str(steps), "--checkpoint-every", "25",
        "--step-delay", str(delay), "--sample", "0",
    ]  # fmt: skip
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  image: any/image:1
  command: {json.dumps(command)}
  workers: 2
  gpusPerWorker: 1
  gpuModel: A100
  queue: {queue}
  priority: {priority}
  checkpoint: {{path: tiny}}
  gracePeriod: 30s
"""


def stopped_after(run: JobRun) -> int:
    """The step the worker says it stopped after on SIGTERM (train_tiny's last words)."""
    m = re.search(r"rank \d: (SIGTERM|another rank was signalled): stopping after step (\d+)", run.log_text())
    assert m, f"{run.pod} never said it stopped:\n{run.log_text(3000)}"
    return int(m[2])


async def test_a_preempted_training_job_checkpoints_on_sigterm_and_resumes_from_that_step(
    k8s_cluster: K8sCluster, k8s_namespace: str, kube: Kube, tmp_path: Path
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    queue = f"q-{ns}"
    apply(cluster, f"apiVersion: aiplane.dev/v1alpha1\nkind: Queue\nmetadata: {{name: {queue}}}\n"
                   "spec: {quota: {A100: 2}}\n")  # fmt: skip  # room for one 2-worker job
    volumes = tmp_path / "volumes"
    (logs := tmp_path / "logs").mkdir()
    stand_in = JobStandIn(kube, ns, LABEL_JOB, logs, volumes)
    try:
        async with stand_in.running() as jobs:
            apply(cluster, training_yaml("low", queue, 0, STEPS, DELAY), ns)
            # The operator reads rank 0's progress from its pod log, through the API server.
            low = await poll(
                status_when(cluster, "trainingjob", "low", ns, lambda s: checkpoint_step(s) > 0),
                120,
                "low's status.progress with a checkpoint, from its pod log",
            )
            assert low["phase"] == "Running" and low["progress"]["total_steps"] == STEPS, low
            assert f"/{STEPS}" in low["progressSummary"], low["progressSummary"]
            first = jobs.runs_of("low")
            assert len(first) == 2 and all(r.engine.running for r in first), jobs.describe()
            pod0 = rank_log(first, 0).pod
            served = cluster.kubectl("logs", pod0, "-n", ns, "-c", "trainer", "--tail", "50").stdout
            assert "AIPLANE_PROGRESS" in served, served  # kubectl logs: the file the stand-in wrote
            # Both ranks share one loopback port and address; the checkpoint dir is the claim's.
            assert len({r.env["MASTER_PORT"] for r in first}) == 1
            assert {r.env["MASTER_ADDR"] for r in first} == {"127.0.0.1"}
            ckpt = volumes / "low-checkpoints" / "tiny"
            assert {r.env["AIPLANE_CHECKPOINT_DIR"] for r in first} == {str(ckpt)}

            apply(cluster, training_yaml("high", queue, 100, 40, 0), ns)
            preempting = await poll(
                status_when(cluster, "trainingjob", "low", ns, lambda s: bool(admission(s).get("preempted"))),
                60,
                "low preempted by high",
            )
            record = admission(preempting)
            assert record["admitted"] is False and record["preempted"]["by"] == f"TrainingJob/{ns}/high"
            assert "requeued" in record["reason"], record
            await jobs.wait_runs(  # exited, and their terminal status written (then the removal)
                60, "low's first workers stopped", lambda _: all(r.reported for r in first)
            )
            steps = {stopped_after(r) for r in first}
            assert len(steps) == 1, f"the ranks stopped after different steps: {steps}"
            (saved,) = steps
            assert saved >= low["progress"]["checkpoint_step"]
            for r in first:  # SIGTERM, a save, exit 143 well inside the grace period
                assert r.exit_code == SIGTERM_EXIT and r.engine.sigterm_at is not None, jobs.describe()
                assert not r.engine.sigkilled
            assert "SIGTERM: stopping after step" in rank_log(first, 0).log_text()
            assert (ckpt / f"step-{saved:06d}.pt").is_file(), sorted(p.name for p in ckpt.iterdir())
            preempted = await poll(
                status_when(cluster, "trainingjob", "low", ns, lambda s: s.get("phase") == "Preempted"),
                30,
                "low's phase Preempted",
            )
            assert conditions(preempted)["Preempted"] == "True"

            await poll(
                status_when(cluster, "trainingjob", "high", ns, lambda s: s.get("phase") == "Succeeded"),
                120,
                "high Succeeded",
            )
            assert all(r.exit_code == 0 for r in jobs.runs_of("high")), jobs.describe()
            # Re-admitted: new pods (one port picked afresh for the new gang), and rank 0
            # resumes from the step saved on SIGTERM.
            await jobs.wait_runs(120, "low's new workers", lambda _: len(jobs.runs_of("low")) == 4)
            second = [r for r in jobs.runs_of("low") if r not in first]
            assert len({r.env["MASTER_PORT"] for r in second}) == 1
            done = await poll(
                status_when(cluster, "trainingjob", "low", ns, lambda s: s.get("phase") == "Succeeded"),
                150,
                "low Succeeded after resuming",
            )
            lead = rank_log(second, 0)
            assert f"resuming from {ckpt / f'step-{saved:06d}.pt'}" in lead.log_text(), lead.log_text(3000)
            assert f'AIPLANE_PROGRESS {{"resumed_from":{saved}}}' in lead.log_text()
            assert all(r.exit_code == 0 for r in second), jobs.describe()
            assert conditions(done)["Admitted"] == "True" and conditions(done)["Preempted"] == "False"
            progress = done["progress"]
            assert progress["resumed_from"] == saved, progress
            assert progress["step"] == progress["total_steps"] == STEPS, progress
            # the workers stopped for the preemption (exit 143) are not failures: a job
            # preempted more than maxRestarts times still runs (podFailurePolicy: Ignore)
            job = kubectl_json(cluster, "get", "job", "low", "-n", ns)
            assert not job["status"].get("failed"), job["status"]
            assert jobs.errors == [], jobs.errors
    finally:
        cluster.kubectl("delete", "queue", queue)  # cluster-scoped: the namespace does not own it


# -- an embed BatchJob with the real shard runner ----------------------------------------------


def corpus(path: Path, rows: int) -> tuple[set[str], int]:
    """JSONL with two bad rows (broken JSON, no text field): (good ids, bad rows)."""
    lines = []
    for i in range(rows):
        if i == 57:
            lines.append('{"id": "broken", "text": "no closing brace"')
        elif i == 211:
            lines.append(json.dumps({"id": f"d{i}", "body": "no text field"}))
        else:
            lines.append(json.dumps({"id": f"d{i}", "text": f"document {i} about river {i % 7} at night"}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return {f"d{i}" for i in range(rows) if i not in (57, 211)}, 2


EMBED = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: aiplane.dev/v1alpha1
kind: BatchJob
metadata: {name: vectors}
spec:
  task: embed
  model: minilm
  input: pvc://data/in/corpus.jsonl
  output: pvc://data/out
  shards: 4
  parallelism: 2
"""


def most_at_once(runs: list[JobRun]) -> int:
    """The most runs whose processes overlapped in time."""
    edges = sorted(
        [(r.engine.started_at, 1) for r in runs]
        + [(r.engine.exited_at or time.monotonic(), -1) for r in runs]
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def test_an_embed_batch_job_runs_the_shard_runner_in_its_pods_and_counts_their_rows(
    k8s_cluster: K8sCluster, k8s_namespace: str, kube: Kube, tmp_path: Path
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    volumes = tmp_path / "volumes"
    good, bad = corpus(volumes / "data" / "in" / "corpus.jsonl", 300)
    (logs := tmp_path / "logs").mkdir()
    # The pods' AIPLANE_MODEL_URL is minilm's Service, which resolves nowhere here: unset,
    # the runner embeds in-process with the same MiniLM model.
    stand_in = JobStandIn(kube, ns, LABEL_JOB, logs, volumes, env={"AIPLANE_MODEL_URL": None})
    async with stand_in.running() as jobs:
        apply(cluster, EMBED, ns)
        done = await poll(
            status_when(
                cluster, "batchjob", "vectors", ns, lambda s: s.get("phase") in ("Succeeded", "Failed")
            ),
            150,
            "the BatchJob finished",
        )
        assert done["phase"] == "Succeeded", f"{done}\n{jobs.describe()}"
        runs = jobs.runs_of("vectors")
        await jobs.wait_runs(10, "every exit reported", lambda _: all(r.reported for r in runs))
    assert len(runs) == 4 and all(r.exit_code == 0 for r in runs), jobs.describe()
    assert {r.env["AIPLANE_INPUT"] for r in runs} == {str(volumes / "data" / "in" / "corpus.jsonl")}
    assert "AIPLANE_MODEL_URL" not in runs[0].env and runs[0].substituted["AIPLANE_MODEL_URL"] is None
    messages = sorted((json.loads(r.message) for r in runs), key=lambda m: m["shard"])
    assert [m["shard"] for m in messages] == [0, 1, 2, 3]
    assert most_at_once(runs) <= 2, "parallelism 2"
    assert done["shardsCompleted"] == 4 and done["shardsReported"] == 4, done
    assert done["rows"] == len(good) and done["errors"] == bad, done
    assert sum(m["rows"] for m in messages) == len(good)
    out = volumes / "data" / "out"
    written = [json.loads(line) for f in sorted(out.glob("shard-*-of-00004.jsonl")) for line in f.open()]
    counts = collections.Counter(r["id"] for r in written)
    assert set(counts) == good and set(counts.values()) == {1}, "every good row exactly once"
    assert all(len(r["embedding"]) == 384 for r in written)
    errors = [json.loads(line) for f in sorted(out.glob("shard-*.errors.jsonl")) for line in f.open()]
    assert sorted(e["row"] for e in errors) == [57, 211], errors
    listed = cluster.kubectl("get", "batchjobs", "-n", ns).stdout
    header, row = listed.splitlines()[:2]
    assert "ROWS" in header.split(), listed
    assert row.split()[header.split().index("ROWS")] == str(len(good)), listed
    assert jobs.errors == [], jobs.errors
