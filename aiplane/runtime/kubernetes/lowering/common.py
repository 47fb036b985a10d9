"""Pieces every lowering shares: metadata and labels, owner references, GPU placement, PVCs.

Everything returns plain dicts (the JSON the API server takes), so the operator can
hand them to any client, ``aiplane render`` can print them, and tests can compare them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from aiplane.api import Resource
from aiplane.errors import ValidationError
from aiplane.policies.scheduling.gpumodel import PRODUCTS, product
from aiplane.runtime.kubernetes.constants import (
    AIPLANE_IMAGE,
    ANNOTATION_GPU_FRACTION,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_COMPONENT,
    LABEL_GPU_MODEL,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    MANAGED_BY,
    SCHEDULER_NAME,
)

Manifest = dict[str, Any]

# GPU feature discovery's `nvidia.com/gpu.product` for the names users write in `gpuModel`,
# from the scheduler's one catalogue (aiplane.policies.scheduling.gpumodel). An alias means
# one part: "A100" is the 80 GB SXM4 board. Any other name is matched literally against
# `nvidia.com/gpu.product` OR `aiplane.dev/gpu-model` (see gpu_placement).
GPU_PRODUCTS: dict[str, str] = {alias: p.product for alias, p in PRODUCTS.items()}

GPU_TOLERATION: Manifest = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class OwnerRef:
    """The aiplane object that owns what is lowered from it (garbage collection, adoption)."""

    api_version: str
    kind: str
    name: str
    uid: str

    @classmethod
    def of(cls, resource: Resource, uid: str) -> OwnerRef:
        return cls(resource.api_version, resource.kind, resource.name, uid)

    def to_manifest(self) -> Manifest:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class LoweringOptions:
    """Cluster-level choices the resource API leaves to the operator's configuration.

    ``cache_access_mode`` is ReadWriteOnce because every cluster has such a storage class;
    replicas of one model on *different* nodes cannot all attach an RWO volume, so a
    model that scales past one node wants ``ReadWriteMany`` (NFS, EFS, Filestore...).
    Checkpoints of a multi-worker job always use ``shared_access_mode``: every rank must
    see the same checkpoint, and on RWO that is simply impossible across nodes.
    """

    image: str = AIPLANE_IMAGE
    storage_class: str | None = None
    cache_access_mode: str = "ReadWriteOnce"
    shared_access_mode: str = "ReadWriteMany"
    default_cache_size: str = "20Gi"
    model_scheduler: str = SCHEDULER_NAME  # "default-scheduler" hands Model replicas back to kube's
    default_checkpoint_size: str = "50Gi"


DEFAULT_OPTIONS = LoweringOptions()


def fail(resource: Resource, path: str, expected: str) -> ValidationError:
    """A user-facing error in the loader's shape: ``Kind/name: field.path: expectation``."""
    return ValidationError([f"{resource.ref}: {path}: {expected}"])


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def check_service_name(resource: Resource, name: str) -> str:
    """Service names are DNS-1035 labels: a letter first, at most 63 characters."""
    if len(name) > 63 or not _DNS_1035.match(name):
        raise fail(
            resource,
            "metadata.name",
            f"on Kubernetes the Service {name!r} is named after it, which needs a letter first and at "
            "most 63 characters in all",
        )
    return name


def labels(resource: Resource, app: str, component: str, **extra: str) -> dict[str, str]:
    """The user's labels (for cost attribution), then the recommended ones, then ours."""
    return {
        **resource.metadata.labels,
        LABEL_NAME: app,
        LABEL_INSTANCE: resource.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "aiplane",
        LABEL_MANAGED_BY: MANAGED_BY,
        **extra,
    }


def metadata(
    name: str,
    namespace: str | None,
    object_labels: dict[str, str],
    owner: OwnerRef | None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    meta: Manifest = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = dict(object_labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [owner.to_manifest()]
    return meta


@dataclass(frozen=True)
class GpuPlacement:
    """What a pod needs to get ``gpus`` GPUs of ``gpu_model``: limits, selectors, tolerations."""

    limits: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    affinity: Manifest | None = None
    tolerations: list[Manifest] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)

    def apply(self, pod_spec: Manifest) -> None:
        if self.node_selector:
            pod_spec["nodeSelector"] = dict(self.node_selector)
        if self.affinity:
            pod_spec["affinity"] = self.affinity
        if self.tolerations:
            pod_spec["tolerations"] = list(self.tolerations)


def gpu_placement(resource: Resource, gpus: float, gpu_model: str | None, field_path: str) -> GpuPlacement:
    """Whole GPUs as ``nvidia.com/gpu`` limits; a fraction asks for one device.

    The device plugin only hands out whole ``nvidia.com/gpu`` units. Fractions work when
    the plugin's time-slicing config advertises each physical GPU as N replicas: the pod
    then gets one slice, and ``aiplane.dev/gpu-fraction`` records the share it meant
    (for accounting and for the aiplane scheduler). Nothing isolates memory between
    slices; that is what time-slicing is.

    ``gpuModel`` is ignored without GPUs. A known alias becomes a ``nodeSelector`` on
    GPU feature discovery's product label; any other name becomes required node
    affinity matching either ``nvidia.com/gpu.product`` (users may write the exact GFD
    product) or ``aiplane.dev/gpu-model`` (what an admin labels nodes with).
    """
    if gpus <= 0:
        return GpuPlacement()
    whole = gpus >= 1
    placement = GpuPlacement(
        limits={GPU_RESOURCE: str(round(gpus)) if whole else "1"},
        tolerations=[dict(GPU_TOLERATION)],
        annotations={} if whole else {ANNOTATION_GPU_FRACTION: f"{gpus:g}"},
    )
    if not gpu_model:
        return placement
    known = product(gpu_model)
    if known is not None:
        return replace(placement, node_selector={GPU_PRODUCT_LABEL: known.product})
    if not is_label_value(gpu_model):
        raise fail(
            resource,
            field_path,
            f"must be a known GPU ({', '.join(GPU_PRODUCTS)}) or a node label value "
            f"(letters, digits, '-', '_', '.'; at most 63) (got {gpu_model!r})",
        )
    terms = [
        {"matchExpressions": [{"key": key, "operator": "In", "values": [gpu_model]}]}
        for key in (GPU_PRODUCT_LABEL, LABEL_GPU_MODEL)
    ]  # nodeSelectorTerms are ORed
    affinity = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    }
    return replace(placement, affinity=affinity)


def resources(cpu: str | None, memory: str | None, gpu: GpuPlacement) -> Manifest:
    """Requests equal to limits: Guaranteed QoS, so a GPU pod is the last to be evicted."""
    amounts: dict[str, str] = {}
    if cpu:
        amounts["cpu"] = cpu
    if memory:
        amounts["memory"] = memory
    out: Manifest = {}
    if amounts:
        out["requests"] = dict(amounts)
    limits = {**amounts, **gpu.limits}
    if limits:
        out["limits"] = limits
    return out


def pvc(
    name: str,
    namespace: str,
    object_labels: dict[str, str],
    owner: OwnerRef | None,
    size: str,
    access_mode: str,
    storage_class: str | None,
) -> Manifest:
    spec: Manifest = {"accessModes": [access_mode], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(name, namespace, object_labels, owner),
        "spec": spec,
    }


def env_list(static: dict[str, str], field_refs: dict[str, str] | None = None) -> list[Manifest]:
    """Downward-API variables first (later values may refer to them as ``$(NAME)``)."""
    out: list[Manifest] = [
        {"name": k, "valueFrom": {"fieldRef": {"fieldPath": path}}} for k, path in (field_refs or {}).items()
    ]
    out.extend({"name": k, "value": v} for k, v in static.items() if k not in (field_refs or {}))
    return out


def split_pvc_uri(uri: str) -> tuple[str, str] | None:
    """``pvc://claim/sub/path`` as ``(claim, "sub/path")``; None for any other scheme."""
    if not uri.startswith("pvc://"):
        return None
    claim, _, sub = uri[len("pvc://") :].partition("/")
    return claim, sub.strip("/")


SECURE_DEFAULTS: Manifest = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def user_pod_annotations(resource: Resource) -> dict[str, str]:
    """The resource's own annotations, passed on to its pods (sidecar injection, scraping,
    test hooks such as KWOK's completion delay). Tool bookkeeping stays on the resource."""
    skip = ("kubectl.kubernetes.io/", "kopf.aiplane.dev/", "kopf.zalando.org/")
    return {k: v for k, v in resource.metadata.annotations.items() if not k.startswith(skip)}


def stop_is_not_failure(container: str) -> Manifest:
    """A ``podFailurePolicy`` under which being stopped by the platform is not a failure.

    A preempted job is suspended, and its pods get SIGTERM: a worker that checkpoints and
    exits 143 (the contract in docs/jobs.md) would otherwise count against
    ``backoffLimit``, so a job preempted twice could fail for it. Pods evicted or
    preempted (the ``DisruptionTarget`` condition: drains, taints, kube-scheduler) are
    not failures either. Such pods are replaced, not counted.
    """
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "Ignore",
                "onExitCodes": {"containerName": container, "operator": "In", "values": [143]},
            },
        ]
    }
