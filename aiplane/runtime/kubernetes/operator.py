"""``aiplane operator``: kopf handlers, kept thin.

Each handler turns an event into a call to ``reconcile.py`` (lower, apply, prune) or
``status.py`` (pure status), and writes one status patch. Handlers are registered on an
explicit ``kopf.OperatorRegistry`` built by :func:`build_registry`, never on kopf's
global one at import. Spec changes are handled at once; timers keep status current
and re-apply desired state every ``RESYNC_SECONDS`` (level-triggered, drift-correcting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from aiplane import progress
from aiplane.api import GROUP, VERSION, BatchJob, Model, TrainingJob
from aiplane.errors import AiplaneError, KubernetesError, ValidationError
from aiplane.runtime.kubernetes import reconcile
from aiplane.runtime.kubernetes.autoscaler import ModelAutoscaler
from aiplane.runtime.kubernetes.client import Kube, Manifest, resource_path
from aiplane.runtime.kubernetes.constants import LABEL_JOB
from aiplane.runtime.kubernetes.lowering import DEFAULT_OPTIONS, LoweringOptions, selector_string
from aiplane.runtime.kubernetes.objects import admission_of, from_body, is_admitted, utc_now
from aiplane.runtime.kubernetes.status import (
    job_status,
    model_status,
    rank_zero_pod,
    replicas_short,
    shard_counts,
    training_progress,
)

KOPF_PREFIX = f"kopf.{GROUP}"  # kopf's bookkeeping annotations; never passed on to pods
STATUS_SECONDS = 2.0
PROGRESS_SECONDS = 10.0  # a running TrainingJob's rank-0 log is read this often
LOG_TAIL_LINES, LOG_BYTES = 500, 256 * 1024
RESYNC_SECONDS = 30.0
AUTOSCALE_SECONDS = 1.0

log = logging.getLogger(__name__)


def _without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
    ]
    return out


def _patch_status(patch: kopf.Patch, old: Mapping[str, Any], new: dict[str, Any]) -> None:
    """Write status only when it changed (not every timer tick)."""
    if _without_times(new) != _without_times({k: old.get(k) for k in new}):
        patch.status.update(new)


def options_from_env() -> LoweringOptions:
    """Cluster choices the install sets on the operator's Deployment (image, storage class)."""
    return LoweringOptions(
        image=os.environ.get("AIPLANE_IMAGE") or DEFAULT_OPTIONS.image,
        storage_class=os.environ.get("AIPLANE_STORAGE_CLASS") or None,
    )


def _opts(memo: kopf.Memo) -> LoweringOptions:
    options: LoweringOptions = memo["options"]
    return options


def _kube(memo: kopf.Memo) -> Kube:
    kube: Kube = memo["kube"]
    return kube


async def _guard(body: kopf.Body, coro: Any) -> Any:
    """Map aiplane errors to kopf's retry semantics, with an Event saying why."""
    try:
        return await coro
    except ValidationError as exc:
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    except KubernetesError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    except AiplaneError as exc:
        kopf.warn(body, reason="Failed", message=str(exc))
        raise kopf.TemporaryError(str(exc), delay=15) from exc


def build_registry(kubeconfig: str | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 60
        stack = contextlib.AsyncExitStack()
        memo["stack"] = stack
        memo["kube"] = await stack.enter_async_context(Kube.connect(kubeconfig))
        memo["options"] = options_from_env()
        memo["autoscaler"] = await stack.enter_async_context(ModelAutoscaler.connect(memo["kube"]))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        stack: contextlib.AsyncExitStack | None = memo.get("stack")
        if stack:
            await stack.aclose()

    # -- Model ---------------------------------------------------------------------------
    @kopf.on.resume(GROUP, VERSION, "models", registry=registry)
    @kopf.on.create(GROUP, VERSION, "models", registry=registry)
    @kopf.on.update(GROUP, VERSION, "models", field="spec", registry=registry)
    async def model_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        applied = await _guard(body, reconcile.reconcile_model(_kube(memo), body, _opts(memo)))
        message = f"applied {', '.join(applied.names)}"
        if applied.pruned:
            message += f"; removed {', '.join(applied.pruned)}"
        kopf.info(body, reason="Reconciled", message=message)

    @kopf.timer(GROUP, VERSION, "models", interval=STATUS_SECONDS, registry=registry)
    async def model_status_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        meta = body["metadata"]
        model = from_body(body)
        assert isinstance(model, Model)
        kube = _kube(memo)
        deployment = await kube.get("apps/v1", "Deployment", meta["name"], meta["namespace"])
        selector = selector_string(model)
        # Pods only when some are not ready: they say why (Unschedulable, ImagePullBackOff).
        short = replicas_short(deployment)
        pods = await kube.list("v1", "Pod", meta["namespace"], selector) if short else []
        old = body.get("status") or {}
        new = model_status(meta.get("generation", 0), deployment, selector, old, utc_now(), pods)
        _patch_status(patch, old, new)

    @kopf.timer(GROUP, VERSION, "models", interval=AUTOSCALE_SECONDS, registry=registry)
    async def model_autoscale(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        autoscaler: ModelAutoscaler = memo["autoscaler"]
        status = await autoscaler.tick(body)
        if status is not None and status != (body.get("status") or {}).get("autoscaler"):
            patch.status["autoscaler"] = status

    @kopf.on.delete(GROUP, VERSION, "models", registry=registry, optional=True)
    async def model_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        autoscaler: ModelAutoscaler = memo["autoscaler"]
        autoscaler.forget(body)

    @kopf.timer(
        GROUP, VERSION, "models", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, registry=registry
    )
    async def model_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await _guard(body, reconcile.reconcile_model(_kube(memo), body, _opts(memo)))

    # -- TrainingJob and BatchJob ----------------------------------------------------------
    for plural in ("trainingjobs", "batchjobs"):
        register_job_handlers(registry, plural)
    return registry


def register_job_handlers(registry: kopf.OperatorRegistry, plural: str) -> None:
    """The job handlers; kopf names them after this function, so it has no leading '_'
    (kopf's progress annotation for a retried handler, ``kopf.aiplane.dev/<id>``, must be a
    valid annotation name: '_register_job_handlers._locals_...' was refused with a 422)."""

    @kopf.on.resume(GROUP, VERSION, plural, registry=registry)
    @kopf.on.create(GROUP, VERSION, plural, registry=registry)
    @kopf.on.update(GROUP, VERSION, plural, field="spec", registry=registry)
    async def job_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        applied = await _guard(body, reconcile.reconcile_job(_kube(memo), body, _opts(memo)))
        await _job_status(body, patch, memo)
        kopf.info(body, reason="Reconciled", message=f"applied {', '.join(applied.names)}")

    @kopf.timer(GROUP, VERSION, plural, interval=STATUS_SECONDS, registry=registry)
    async def job_status_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        await _job_status(body, patch, memo)


async def _job_status(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    """Follow the scheduler's ``status.admission`` into the Job's ``suspend``, then report."""
    meta = body["metadata"]
    job = from_body(body)
    assert isinstance(job, TrainingJob | BatchJob)
    kube = _kube(memo)
    scheduled = isinstance(job, TrainingJob) and job.spec.schedule
    kind = "CronJob" if scheduled else "Job"
    native = await kube.get("batch/v1", kind, meta["name"], meta["namespace"])
    admitted = is_admitted(body)
    spec = (native or {}).get("spec") or {}
    finished = (body.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    admission = admission_of(body)
    if scheduled:
        run, admitted_now = await _cron_run(kube, body, native)
        admission = {**admission, "admitted": admitted_now}
    elif native is not None and bool(spec.get("suspend")) == admitted and not finished:
        await _guard(body, reconcile.reconcile_job(kube, body, _opts(memo)))
        what = "resumed: admitted" if admitted else "suspended: not admitted"
        kopf.info(body, reason="Admitted" if admitted else "Suspended", message=f"{kind} {what}")
        native = await kube.get("batch/v1", kind, meta["name"], meta["namespace"])
    completions = job.spec.workers if isinstance(job, TrainingJob) else job.spec.shards
    old = body.get("status") or {}
    now = utc_now()
    new = job_status(
        meta.get("generation", 0),
        run if scheduled else native,
        admission,
        completions,
        old,
        now,
        cron=native if scheduled else None,
    )
    if isinstance(job, BatchJob) and native is not None:
        pods = await kube.list("v1", "Pod", meta["namespace"], f"{LABEL_JOB}={meta['name']}")
        new |= shard_counts(pods)
    elif isinstance(job, TrainingJob) and new.get("phase") in ("Running", "Scheduled"):
        new |= await _training_progress(kube, body, memo)
    elif (
        isinstance(job, TrainingJob)
        and new.get("phase") in ("Succeeded", "Failed")
        and new.get("phase") != old.get("phase")
    ):  # its last lines (the final step) came after the last periodic read: read once more
        new |= await _training_progress(kube, body, memo, final=True)
    if new.get("phase") != old.get("phase") and new.get("phase") in ("Running", "Succeeded", "Failed"):
        kopf.info(
            body, reason=str(new["phase"]), message=f"{new.get('succeeded', 0)}/{completions} completed"
        )
    _patch_status(patch, old, new)


async def _cron_run(kube: Kube, body: kopf.Body, cron: Manifest | None) -> tuple[Manifest | None, bool]:
    """A scheduled job's run under way (its CronJob's newest active Job), and whether the
    scheduler admitted that run.

    Every run's Job is created suspended and queued on its own: the scheduler admits the
    run ``status.activeRun`` names (``admission.run``), this resumes that Job, and
    suspends it again when the admission is withdrawn (preemption). Between runs
    nothing is queued and no quota is held.
    """
    meta = body["metadata"]
    active = [ref.get("name") for ref in ((cron or {}).get("status") or {}).get("active") or []]
    if not active:
        return None, False
    name = active[-1]
    run = await kube.get("batch/v1", "Job", name, meta["namespace"])
    if run is None:
        return None, False
    status = {**(body.get("status") or {}), "activeRun": name}  # as the status is about to say
    admitted = is_admitted({**body, "status": status})
    if bool(run["spec"].get("suspend")) == admitted:
        path = resource_path("batch/v1", "Job", name, meta["namespace"])
        patch = {"spec": {"suspend": not admitted}}
        await _guard(body, kube.request("PATCH", path, patch, content_type="application/merge-patch+json"))
        what = "resumed: admitted" if admitted else "suspended: not admitted"
        kopf.info(body, reason="Admitted" if admitted else "Suspended", message=f"run {name} {what}")
        run = await kube.get("batch/v1", "Job", name, meta["namespace"]) or run
    return run, admitted


async def _training_progress(
    kube: Kube, body: kopf.Body, memo: kopf.Memo, final: bool = False
) -> dict[str, Any]:
    """``progress`` and ``progressSummary`` from rank 0's log, read every PROGRESS_SECONDS,
    and once more (``final``) when the job has just finished.

    The pod log is what ``kubectl logs`` reads (the kubelet serves it); a job that prints
    no progress lines, or a log that cannot be read (no kubelet answers), leaves the
    status as it was.
    """
    meta, old = body["metadata"], body.get("status") or {}
    seen: dict[str, float] = memo.setdefault("progress_read", {})
    now = asyncio.get_running_loop().time()
    if not final and now - seen.get(meta["uid"], -PROGRESS_SECONDS) < PROGRESS_SECONDS:
        return {}
    seen[meta["uid"]] = now
    pods = await kube.list("v1", "Pod", meta["namespace"], f"{LABEL_JOB}={meta['name']}")
    pod = rank_zero_pod(pods)
    if pod is None:
        return {}
    path = resource_path("v1", "Pod", pod["metadata"]["name"], meta["namespace"], sub="log")
    query = [("container", "trainer"), ("tailLines", str(LOG_TAIL_LINES)), ("limitBytes", str(LOG_BYTES))]
    try:
        text = await kube.read_text(path, query)
    except KubernetesError as exc:
        log.debug("TrainingJob %s: no log from %s: %s", meta["name"], pod["metadata"]["name"], exc)
        return {}
    fields = training_progress(text, old.get("progress") or {})
    if not fields:
        return {}
    return {"progress": fields, "progressSummary": progress.summary(fields)}


def run(namespace: str | None = None, kubeconfig: str | None = None, liveness: str | None = None) -> None:
    """Run the operator until SIGTERM; one replica (standalone, no kopf peering)."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    kopf.configure(verbose=bool(os.environ.get("AIPLANE_DEBUG")), log_prefix=True)
    registry = build_registry(kubeconfig)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else [],
            liveness_endpoint=liveness,
        )
    )
