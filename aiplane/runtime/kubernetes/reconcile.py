"""What the operator does for one object: lower it, apply it, prune what it no longer owns.

Level-triggered and idempotent: everything is applied with server-side apply under
deterministic names, so running it twice, or after a crash mid-way, converges to the
same objects and never duplicates. The kopf handlers in ``operator.py`` only call these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiplane.api import BatchJob, Model, TrainingJob
from aiplane.runtime.kubernetes.client import Kube, Manifest
from aiplane.runtime.kubernetes.lowering import DEFAULT_OPTIONS, LoweringOptions, lower
from aiplane.runtime.kubernetes.objects import LABEL_KEY, OWNED_KINDS, from_body, is_admitted, owner_of


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


async def reconcile_job(
    kube: Kube, body: Mapping[str, Any], options: LoweringOptions = DEFAULT_OPTIONS
) -> Applied:
    """Lower the job, suspended until the scheduler admits it (and again when it preempts it)."""
    job = from_body(body)
    assert isinstance(job, TrainingJob | BatchJob)
    suspend = not is_admitted(body)
    desired = lower(job, body["metadata"]["namespace"], owner_of(body), suspend=suspend, options=options)
    return await sync(kube, body, desired)
