"""What every Kubernetes-side module needs of aiplane's own objects: the API version, the
kinds each resource owns, and turning a custom resource's body into its API object.

One module, so the operator's reconcile, the gateway's routes and the tests agree, and
none of them imports another's logic to get these.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from aiplane.api import API_VERSION, AnyResource, parse_document
from aiplane.runtime.kubernetes.constants import LABEL_JOB, LABEL_MODEL
from aiplane.runtime.kubernetes.lowering import OwnerRef

API = API_VERSION  # of every aiplane custom resource
# What the operator creates for each kind, and so may prune: (apiVersion, kind).
OWNED_KINDS = {
    "Model": [("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
              ("v1", "PersistentVolumeClaim"), ("autoscaling/v2", "HorizontalPodAutoscaler")],
    "TrainingJob": [("batch/v1", "Job"), ("batch/v1", "CronJob"), ("v1", "Service"),
                    ("v1", "PersistentVolumeClaim")],
    "BatchJob": [("batch/v1", "Job"), ("v1", "PersistentVolumeClaim")],
}  # fmt: skip
LABEL_KEY = {"Model": LABEL_MODEL, "TrainingJob": LABEL_JOB, "BatchJob": LABEL_JOB}


def utc_now() -> str:
    """An RFC 3339 timestamp, as conditions and Events carry."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_body(body: Mapping[str, Any]) -> AnyResource:
    """The API object a custom resource stands for (server-side metadata dropped)."""
    meta = body.get("metadata", {})
    kept: dict[str, Any] = {
        "name": meta.get("name"),
        "labels": dict(meta.get("labels") or {}),
        "annotations": dict(meta.get("annotations") or {}),
    }
    if meta.get("namespace"):
        kept["namespace"] = meta["namespace"]
    doc = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept}
    if body.get("spec") is not None or body.get("kind") != "Queue":
        doc["spec"] = dict(body.get("spec") or {})
    source = f"{body.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"
    return parse_document(doc, source=source)


def owner_of(body: Mapping[str, Any]) -> OwnerRef:
    meta = body["metadata"]
    return OwnerRef(body["apiVersion"], body["kind"], meta["name"], meta["uid"])


def admission_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """A TrainingJob's or BatchJob's ``status.admission``: only the scheduler writes it
    (admitted, reason, flavor, borrowed, preempted); the operator follows it into ``suspend``."""
    return dict((body.get("status") or {}).get("admission") or {})


def is_admitted(body: Mapping[str, Any]) -> bool:
    """Admitted; for a scheduled job, admitted for the run under way (``status.activeRun``).

    Each run of a scheduled TrainingJob is queued on its own: the scheduler's admission
    names the run it admitted (``admission.run``), and one for an earlier run admits
    nothing.
    """
    admission = admission_of(body)
    if not admission.get("admitted"):
        return False
    if (body.get("spec") or {}).get("schedule"):
        run = (body.get("status") or {}).get("activeRun")
        return run is not None and admission.get("run") == run
    return True
