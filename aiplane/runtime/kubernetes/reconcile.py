"""What the operator does for one object: lower it, apply it, prune what it no longer owns.

Level-triggered and idempotent: everything is applied with server-side apply under
deterministic names, so running it twice, or after a crash mid-way, converges to the
same objects and never duplicates. The kopf handlers in ``operator.py`` only call these.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiplane.api import BatchJob, Model, Queue, TrainingJob
from aiplane.policies.scheduling import Admit, Demand, Pending, admit
from aiplane.policies.scheduling.admission import flavor_for
from aiplane.runtime.kubernetes.client import Kube, Manifest
from aiplane.runtime.kubernetes.lowering import DEFAULT_OPTIONS, LoweringOptions, lower
from aiplane.runtime.kubernetes.objects import API, LABEL_KEY, OWNED_KINDS, from_body, owner_of, utc_now
from aiplane.runtime.kubernetes.status import condition

# One admission at a time per queue, from reading its usage to recording the decision
# in the job's status: kopf runs handlers for different jobs concurrently, and two that
# read the same free quota would both take it. One operator replica runs (the install's
# Deployment has replicas: 1), so a process-level lock is the queue's single writer.
_QUEUE_LOCKS: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)


@dataclass(frozen=True)
class Applied:
    names: list[str]
    pruned: list[str]


async def sync(kube: Kube, body: Mapping[str, Any], desired: list[Manifest]) -> Applied:
    """Apply every desired object, then delete owned objects that are no longer desired."""
    for obj in desired:
        await kube.apply(obj)
    kind, meta = body["kind"], body["metadata"]
    keep = {(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in desired}
    selector = f"{LABEL_KEY[kind]}={meta['name']},app.kubernetes.io/managed-by=aiplane"
    pruned = []
    for api_version, owned_kind in OWNED_KINDS[kind]:
        for item in await kube.list(api_version, owned_kind, meta["namespace"], selector):
            name = item["metadata"]["name"]
            refs = item["metadata"].get("ownerReferences") or []
            ours = any(r.get("uid") == meta["uid"] for r in refs)
            if ours and (api_version, owned_kind, name) not in keep:
                await kube.delete(api_version, owned_kind, name, meta["namespace"])
                pruned.append(f"{owned_kind}/{name}")
    return Applied([f"{o['kind']}/{o['metadata']['name']}" for o in desired], pruned)


async def reconcile_model(
    kube: Kube, body: Mapping[str, Any], options: LoweringOptions = DEFAULT_OPTIONS
) -> Applied:
    model = from_body(body)
    assert isinstance(model, Model)
    desired = lower(model, body["metadata"]["namespace"], owner_of(body), options=options)
    return await sync(kube, body, desired)


def is_admitted(body: Mapping[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Admitted" and c.get("status") == "True" for c in conditions)


def demand_of(job: TrainingJob | BatchJob) -> Demand:
    if isinstance(job, TrainingJob):
        return Demand(job.spec.workers * job.spec.gpus_per_worker, job.spec.gpu_model)
    return Demand(job.spec.parallelism * job.spec.gpus_per_shard, None)


async def queue_usage(kube: Kube, queue: str, exclude_uid: str) -> dict[str, float]:
    """GPUs held by admitted, unfinished jobs of a queue, by quota flavor."""
    used: dict[str, float] = {}
    q = await kube.get(API, "Queue", queue)
    quota = (q or {}).get("spec", {}).get("quota", {})
    for kind in ("TrainingJob", "BatchJob"):
        for item in await kube.list(API, kind):
            if item["metadata"].get("uid") == exclude_uid or not is_admitted(item):
                continue
            if (item.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            other = from_body(item)
            assert isinstance(other, TrainingJob | BatchJob)
            if other.spec.queue != queue:
                continue
            demand = demand_of(other)
            flavor = flavor_for(demand, quota) if demand.gpus else None
            if flavor:
                used[flavor] = used.get(flavor, 0.0) + demand.gpus
    return used


async def admission(kube: Kube, body: Mapping[str, Any], job: TrainingJob | BatchJob) -> Admit | Pending:
    """Admitted once stays admitted; otherwise ask the admission policy against the queue.

    An admission is written to the job's status before the queue's lock is released, so
    the next job's usage count already includes it.
    """
    if is_admitted(body):
        return Admit(None, "admitted")
    queue = await kube.get(API, "Queue", job.spec.queue)
    quota: dict[str, float] | None = None
    if queue is not None:
        parsed = from_body(queue)
        assert isinstance(parsed, Queue)
        quota = parsed.spec.quota
    elif job.spec.queue == "default":
        return Admit(None, "no Queue 'default': admitted without quota")
    meta = body["metadata"]
    async with _QUEUE_LOCKS[job.spec.queue]:
        # The handler's body may predate an admission another handler wrote: re-read it.
        fresh = await kube.get(API, body["kind"], meta["name"], meta["namespace"])
        if fresh is None:
            return Pending("the job was deleted")
        if is_admitted(fresh):
            return Admit(None, "admitted")
        used = await queue_usage(kube, job.spec.queue, meta["uid"])
        decision = admit(demand_of(job), job.spec.queue, quota, used)
        if isinstance(decision, Admit):
            await _record_admission(kube, fresh, decision)
    return decision


async def _record_admission(kube: Kube, fresh: Mapping[str, Any], decision: Admit) -> None:
    """Set the Admitted condition now; the handler's full status patch follows with the same."""
    old = (fresh.get("status") or {}).get("conditions") or []
    admitted = condition("Admitted", True, "QuotaReserved", decision.reason, utc_now(), old)
    conditions = [c for c in old if c.get("type") != "Admitted"] + [admitted]
    meta = fresh["metadata"]
    patch = {"status": {"conditions": conditions}}
    await kube.patch_merge(API, fresh["kind"], meta["name"], meta["namespace"], patch, sub="status")


async def reconcile_job(
    kube: Kube, body: Mapping[str, Any], options: LoweringOptions = DEFAULT_OPTIONS
) -> tuple[Applied, Admit | Pending]:
    job = from_body(body)
    assert isinstance(job, TrainingJob | BatchJob)
    decision = await admission(kube, body, job)
    admitted = isinstance(decision, Admit)
    desired = lower(job, body["metadata"]["namespace"], owner_of(body), suspend=not admitted, options=options)
    return await sync(kube, body, desired), decision
