"""Queues, quotas, preemption and placement on a real control plane, end to end.

The operator lowers the jobs and follows ``status.admission`` into ``suspend``; the
aiplane scheduler (started with a 3 s reservation bound, so starvation is quick to show)
admits, preempts and binds. KWOK runs bound pods and completes them after the delay in
their ``aiplane.dev/kwok-complete-after`` annotation. The fleet: 4 nodes of 8 H100 (32
GPUs), 2 of 8 A100, 2 CPU nodes. Every test leaves the H100 nodes empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.conftest import K8sCluster
from tests.k8s.operator_fixture import (
    Operator,
    SchedulerProcess,
    apply_yaml,
    install_crds,
    kubectl_json,
    live_pods_on,
    start_scheduler,
    wait_for,
)

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def platform(
    k8s_cluster: K8sCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Operator, SchedulerProcess]]:
    install_crds(k8s_cluster)
    logs = tmp_path_factory.mktemp("queues")
    op = Operator(k8s_cluster, logs).start()
    sched = start_scheduler(k8s_cluster, logs, "--reserve-after", "3")
    yield op, sched
    sched.stop()
    op.stop()


@pytest.fixture
def ns(
    k8s_cluster: K8sCluster, k8s_namespace: str, platform: tuple[Operator, SchedulerProcess]
) -> Iterator[str]:
    wait_for(lambda: not live_pods_on(k8s_cluster, "gpu-h100"), 60, "H100 nodes free of other tests' pods")
    yield k8s_namespace
    k8s_cluster.kubectl("delete", "trainingjobs,batchjobs", "--all", "-n", k8s_namespace, "--wait=false")
    wait_for(lambda: not live_pods_on(k8s_cluster, "gpu-h100"), 60, "H100 nodes emptied")


def training(
    name: str,
    *,
    workers: int,
    gpus: float = 8,
    queue: str = "default",
    priority: int = 0,
    complete_after: str = "600s",
    grace: str = "120s",
) -> str:
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
  queue: {queue}
  priority: {priority}
  gracePeriod: {grace}
"""


def queue_yaml(name: str, h100: int, cohort: str) -> str:
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Queue
metadata: {{name: {name}}}
spec: {{quota: {{H100: {h100}}}, cohort: {cohort}}}
"""


def apply(cluster: K8sCluster, text: str, ns: str | None = None) -> None:
    out = apply_yaml(cluster, text, ns)
    assert out.returncode == 0, out.stderr


def tj(cluster: K8sCluster, ns: str, name: str) -> dict[str, Any]:
    got = kubectl_json(cluster, "get", "trainingjob", name, "-n", ns)
    assert got is not None, f"trainingjob {name} is gone"
    return dict(got)


def admission(cluster: K8sCluster, ns: str, name: str) -> dict[str, Any]:
    return dict(tj(cluster, ns, name).get("status", {}).get("admission") or {})


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def running_pods(cluster: K8sCluster, ns: str, job: str) -> list[dict[str, Any]]:
    pods = kubectl_json(cluster, "get", "pods", "-n", ns, "-l", f"aiplane.dev/job={job}")
    return [
        p
        for p in pods["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def phase(cluster: K8sCluster, ns: str, name: str) -> str | None:
    return tj(cluster, ns, name).get("status", {}).get("phase")


def events(cluster: K8sCluster, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    got = kubectl_json(
        cluster, "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name},reason={reason}"
    )
    return list(got["items"]) if got else []


def test_cohort_queues_borrow_idle_quota_and_the_lender_reclaims_it(k8s_cluster: K8sCluster, ns: str) -> None:
    lender, borrower, cohort = f"a-{ns}", f"b-{ns}", f"c-{ns}"
    apply(k8s_cluster, queue_yaml(lender, 16, cohort) + "---\n" + queue_yaml(borrower, 16, cohort))
    try:
        # the borrower's jobs outrank the lender's: a reclaim takes lent quota back whatever
        # the priority, and the freed GPUs must then go to the lender, not back to the victim
        for name in ("b-1", "b-2"):
            apply(k8s_cluster, training(name, workers=2, queue=borrower, priority=5), ns)
        wait_for(
            lambda: all(admission(k8s_cluster, ns, n).get("admitted") for n in ("b-1", "b-2")), 60, "both"
        )
        borrowed = {n: admission(k8s_cluster, ns, n)["borrowed"] for n in ("b-1", "b-2")}
        assert sorted(borrowed.values()) == [0, 16], borrowed  # the second runs on the lender's idle quota
        wait_for(lambda: len(running_pods(k8s_cluster, ns, "b-1")) == 2, 60, "b-1 running")
        status = wait_for(
            lambda: (
                (q := kubectl_json(k8s_cluster, "get", "queue", borrower)).get("status", {}).get("borrowed")
                == "H100 16"
                and q
            ),
            30,
            "borrower's queue status",
        )
        assert status["status"]["used"] == "H100 32/16" and status["status"]["admittedWorkloads"] == 2
        printed = k8s_cluster.kubectl("get", "queue", borrower).stdout
        assert "H100 32/16" in printed and "H100 16" in printed, printed

        apply(k8s_cluster, training("a-1", workers=2, queue=lender), ns)  # the lender's own work
        # the borrowing queue gives back what it borrowed: one of its jobs (both are equal) stops
        gone = wait_for(
            lambda: next(
                (a for n in ("b-1", "b-2") if (a := admission(k8s_cluster, ns, n)).get("preempted")), None
            ),
            60,
            "reclaim",
        )
        victim = next(n for n in ("b-1", "b-2") if admission(k8s_cluster, ns, n).get("preempted"))
        assert gone["preempted"]["by"] == f"TrainingJob/{ns}/a-1"
        assert "requeued" in gone["reason"]
        wait_for(lambda: len(running_pods(k8s_cluster, ns, "a-1")) == 2, 90, "the lender's job running")
        assert admission(k8s_cluster, ns, "a-1")["borrowed"] == 0
        # the operator reports on its status timer: the phase follows within a few ticks
        wait_for(lambda: phase(k8s_cluster, ns, victim) == "Preempted", 30, "the victim's phase")
        assert conditions(tj(k8s_cluster, ns, victim))["Preempted"]["status"] == "True"
        keeper = next(n for n in borrowed if n != victim)
        assert len(running_pods(k8s_cluster, ns, keeper)) == 2  # only the borrower over quota lost its GPUs
        # a few cycles on, nothing has flipped back: one reclaim, the victim still waits
        time.sleep(3)
        assert len(running_pods(k8s_cluster, ns, "a-1")) == 2 and not running_pods(k8s_cluster, ns, victim)
        assert sum(e.get("count") or 1 for e in events(k8s_cluster, ns, victim, "Preempted")) == 1
    finally:
        k8s_cluster.kubectl("delete", "queue", lender, borrower)


def test_a_high_priority_job_preempts_with_a_grace_signal_and_the_victim_resumes(
    k8s_cluster: K8sCluster, ns: str
) -> None:
    apply(k8s_cluster, training("low", workers=4, priority=0, complete_after="12s", grace="30s"), ns)
    wait_for(lambda: len(running_pods(k8s_cluster, ns, "low")) == 4, 60, "low running on all 4 H100 nodes")
    first_uids = {p["metadata"]["uid"] for p in running_pods(k8s_cluster, ns, "low")}
    assert {p["spec"]["terminationGracePeriodSeconds"] for p in running_pods(k8s_cluster, ns, "low")} == {30}

    apply(k8s_cluster, training("high", workers=2, priority=100, complete_after="4s"), ns)

    def signalled() -> list[dict[str, Any]]:
        pods = kubectl_json(k8s_cluster, "get", "pods", "-n", ns, "-l", "aiplane.dev/job=low")["items"]
        return [p for p in pods if "aiplane.dev/preempted" in p["metadata"].get("annotations", {})]

    marked = wait_for(signalled, 60, "the grace signal on low's pods")
    assert (
        f"preempted by TrainingJob/{ns}/high" in marked[0]["metadata"]["annotations"]["aiplane.dev/preempted"]
    )
    record = admission(k8s_cluster, ns, "low")
    assert record["admitted"] is False and record["preempted"]["by"] == f"TrainingJob/{ns}/high"
    assert events(k8s_cluster, ns, "low", "Preempted"), "no Preempted event on the TrainingJob"
    wait_for(
        lambda: kubectl_json(k8s_cluster, "get", "job", "low", "-n", ns)["spec"]["suspend"], 30, "suspended"
    )
    assert conditions(tj(k8s_cluster, ns, "low"))["Preempted"]["status"] == "True"
    assert phase(k8s_cluster, ns, "low") != "Failed"  # requeued, not failed

    wait_for(lambda: phase(k8s_cluster, ns, "high") == "Succeeded", 90, "high Succeeded")
    # low is admitted again, its pods are new (resumed from its checkpoint), and it finishes
    wait_for(lambda: admission(k8s_cluster, ns, "low").get("admitted"), 60, "low re-admitted")
    wait_for(lambda: len(running_pods(k8s_cluster, ns, "low")) == 4, 60, "low running again")
    assert not first_uids & {p["metadata"]["uid"] for p in running_pods(k8s_cluster, ns, "low")}
    wait_for(lambda: phase(k8s_cluster, ns, "low") == "Succeeded", 90, "low Succeeded after resuming")


def test_a_gang_never_runs_partly_and_a_starving_gang_gets_its_reservation(
    k8s_cluster: K8sCluster, ns: str
) -> None:
    apply(k8s_cluster, training("small-1", workers=1, gpus=1, complete_after="15s"), ns)
    wait_for(lambda: running_pods(k8s_cluster, ns, "small-1"), 60, "a small job on one H100 node")
    apply(k8s_cluster, training("gang", workers=4, gpus=8, complete_after="3s"), ns)

    def reason() -> str:
        return str(admission(k8s_cluster, ns, "gang").get("reason") or "")

    wait_for(lambda: "reserved" in reason(), 30, "the gang's reservation after 3 s")
    assert "gang of 4 pods, 3 fit" in reason(), reason()
    assert kubectl_json(k8s_cluster, "get", "job", "gang", "-n", ns)["spec"]["suspend"] is True
    assert not kubectl_json(k8s_cluster, "get", "pods", "-n", ns, "-l", "aiplane.dev/job=gang")["items"]

    # small work arriving now would fit beside small-1, but the nodes are held for the gang
    apply(k8s_cluster, training("small-2", workers=1, gpus=1, complete_after="3s"), ns)
    wait_for(
        lambda: "reserved for TrainingJob" in str(admission(k8s_cluster, ns, "small-2").get("reason")),
        30,
        "small-2 held off the reserved nodes",
    )
    assert not running_pods(k8s_cluster, ns, "small-2")
    # when small-1 ends the gang starts, all 4 pods at once, and small-2 runs after it
    wait_for(lambda: len(running_pods(k8s_cluster, ns, "gang")) == 4, 90, "the gang running")
    wait_for(lambda: phase(k8s_cluster, ns, "small-2") == "Succeeded", 90, "small-2 after the gang")


def test_models_with_half_a_gpu_share_one_device(k8s_cluster: K8sCluster, ns: str) -> None:
    model = """\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {name: half}
spec:
  engine: vllm
  source: hf://Qwen/Qwen2.5-0.5B-Instruct
  resources: {gpus: 0.5, gpuModel: H100, memory: 8Gi}
  replicas: {min: 2, max: 2}
"""
    apply(k8s_cluster, model, ns)

    def bound() -> list[dict[str, Any]] | None:
        pods = kubectl_json(k8s_cluster, "get", "pods", "-n", ns, "-l", "aiplane.dev/model=half")["items"]
        pods = [p for p in pods if p["spec"].get("nodeName")]
        return pods if len(pods) == 2 else None

    pods = wait_for(bound, 90, "both replicas bound")
    assert pods[0]["spec"]["schedulerName"] == "aiplane"
    assert len({p["spec"]["nodeName"] for p in pods}) == 1
    devices = {p["metadata"]["annotations"]["aiplane.dev/gpu-devices"] for p in pods}
    assert len(devices) == 1, devices  # one device, two halves
    k8s_cluster.kubectl("delete", "model", "half", "-n", ns)


def test_a_pending_job_says_why_in_status_event_and_printer_column(k8s_cluster: K8sCluster, ns: str) -> None:
    name, cohort = f"q-{ns}", f"c-{ns}"
    apply(k8s_cluster, queue_yaml(name, 40, cohort))
    try:
        apply(k8s_cluster, training("wide", workers=5, queue=name), ns)  # the quota fits, the nodes do not
        record = wait_for(
            lambda: (a := admission(k8s_cluster, ns, "wide")).get("reason") and a, 30, "a reason"
        )
        why = record["reason"]
        assert f"queue {name}: 40 H100 fit its quota" in why, why
        assert "gang of 5 pods, 4 fit" in why and "nodes fit" in why, why
        wait_for(
            lambda: conditions(tj(k8s_cluster, ns, "wide")).get("Admitted", {}).get("message") == why,
            30,
            "the Admitted condition carrying the reason",
        )
        assert conditions(tj(k8s_cluster, ns, "wide"))["Admitted"]["status"] == "False"
        (event,) = events(k8s_cluster, ns, "wide", "Pending")[:1]
        assert event["message"] == why and event["source"]["component"] == "aiplane-scheduler"
        printed = k8s_cluster.kubectl("get", "trainingjob", "wide", "-n", ns).stdout
        assert "REASON" in printed and "gang of 5 pods, 4 fit" in printed, printed
    finally:
        k8s_cluster.kubectl("delete", "queue", name)
