"""The operator on a real control plane: TrainingJobs, BatchJobs and queue admission.

Job pods use ``schedulerName: aiplane``, so the real aiplane scheduler runs beside the
operator; KWOK completes pods after the delay in their ``aiplane.dev/kwok-complete-after``
annotation, which the jobs pass on from their own metadata.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import K8sCluster
from tests.k8s.operator_fixture import Operator, apply_yaml, install_crds, kubectl_json, wait_for

pytestmark = pytest.mark.k8s


def training_yaml(name: str, *, workers: int = 3, gpus: int = 0, queue: str = "default",
                  schedule: str | None = None, complete_after: str = "2s") -> str:  # fmt: skip
    sched = f"\n  schedule: '{schedule}'" if schedule else ""
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: TrainingJob
metadata:
  name: {name}
  annotations: {{aiplane.dev/kwok-complete-after: {complete_after}}}
spec:
  image: pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
  command: [torchrun, train.py]
  workers: {workers}
  gpusPerWorker: {gpus}
  gpuModel: H100
  queue: {queue}{sched}
"""


@pytest.fixture(scope="module")
def platform(k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator and the aiplane scheduler, as the install runs them."""
    install_crds(k8s_cluster)
    logs = tmp_path_factory.mktemp("platform")
    op = Operator(k8s_cluster, logs).start()
    with (logs / "scheduler.log").open("wb") as out:
        scheduler = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiplane.cli.main",
                "scheduler",
                "--kubeconfig",
                str(k8s_cluster.kubeconfig),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield op
    scheduler.terminate()
    scheduler.wait(timeout=20)
    op.stop()


def condition(obj: dict[str, Any], type_: str) -> str | None:
    return next(
        (c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None
    )


def test_training_job_lowers_runs_and_succeeds(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator
) -> None:
    ns = k8s_namespace
    assert apply_yaml(k8s_cluster, training_yaml("ft", workers=3), ns).returncode == 0

    job = wait_for(lambda: kubectl_json(k8s_cluster, "get", "job", "ft", "-n", ns), 30, "the Indexed Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    svc = kubectl_json(k8s_cluster, "get", "service", job["spec"]["template"]["spec"]["subdomain"], "-n", ns)
    assert svc["spec"]["clusterIP"] == "None"

    def pods() -> list[dict[str, Any]]:
        got = kubectl_json(k8s_cluster, "get", "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name=ft")
        return got["items"] if got and len(got["items"]) == 3 else []

    workers = wait_for(pods, 30, "3 worker pods")
    indexes = set()
    for pod in workers:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["WORLD_SIZE"]["value"] == "3" and env["NNODES"]["value"] == "3"
        assert env["MASTER_ADDR"]["value"] == f"ft-0.{svc['metadata']['name']}.{ns}.svc"
        assert env["MASTER_PORT"]["value"] == "29500"
        field = env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        indexes.add(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        assert pod["spec"]["schedulerName"] == "aiplane"
    assert indexes == {"0", "1", "2"}

    def succeeded() -> dict[str, Any] | None:
        tj = kubectl_json(k8s_cluster, "get", "trainingjob", "ft", "-n", ns)
        return tj if condition(tj, "Succeeded") == "True" else None

    tj = wait_for(succeeded, 60, "TrainingJob Succeeded")
    assert condition(tj, "Admitted") == "True" and condition(tj, "Failed") == "False"
    assert tj["status"]["succeeded"] == 3 and tj["status"]["phase"] == "Succeeded"
    assert tj["status"]["observedGeneration"] == tj["metadata"]["generation"]


def test_scheduled_training_job_yields_a_cronjob(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator
) -> None:
    ns = k8s_namespace
    assert apply_yaml(k8s_cluster, training_yaml("nightly", schedule="0 3 * * *"), ns).returncode == 0
    cron = wait_for(
        lambda: kubectl_json(k8s_cluster, "get", "cronjob", "nightly", "-n", ns), 30, "the CronJob"
    )
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    template = cron["spec"]["jobTemplate"]["spec"]
    assert template["completionMode"] == "Indexed" and template["completions"] == 3
    assert kubectl_json(k8s_cluster, "get", "job", "nightly", "-n", ns) is None


def h100_queue(cluster: K8sCluster, ns: str, gpus: int) -> str:
    """A cluster-scoped Queue named after the test's namespace, with an H100 quota."""
    name = f"q-{ns}"
    queue_yaml = f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Queue
metadata: {{name: {name}}}
spec: {{quota: {{H100: {gpus}}}}}
"""
    assert apply_yaml(cluster, queue_yaml).returncode == 0
    return name


def test_queue_admits_within_quota_and_holds_the_rest(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator, tmp_path: Path
) -> None:
    ns = k8s_namespace
    queue = h100_queue(k8s_cluster, ns, 16)
    try:
        first = training_yaml("first", workers=2, gpus=8, queue=queue, complete_after="4s")
        assert apply_yaml(k8s_cluster, first, ns).returncode == 0

        def admitted(name: str) -> bool:
            return (
                condition(kubectl_json(k8s_cluster, "get", "trainingjob", name, "-n", ns), "Admitted")
                == "True"
            )

        wait_for(lambda: admitted("first"), 30, "first admitted")
        second = training_yaml("second", workers=2, gpus=8, queue=queue, complete_after="2s")
        assert apply_yaml(k8s_cluster, second, ns).returncode == 0

        def pending() -> dict[str, Any] | None:
            tj = kubectl_json(k8s_cluster, "get", "trainingjob", "second", "-n", ns)
            said = (tj.get("status", {}).get("admission") or {}).get("reason")  # the scheduler's words
            return tj if condition(tj, "Admitted") == "False" and said else None

        held = wait_for(pending, 30, "second held by the quota")
        message = held["status"]["admission"]["reason"]
        assert f"queue {queue}: H100 quota 16/16 in use, needs 16" in message, message
        assert kubectl_json(k8s_cluster, "get", "job", "second", "-n", ns)["spec"]["suspend"] is True

        # When the first finishes, its quota frees and the second is admitted and runs.
        def done(name: str) -> bool:
            return (
                condition(kubectl_json(k8s_cluster, "get", "trainingjob", name, "-n", ns), "Succeeded")
                == "True"
            )

        wait_for(lambda: done("first"), 60, "first Succeeded")
        wait_for(lambda: done("second"), 60, "second admitted and Succeeded")
    finally:
        k8s_cluster.kubectl("delete", "queue", queue)  # cluster-scoped: the namespace does not own it


def test_jobs_arriving_together_never_overcommit_the_queue(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator
) -> None:
    """Three 16-GPU jobs applied at once into a 16-GPU queue: one at a time, all finish."""
    ns = k8s_namespace
    queue = h100_queue(k8s_cluster, ns, 16)
    names = ["rush-a", "rush-b", "rush-c"]
    try:
        docs = "---\n".join(
            training_yaml(n, workers=2, gpus=8, queue=queue, complete_after="3s") for n in names
        )
        assert apply_yaml(k8s_cluster, docs, ns).returncode == 0

        def states() -> dict[str, tuple[str | None, str | None]]:
            got = kubectl_json(k8s_cluster, "get", "trainingjobs", "-n", ns)
            items = got["items"] if got else []
            return {
                tj["metadata"]["name"]: (condition(tj, "Admitted"), condition(tj, "Succeeded"))
                for tj in items
            }

        seen_admitted: set[str] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = states()
            running = [n for n, (adm, done) in now.items() if adm == "True" and done != "True"]
            assert len(running) <= 1, f"quota 16 overcommitted: {running} admitted at once ({now})"
            seen_admitted |= {n for n, (adm, _) in now.items() if adm == "True"}
            if len(now) == 3 and all(done == "True" for _, done in now.values()):
                break
            time.sleep(0.2)
        assert seen_admitted == set(names)
        assert all(done == "True" for _, done in states().values()), states()
    finally:
        k8s_cluster.kubectl("delete", "queue", queue)  # cluster-scoped: the namespace does not own it


def test_batch_job_runs_one_shard_per_index(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator
) -> None:
    ns = k8s_namespace
    text = """\
apiVersion: aiplane.dev/v1alpha1
kind: BatchJob
metadata:
  name: embed
  annotations: {aiplane.dev/kwok-complete-after: 1s}
spec:
  task: custom
  image: python:3.11-slim
  command: [python, shard.py]
  input: /data/in.jsonl
  output: /data/out/
  shards: 4
  parallelism: 2
"""
    assert apply_yaml(k8s_cluster, text, ns).returncode == 0
    job = wait_for(lambda: kubectl_json(k8s_cluster, "get", "job", "embed", "-n", ns), 30, "the Indexed Job")
    assert job["spec"]["completions"] == 4 and job["spec"]["parallelism"] == 2
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIPLANE_SHARDS"]["value"] == "4"
    assert "job-completion-index" in env["AIPLANE_SHARD"]["valueFrom"]["fieldRef"]["fieldPath"]

    def finished() -> dict[str, Any] | None:
        bj = kubectl_json(k8s_cluster, "get", "batchjob", "embed", "-n", ns)
        return bj if condition(bj, "Succeeded") == "True" else None

    bj = wait_for(finished, 60, "BatchJob Succeeded")
    assert bj["status"]["succeeded"] == 4 and bj["status"]["completed"] == "4/4"
    listed = k8s_cluster.kubectl("get", "batchjobs", "-n", ns).stdout
    assert "COMPLETED" in listed and "4/4" in listed


EMBED_SHARDS = """\
apiVersion: aiplane.dev/v1alpha1
kind: BatchJob
metadata:
  name: vectors
  annotations: {{aiplane.dev/kwok-complete-after: 5s}}
spec:
  task: embed
  model: minilm
  input: {input}
  output: {output}
  shards: 4
  parallelism: 2
"""


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    """A pod's container env as its process sees it: the downward-API references resolved."""
    env: dict[str, str] = {}
    for item in pod["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        path = item["valueFrom"]["fieldRef"]["fieldPath"]  # metadata.annotations['<key>'] or labels
        where, _, key = path.removeprefix("metadata.").partition("['")
        env[item["name"]] = pod["metadata"][where][key.removesuffix("']")]
    return env


def test_an_embed_batch_job_counts_its_shards_and_its_pods_run_the_local_shard_runner(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator, tmp_path: Path
) -> None:
    """The Indexed Job's pods carry their shard; the status counts shards as KWOK completes
    them; and what each pod would run (its command and env) is the local shard runner."""
    from aiplane.batch import scan

    ns = k8s_namespace
    data, out = tmp_path / "corpus.jsonl", tmp_path / "vectors"
    data.write_text("".join(f'{{"id": "d{i}", "text": "document number {i}"}}\n' for i in range(41)))
    text = EMBED_SHARDS.format(input=data, output=out)
    assert apply_yaml(k8s_cluster, text, ns).returncode == 0
    seen: list[int] = []

    def finished() -> dict[str, Any] | None:
        bj = kubectl_json(k8s_cluster, "get", "batchjob", "vectors", "-n", ns)
        count = bj.get("status", {}).get("shardsCompleted")
        if count is not None and (not seen or seen[-1] != count):
            seen.append(count)
        return bj if condition(bj, "Succeeded") == "True" else None

    bj = wait_for(finished, 90, "BatchJob Succeeded", interval=0.5)
    assert bj["status"]["shardsCompleted"] == 4 and bj["status"]["completed"] == "4/4"
    assert seen == sorted(seen) and seen[-1] == 4 and any(0 < c < 4 for c in seen), seen
    assert "rows" not in bj["status"]  # KWOK's pods ran nothing, so none reported rows
    pods = kubectl_json(k8s_cluster, "get", "pods", "-n", ns, "-l", "aiplane.dev/job=vectors")["items"]
    envs = sorted((pod_env(p) for p in pods), key=lambda e: int(e["AIPLANE_SHARD"]))
    assert [e["AIPLANE_SHARD"] for e in envs] == ["0", "1", "2", "3"]
    assert {e["AIPLANE_MODEL_URL"] for e in envs} == {f"http://minilm.{ns}.svc/v1"}
    (command,) = {tuple(p["spec"]["containers"][0]["command"]) for p in pods}
    assert command == ("aiplane", "run-shard")
    # Run each pod's command with its env here, as the local runtime runs a shard. One
    # substitution: no Service resolves outside the cluster, so the shard embeds in-process
    # (the local runtime's way for an `embeddings` Model) instead of calling minilm's URL.
    binary = Path(sys.executable).with_name(command[0])
    for env in envs:
        del env["AIPLANE_MODEL_URL"]
        done = subprocess.run([str(binary), *command[1:]], env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    state = scan(str(out), 4)
    assert (sorted(state.done), state.rows, state.errors) == ([0, 1, 2, 3], 41, 0)


def test_each_run_of_a_scheduled_job_is_queued_and_frees_its_quota_when_it_ends(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: Operator
) -> None:
    """A CronJob run every minute: its run's Job starts suspended, is admitted on its own
    (``admission.run`` names it), holds the queue's quota while it runs, and gives it back."""
    ns = k8s_namespace
    queue = h100_queue(k8s_cluster, ns, 8)
    try:
        text = training_yaml("minutely", workers=1, gpus=8, queue=queue, schedule="* * * * *")
        assert apply_yaml(k8s_cluster, text, ns).returncode == 0
        used: set[str] = set()

        def tj() -> dict[str, Any]:
            used.add(kubectl_json(k8s_cluster, "get", "queue", queue).get("status", {}).get("used", ""))
            return kubectl_json(k8s_cluster, "get", "trainingjob", "minutely", "-n", ns)

        # the first fire comes within a minute; the scheduler admits that run by name
        running = wait_for(lambda: (t := tj())["status"].get("activeRun") and t, 90, "a run", interval=0.5)
        run = running["status"]["activeRun"]
        admitted = wait_for(
            lambda: (t := tj())["status"].get("admission", {}).get("run") == run and t, 30, "the run admitted"
        )
        assert admitted["status"]["admission"]["admitted"] is True
        job = kubectl_json(k8s_cluster, "get", "job", run, "-n", ns)
        assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
        wait_for(lambda: tj() and "H100 8/8" in used, 30, "the run holding the quota", interval=0.5)

        def between_runs() -> dict[str, Any] | None:
            t = tj()
            return t if t["status"].get("phase") == "Scheduled" and not t["status"].get("activeRun") else None

        # KWOK completes its pod after 2 s: the run ends, the job waits for its next fire
        done = wait_for(between_runs, 60, "the run ended", interval=0.5)
        assert done["status"]["lastScheduleTime"]
        assert kubectl_json(k8s_cluster, "get", "job", run, "-n", ns)["status"].get("succeeded") == 1

        def quota_used() -> str:
            return str(kubectl_json(k8s_cluster, "get", "queue", queue).get("status", {}).get("used"))

        wait_for(lambda: quota_used() == "H100 0/8", 30, "the quota given back", interval=0.5)
    finally:
        k8s_cluster.kubectl("delete", "trainingjob", "minutely", "-n", ns)
        k8s_cluster.kubectl("delete", "queue", queue)
