"""Model status from its Deployment and pods; job status from its Job and the admission record."""

from __future__ import annotations

from typing import Any

from aiplane.runtime.kubernetes.objects import is_admitted
from aiplane.runtime.kubernetes.status import job_status, model_status, pod_trouble

NOW = "2026-11-29T05:00:00Z"
UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector.",
}


def deployment(replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": ready},
    }  # fmt: skip


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def degraded(status: dict[str, Any]) -> tuple[str, str, str]:
    cond = next(c for c in status["conditions"] if c["type"] == "Degraded")
    return cond["status"], cond["reason"], cond["message"]


def test_an_unschedulable_pod_degrades_the_model_with_the_schedulers_words() -> None:
    pods = [pod("m-1", phase="Running"), pod("m-2", phase="Pending", conditions=[UNSCHEDULABLE])]
    status = model_status(1, deployment(2, 1), "app=m", {}, NOW, pods)
    assert degraded(status) == ("True", "Unschedulable", f"pod m-2: {UNSCHEDULABLE['message']}")


def test_a_container_stuck_pulling_its_image_degrades_the_model() -> None:
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "vllm/vllm-openai:nope"'}
    stuck = pod("m-1", containerStatuses=[{"name": "server", "state": {"waiting": waiting}}])
    assert pod_trouble([stuck]) == (
        "ImagePullBackOff",
        'pod m-1: container server: Back-off pulling image "vllm/vllm-openai:nope"',
    )


def test_a_crash_looping_init_container_counts_too() -> None:
    waiting = {"reason": "CrashLoopBackOff"}
    stuck = pod("m-1", initContainerStatuses=[{"name": "preload", "state": {"waiting": waiting}}])
    assert pod_trouble([stuck]) == ("CrashLoopBackOff", "pod m-1: container preload: CrashLoopBackOff")


def test_pods_still_starting_are_not_trouble() -> None:
    creating = {"reason": "ContainerCreating"}
    starting = pod("m-1", containerStatuses=[{"name": "server", "state": {"waiting": creating}}])
    status = model_status(1, deployment(1, 0), "app=m", {}, NOW, [starting])
    assert degraded(status) == ("False", "AsExpected", "")


def test_pods_are_not_consulted_when_every_replica_is_ready() -> None:
    stale = pod("m-old", phase="Pending", conditions=[UNSCHEDULABLE])  # e.g. a surge pod mid-rollout
    status = model_status(1, deployment(1, 1), "app=m", {}, NOW, [stale])
    assert degraded(status) == ("False", "AsExpected", "")


def job(active: int) -> dict[str, Any]:
    return {"spec": {"suspend": False}, "status": {"active": active}}


def test_a_preempted_job_in_its_grace_period_is_preempted_not_running() -> None:
    preempted = {"admitted": False, "reason": "requeued", "preempted": {"by": "TrainingJob/ns/high"}}
    status = job_status(1, job(active=2), preempted, 2, {}, NOW)
    assert status["phase"] == "Preempted" and status["active"] == 2
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Preempted"] == "True" and conds["Running"] == "True"  # pods still checkpointing


def test_an_admitted_job_runs_and_a_readmitted_one_is_no_longer_preempted() -> None:
    again = {"admitted": True, "reason": "admitted", "preempted": {"by": "TrainingJob/ns/high"}}
    status = job_status(1, job(active=2), again, 2, {}, NOW)
    assert status["phase"] == "Running"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Preempted"] == "False"
    assert job_status(1, job(active=0), {"admitted": False}, 2, {}, NOW)["phase"] == "Pending"


def test_a_scheduled_job_reports_its_run_under_way_or_scheduled_between_runs() -> None:
    cron = {"status": {"lastScheduleTime": "2026-12-04T03:00:00Z", "active": [{"name": "nightly-29"}]}}
    run = {"metadata": {"name": "nightly-29"}, "status": {"active": 2}}
    admission = {"admitted": True, "run": "nightly-29", "reason": "fits"}
    now = "2026-12-04T03:00:05Z"
    during = job_status(1, run, admission, 2, {}, now, cron=cron)
    assert (during["phase"], during["activeRun"], during["active"]) == ("Running", "nightly-29", 2)
    assert during["lastScheduleTime"] == "2026-12-04T03:00:00Z"
    between = job_status(1, None, admission, 2, during, now, cron={"status": {"active": []}})
    assert (between["phase"], between["activeRun"]) == ("Scheduled", None)
    # the admission of one run does not admit the next
    body = {"spec": {"schedule": "0 3 * * *"}, "status": {"activeRun": "nightly-30", "admission": admission}}
    assert not is_admitted(body)
    assert is_admitted({**body, "status": {**body["status"], "activeRun": "nightly-29"}})
    assert is_admitted({"spec": {}, "status": {"admission": {"admitted": True}}})
