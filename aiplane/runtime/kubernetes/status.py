"""Status of aiplane objects on Kubernetes, computed from what they own. Pure functions.

Follows the API conventions: ``observedGeneration``, and ``conditions`` whose
``lastTransitionTime`` moves only when their status flips.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiplane import progress
from aiplane.runtime.kubernetes.constants import COMPLETION_INDEX_ANNOTATION

Manifest = dict[str, Any]


def condition(
    type_: str, status: bool, reason: str, message: str, now: str, previous: list[Manifest] | None
) -> Manifest:
    value = "True" if status else "False"
    before = next((c for c in previous or [] if c.get("type") == type_), None)
    since = before["lastTransitionTime"] if before and before.get("status") == value else now
    return {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": since}


def _deployment_condition(deployment: Manifest, type_: str) -> Manifest | None:
    return next(
        (c for c in deployment.get("status", {}).get("conditions", []) if c.get("type") == type_), None
    )


# Container waits that do not clear by waiting: a user has to act.
STUCK_WAITS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"}
)


def replicas_short(deployment: Manifest | None) -> bool:
    """Fewer ready than wanted: then the pods are worth reading, for why."""
    if deployment is None:
        return False
    wanted = int(deployment.get("spec", {}).get("replicas", 1))
    return int(deployment.get("status", {}).get("readyReplicas") or 0) < wanted


def pod_trouble(pods: list[Manifest]) -> tuple[str, str] | None:
    """Why a model's pods are not becoming ready, as (reason, message), from the first pod
    that says so: the scheduler's verdict, or a container stuck waiting."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status", {})
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return "Unschedulable", f"pod {name}: {cond.get('message', 'cannot be scheduled')}"
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITS:
                detail = waiting.get("message") or waiting["reason"]
                return waiting["reason"], f"pod {name}: container {container.get('name')}: {detail}"
    return None


def model_status(
    generation: int,
    deployment: Manifest | None,
    selector: str,
    previous: Manifest,
    now: str,
    pods: list[Manifest] | None = None,
) -> Manifest:
    """Ready/Progressing/Degraded and replica counts from the model's Deployment, and from
    its pods why they are not ready (the Deployment alone reports a Pending pod as fine)."""
    old = previous.get("conditions")
    if deployment is None:
        conditions = [
            condition("Ready", False, "NoDeployment", "the Deployment does not exist yet", now, old),
            condition("Progressing", True, "Creating", "creating the Deployment", now, old),
            condition("Degraded", False, "NoDeployment", "", now, old),
        ]
        return {"observedGeneration": generation, "replicas": 0, "readyReplicas": 0, "ready": "0/0",
                "selector": selector, "conditions": conditions}  # fmt: skip
    spec_replicas = int(deployment.get("spec", {}).get("replicas", 1))
    st = deployment.get("status", {})
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    rolled = st.get("observedGeneration", 0) >= deployment.get("metadata", {}).get("generation", 0)
    if spec_replicas == 0:
        ready_cond = condition("Ready", True, "ScaledToZero", "no replicas wanted", now, old)
    elif ready >= spec_replicas:
        ready_cond = condition("Ready", True, "AllReplicasReady", f"{ready}/{spec_replicas} ready", now, old)
    else:
        ready_cond = condition("Ready", False, "ReplicasNotReady", f"{ready}/{spec_replicas} ready", now, old)
    rolling = not rolled or updated < spec_replicas or int(st.get("replicas") or 0) > spec_replicas
    progressing = condition(
        "Progressing",
        rolling,
        "RollingOut" if rolling else "Complete",
        f"{updated}/{spec_replicas} updated" if rolling else "all replicas run the current spec",
        now,
        old,
    )
    failure = _deployment_condition(deployment, "ReplicaFailure")
    stalled = _deployment_condition(deployment, "Progressing")
    degraded_reason, degraded_message = "AsExpected", ""
    trouble = pod_trouble(pods or []) if replicas_short(deployment) else None
    if failure and failure.get("status") == "True":
        degraded_reason, degraded_message = "ReplicaFailure", failure.get("message", "replica failure")
    elif stalled and stalled.get("reason") == "ProgressDeadlineExceeded":
        degraded_reason = "ProgressDeadlineExceeded"
        degraded_message = stalled.get("message", "progress deadline exceeded")
    elif trouble:
        degraded_reason, degraded_message = trouble
    degraded = condition("Degraded", bool(degraded_message), degraded_reason, degraded_message, now, old)
    return {
        "observedGeneration": generation,
        "replicas": int(st.get("replicas") or 0),
        "readyReplicas": ready,
        "ready": f"{ready}/{spec_replicas}",
        "selector": selector,
        "conditions": [ready_cond, progressing, degraded],
    }


def completion_index(pod: Manifest) -> str | None:
    """An Indexed Job pod's index: a BatchJob's shard, a TrainingJob's rank."""
    return (pod.get("metadata", {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)


def shard_counts(pods: list[Manifest]) -> Manifest:
    """Rows and bad rows of a BatchJob's finished shards, from their termination messages.

    The shard runner writes ``{"shard", "rows", "errors"}`` to ``/dev/termination-log``;
    the kubelet puts it in the container's terminated state. Only Succeeded pods count,
    one per completion index (a retried index has one success at most), so a shard
    that failed and ran again counts once. Pods that left no message (a command in the
    user's own image, KWOK's simulated pods) count as shards, not rows.
    """
    by_index: dict[str, Manifest] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        index = completion_index(pod)
        if index is None:
            continue
        report: Manifest = {}
        for container in pod["status"].get("containerStatuses") or []:
            message = ((container.get("state") or {}).get("terminated") or {}).get("message")
            with contextlib.suppress(ValueError, TypeError):
                parsed = json.loads(message or "")
                if isinstance(parsed, dict):
                    report = parsed
        by_index[index] = report
    reported = [r for r in by_index.values() if isinstance(r.get("rows"), int)]
    out: Manifest = {"shardsCompleted": len(by_index)}
    if reported:
        out |= {
            "rows": sum(int(r["rows"]) for r in reported),
            "errors": sum(int(r.get("errors") or 0) for r in reported),
            "shardsReported": len(reported),
        }
    return out


def rank_zero_pod(pods: list[Manifest]) -> Manifest | None:
    """The pod whose log holds a TrainingJob's progress: rank 0, the newest run's, running first.

    Rank 0 reports progress (docs/jobs.md); a restarted gang, or a CronJob's next run,
    has a new rank-0 pod, and its log is the one that moves.
    """
    zeros = [
        p
        for p in pods
        if completion_index(p) == "0"
        and (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")
    ]
    if not zeros:
        return None
    return max(
        zeros,
        key=lambda p: (p["status"]["phase"] == "Running", p["metadata"].get("creationTimestamp") or ""),
    )


def training_progress(log: str, previous: Manifest) -> Manifest:
    """``status.progress``: the progress lines of rank 0's log, over what the status had."""
    return progress.merge_lines(log.splitlines(), previous)


def _job_finished(job: Manifest) -> str | None:
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return None


def job_status(
    generation: int,
    job: Manifest | None,
    admission: Manifest,
    completions: int,
    previous: Manifest,
    now: str,
    cron: Manifest | None = None,
) -> Manifest:
    """Admitted/Running/Succeeded/Failed from the Job (for a scheduled job, its run's Job,
    or ``Scheduled`` between runs, from its CronJob).

    ``admission`` is the scheduler's ``status.admission``; its reason becomes the
    ``Admitted`` condition's message (quota and placement, "why pending"), and a
    preemption shows as ``Preempted=True`` until the job is admitted again.
    """
    old = previous.get("conditions")
    admitted = bool(admission.get("admitted"))
    reason = str(admission.get("reason") or "waiting for the aiplane scheduler")
    preempted = admission.get("preempted") or {}
    why = "QuotaReserved" if admitted else ("Preempted" if preempted else "Pending")
    conds = [
        condition("Admitted", admitted, why, reason, now, old),
        condition(
            "Preempted",
            bool(preempted) and not admitted,
            "Preempted" if preempted else "NotPreempted",
            str(preempted.get("reason", "")),
            now,
            old,
        ),
    ]
    status: Manifest = {"observedGeneration": generation, "completions": completions}
    if cron is not None and job is None:  # between runs: no quota held, nothing queued
        last = cron.get("status", {}).get("lastScheduleTime")
        active = len(cron.get("status", {}).get("active") or [])
        conds += [
            condition("Running", active > 0, "Scheduled", f"last run {last or 'never'}", now, old),
            condition("Succeeded", False, "Scheduled", "a scheduled job runs until deleted", now, old),
            condition("Failed", False, "Scheduled", "", now, old),
        ]
        status |= {"phase": "Scheduled", "succeeded": 0, "lastScheduleTime": last, "activeRun": None}
        return status | {"conditions": conds}
    if cron is not None and job is not None:  # a run under way: its Job's status, as for any job
        last = cron.get("status", {}).get("lastScheduleTime")
        status |= {"lastScheduleTime": last, "activeRun": job["metadata"]["name"]}
    st = (job or {}).get("status", {})
    succeeded, failed, active = (int(st.get(k) or 0) for k in ("succeeded", "failed", "active"))
    finished = _job_finished(job) if job else None
    running = active > 0 and finished is None
    phase = finished and ("Succeeded" if finished == "Complete" else "Failed")
    # A preempted job whose pods are still in their checkpoint grace is stopping, not Running.
    evicted = bool(preempted) and not admitted
    waiting = "Admitted" if admitted else "Pending"
    phase = phase or ("Preempted" if evicted else "Running" if running else waiting)
    done, lost = finished == "Complete", finished == "Failed"
    progress = f"{succeeded}/{completions} completed"
    conds += [
        condition(
            "Running", running, "PodsActive" if running else "NotRunning", f"{active} active", now, old
        ),
        condition("Succeeded", done, "Complete" if done else "NotComplete", progress, now, old),
        condition("Failed", lost, "JobFailed" if lost else "NotFailed", f"{failed} failed pods", now, old),
    ]
    return status | {
        "phase": phase,
        "succeeded": succeeded,
        "completed": f"{succeeded}/{completions}",  # the COMPLETED printer column
        "failed": failed,
        "active": active,
        "conditions": conds,
    }
