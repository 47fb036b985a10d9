"""``TrainingJob`` -> headless Service + Indexed Job (or a CronJob of it), torchrun-ready.

One pod per worker; the completion index is the node rank. Pod ``i`` is reachable as
``<job>-<i>.<job>-workers.<ns>.svc`` (an Indexed Job's hostname is ``<job>-<i>``, and
``subdomain`` names the headless Service), so rank 0 is the rendezvous address.

The environment serves both ways of starting PyTorch:

* ``torchrun train.py``: torchrun takes its arguments from ``PET_*`` variables
  (``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``...), and sets each child's
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` itself;
* ``python train.py`` with ``init_process_group("env://")``: one process per pod, so
  ``RANK`` = ``NODE_RANK`` and ``WORLD_SIZE`` = workers.

Queued work: pods name ``schedulerName: aiplane``, carry ``aiplane.dev/queue`` and the
gang size, and the Job starts ``suspend``ed until the queue admits it. Priority is an
annotation, not ``spec.priority``: the Priority admission plugin rejects pods that set
that field without a PriorityClass.
"""

from __future__ import annotations

import math

from aiplane.api import Resource, TrainingJob, parse_duration
from aiplane.runtime.kubernetes.constants import (
    ANNOTATION_GANG_SIZE,
    ANNOTATION_PRIORITY,
    COMPLETION_INDEX_ANNOTATION,
    JOB_NAME_LABEL,
    LABEL_JOB,
    LABEL_QUEUE,
    SCHEDULER_NAME,
)
from aiplane.runtime.kubernetes.lowering.common import (
    DEFAULT_OPTIONS,
    LoweringOptions,
    Manifest,
    OwnerRef,
    check_service_name,
    env_list,
    fail,
    gpu_placement,
    is_label_value,
    labels,
    metadata,
    pvc,
    resources,
    split_pvc_uri,
    stop_is_not_failure,
    user_pod_annotations,
)

APP = "trainingjob"
COMPONENT = "training-worker"
MASTER_PORT = 29500
CHECKPOINT_MOUNT = "/checkpoints"
CRONJOB_NAME_MAX = 52  # the CronJob controller appends an 11-character suffix to Job names
INDEX_FIELD = f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"


def service_name(job: TrainingJob) -> str:
    return f"{job.name}-workers"


def checkpoint_claim_name(job: TrainingJob) -> str:
    return f"{job.name}-checkpoints"


def queue_labels(resource: Resource, queue: str) -> dict[str, str]:
    """``aiplane.dev/queue``; a queue name that is not a label value cannot be selected on."""
    if not is_label_value(queue):
        raise fail(
            resource, "spec.queue", f"must be a label value (letters, digits, '-', '_', '.') (got {queue!r})"
        )
    return {LABEL_QUEUE: queue}


def _check_names(job: TrainingJob) -> None:
    check_service_name(job, service_name(job))
    last_host = f"{job.name}-{job.spec.workers - 1}"
    if len(last_host) > 63:
        raise fail(job, "metadata.name", f"too long for pod hostnames ({last_host!r} exceeds 63 characters)")
    if job.spec.schedule and len(job.name) > CRONJOB_NAME_MAX:
        raise fail(job, "metadata.name", f"must be at most {CRONJOB_NAME_MAX} characters for a scheduled job")


def _checkpoint(
    job: TrainingJob, namespace: str, owner: OwnerRef | None, options: LoweringOptions
) -> tuple[list[Manifest], list[Manifest], list[Manifest], dict[str, str]]:
    """(claims, volumes, mounts, env) for ``spec.checkpoint``.

    ``pvc://claim/dir`` uses an existing claim (it outlives the job). Otherwise a claim
    owned by the job is created: mounted at the path when absolute, under
    ``/checkpoints`` when relative. With several workers it is ReadWriteMany.
    """
    ckpt = job.spec.checkpoint
    if ckpt is None:
        return [], [], [], {}
    named = split_pvc_uri(ckpt.path)
    claims: list[Manifest] = []
    if named is not None:
        claim, sub = named
        mount, directory = CHECKPOINT_MOUNT, f"{CHECKPOINT_MOUNT}/{sub}".rstrip("/")
    else:
        claim = checkpoint_claim_name(job)
        if ckpt.path.startswith("/"):
            mount = directory = ckpt.path.rstrip("/")
            if not mount:
                raise fail(job, "spec.checkpoint.path", "must be a directory, not / (got '/')")
        else:
            mount, directory = CHECKPOINT_MOUNT, f"{CHECKPOINT_MOUNT}/{ckpt.path.strip('/')}"
        mode = options.shared_access_mode if job.spec.workers > 1 else options.cache_access_mode
        claims.append(
            pvc(
                claim,
                namespace,
                labels(job, APP, "checkpoint", **{LABEL_JOB: job.name}),
                owner,
                ckpt.size or options.default_checkpoint_size,
                mode,
                options.storage_class,
            )
        )
    env = {"AIPLANE_CHECKPOINT_DIR": directory, "AIPLANE_CHECKPOINT_RESUME": str(ckpt.resume).lower()}
    volumes = [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}}]
    return claims, volumes, [{"name": "checkpoints", "mountPath": mount}], env


def _env(job: TrainingJob, namespace: str, scheduled: bool, checkpoint_env: dict[str, str]) -> list[Manifest]:
    """A CronJob's Jobs get generated names, so rank 0's host comes from the pod's job-name label."""
    svc = f"{service_name(job)}.{namespace}.svc"
    refs = {"NODE_RANK": INDEX_FIELD, "RANK": INDEX_FIELD, "PET_NODE_RANK": INDEX_FIELD}
    if scheduled:
        refs = {"AIPLANE_JOB_NAME": f"metadata.labels['{JOB_NAME_LABEL}']", **refs}
        master = f"$(AIPLANE_JOB_NAME)-0.{svc}"
    else:
        master = f"{job.name}-0.{svc}"
    workers = str(job.spec.workers)
    static = {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(MASTER_PORT),
        "WORLD_SIZE": workers,
        "NNODES": workers,
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": str(MASTER_PORT),
        "PET_NNODES": workers,
        "PET_NPROC_PER_NODE": str(max(1, math.floor(job.spec.gpus_per_worker))),
        "AIPLANE_JOB": job.name,
        "AIPLANE_QUEUE": job.spec.queue,
        **checkpoint_env,
        **job.spec.env,
    }
    return env_list(static, refs)


def _job_spec(
    job: TrainingJob,
    namespace: str,
    suspend: bool,
    volumes: list[Manifest],
    mounts: list[Manifest],
    checkpoint_env: dict[str, str],
) -> Manifest:
    spec = job.spec
    if not spec.image:
        raise fail(job, "spec.image", "required on Kubernetes (the container image with the training code)")
    gpu = gpu_placement(job, spec.gpus_per_worker, spec.gpu_model, "spec.gpuModel")
    pod_labels = labels(job, APP, COMPONENT, **{LABEL_JOB: job.name}, **queue_labels(job, spec.queue))
    annotations = {ANNOTATION_PRIORITY: str(spec.priority), ANNOTATION_GANG_SIZE: str(spec.workers)}
    container: Manifest = {
        "name": "trainer",
        "image": spec.image,
        "command": list(spec.command),
        "env": _env(job, namespace, bool(spec.schedule), checkpoint_env),
        "ports": [{"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}],
        "resources": resources(spec.cpu, spec.memory, gpu),
        # DataLoader workers and NCCL share tensors through /dev/shm (64Mi by default).
        "volumeMounts": [*mounts, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod: Manifest = {
        "restartPolicy": "Never",
        "subdomain": service_name(job),
        "schedulerName": SCHEDULER_NAME,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": math.ceil(parse_duration(spec.grace_period)),
    }
    gpu.apply(pod)
    pod["containers"] = [container]
    pod["volumes"] = [*volumes, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    out: Manifest = {
        "completionMode": "Indexed",
        "completions": spec.workers,
        "parallelism": spec.workers,
        "suspend": suspend,
        "backoffLimit": spec.max_restarts,
        "podFailurePolicy": stop_is_not_failure("trainer"),
    }
    if spec.active_deadline:
        out["activeDeadlineSeconds"] = math.ceil(parse_duration(spec.active_deadline))
    out["template"] = {
        "metadata": {
            "labels": pod_labels,
            "annotations": user_pod_annotations(job) | annotations | gpu.annotations,
        },
        "spec": pod,
    }
    return out


def _headless_service(job: TrainingJob, namespace: str, owner: OwnerRef | None) -> Manifest:
    """Per-pod DNS records, published before readiness so rank 0 resolves while others start."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            service_name(job), namespace, labels(job, APP, "rendezvous", **{LABEL_JOB: job.name}), owner
        ),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: job.name},
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"}
            ],
        },
    }


def lower_training_job(
    job: TrainingJob,
    namespace: str,
    owner: OwnerRef | None = None,
    suspend: bool = True,
    *,
    options: LoweringOptions = DEFAULT_OPTIONS,
) -> list[Manifest]:
    """Checkpoint PVC (if any), headless Service, then the Job (or a CronJob when scheduled).

    A CronJob creates every run's Job suspended, whatever ``suspend`` says: each run is
    queued and admitted on its own (the operator resumes the run the scheduler admits,
    and the quota is free between runs); ``concurrencyPolicy: Forbid`` skips a run while
    the last one is still running or still queued.
    """
    _check_names(job)
    claims, volumes, mounts, checkpoint_env = _checkpoint(job, namespace, owner, options)
    job_labels = labels(job, APP, COMPONENT, **{LABEL_JOB: job.name}, **queue_labels(job, job.spec.queue))
    spec = _job_spec(job, namespace, suspend or bool(job.spec.schedule), volumes, mounts, checkpoint_env)
    objects = [*claims, _headless_service(job, namespace, owner)]
    if not job.spec.schedule:
        objects.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": metadata(job.name, namespace, job_labels, owner),
                "spec": spec,
            }
        )
        return objects
    objects.append(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": metadata(job.name, namespace, job_labels, owner),
            "spec": {
                "schedule": job.spec.schedule,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 600,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {"metadata": {"labels": job_labels}, "spec": spec},
            },
        }
    )
    return objects
