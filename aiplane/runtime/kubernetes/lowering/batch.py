"""``BatchJob`` -> one Indexed Job: completion index ``i`` processes shard ``i``.

Shards are independent, so each index retries on its own (``backoffLimitPerIndex``):
one bad shard neither restarts the others nor stops the job early, and the shards that
finished stay finished (the runner writes each shard's output atomically). The Job is
queued like a TrainingJob (``suspend``, ``schedulerName: aiplane``, the queue label)
but has no gang: any number of its pods may run (``aiplane.dev/gang-size: 1`` tells the
scheduler to place each shard on its own).

Pods run ``aiplane run-shard``, the shard runner local shards run too, with
:func:`aiplane.runtime.job_env.shard_env` plus ``AIPLANE_SHARD`` (the completion
index) and, for ``embed``/``generate``, ``AIPLANE_MODEL_URL`` (the Model's Service,
``http://<model>.<ns>.svc/v1``). A ``command`` task in the user's own image runs its
command as it is. ``pvc://claim/path`` inputs and outputs are mounted
under ``/data/<claim>`` and passed as local paths; other URIs pass through unchanged.
"""

from __future__ import annotations

import math

from aiplane.api import BatchJob, parse_duration
from aiplane.runtime.job_env import RUNNER_ARGV, shard_env
from aiplane.runtime.kubernetes.constants import (
    AIPLANE_UID,
    ANNOTATION_GANG_SIZE,
    ANNOTATION_PRIORITY,
    COMPLETION_INDEX_ANNOTATION,
    LABEL_JOB,
    SCHEDULER_NAME,
)
from aiplane.runtime.kubernetes.lowering.common import (
    DEFAULT_OPTIONS,
    SECURE_DEFAULTS,
    LoweringOptions,
    Manifest,
    OwnerRef,
    env_list,
    fail,
    gpu_placement,
    labels,
    metadata,
    resources,
    split_pvc_uri,
    stop_is_not_failure,
    user_pod_annotations,
)
from aiplane.runtime.kubernetes.lowering.training import queue_labels

APP = "batchjob"
COMPONENT = "batch-shard"
DATA_MOUNT = "/data"
RUNNER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


def _data(job: BatchJob) -> tuple[list[Manifest], list[Manifest], dict[str, str]]:
    """(volumes, mounts, env) for input and output; a claim is writable when output uses it."""
    writable: dict[str, bool] = {}
    env: dict[str, str] = {}
    for name, uri, write in (
        ("AIPLANE_INPUT", job.spec.input, False),
        ("AIPLANE_OUTPUT", job.spec.output, True),
    ):
        named = split_pvc_uri(uri)
        if named is None:
            env[name] = uri
            continue
        claim, sub = named
        writable[claim] = writable.get(claim, False) or write
        env[name] = f"{DATA_MOUNT}/{claim}/{sub}".rstrip("/")
    volumes, mounts = [], []
    for i, (claim, write) in enumerate(writable.items()):
        volumes.append(
            {"name": f"data-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not write}}
        )
        mounts.append({"name": f"data-{i}", "mountPath": f"{DATA_MOUNT}/{claim}", "readOnly": not write})
    return volumes, mounts, env


def model_url(model: str, namespace: str) -> str:
    return f"http://{model}.{namespace}.svc/v1"


def lower_batch_job(
    job: BatchJob,
    namespace: str,
    owner: OwnerRef | None = None,
    suspend: bool = True,
    *,
    options: LoweringOptions = DEFAULT_OPTIONS,
) -> list[Manifest]:
    spec = job.spec
    last_host = f"{job.name}-{spec.shards - 1}"
    if len(last_host) > 63:
        raise fail(job, "metadata.name", f"too long for pod hostnames ({last_host!r} exceeds 63 characters)")
    volumes, mounts, data_env = _data(job)
    static = shard_env(job) | data_env
    if spec.model:
        static["AIPLANE_MODEL_URL"] = model_url(spec.model, namespace)
    gpu = gpu_placement(job, spec.gpus_per_shard, None, "spec.gpusPerShard")
    # A command in the user's own image runs as it is (the image need not hold aiplane);
    # everything else runs the shard runner of the aiplane image, which runs a command
    # task's argv itself (AIPLANE_COMMAND) and gives it atomic, skip-if-done outputs.
    own_runner = not (spec.task == "command" and spec.image)
    container: Manifest = {
        "name": "shard",
        "image": spec.image or options.image,
        "command": list(RUNNER_ARGV if own_runner else spec.command),
        "env": env_list(static, {"AIPLANE_SHARD": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}),
        # the runner writes {"shard", "rows", "errors"} to /dev/termination-log, and the
        # operator counts rows from it; a shard that dies leaves its log's tail instead
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if own_runner:
        runner = resources(None, None, gpu)
        container["resources"] = {
            "requests": dict(RUNNER_RESOURCES["requests"]),
            "limits": {**RUNNER_RESOURCES["limits"], **runner.get("limits", {})},
        }
        if not spec.image:
            container["securityContext"] = {
                **SECURE_DEFAULTS,
                "runAsNonRoot": True,
                "runAsUser": AIPLANE_UID,
            }
    else:
        container["resources"] = resources(None, None, gpu)
    if mounts:
        container["volumeMounts"] = mounts
    pod: Manifest = {
        "restartPolicy": "Never",  # required by backoffLimitPerIndex
        "schedulerName": SCHEDULER_NAME,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": math.ceil(parse_duration(spec.grace_period)),
    }
    gpu.apply(pod)
    pod["containers"] = [container]
    if volumes:
        pod["volumes"] = volumes
    job_labels = labels(job, APP, COMPONENT, **{LABEL_JOB: job.name}, **queue_labels(job, spec.queue))
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata(job.name, namespace, job_labels, owner),
            "spec": {
                "completionMode": "Indexed",
                "completions": spec.shards,
                "parallelism": min(spec.parallelism, spec.shards),
                "suspend": suspend,
                "backoffLimitPerIndex": spec.max_retries,
                "podFailurePolicy": stop_is_not_failure("shard"),
                "template": {
                    "metadata": {
                        "labels": job_labels,
                        "annotations": user_pod_annotations(job)
                        | {ANNOTATION_PRIORITY: str(spec.priority), ANNOTATION_GANG_SIZE: "1"}
                        | gpu.annotations,
                    },
                    "spec": pod,
                },
            },
        }
    ]
