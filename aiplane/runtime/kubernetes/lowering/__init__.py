"""Lowering: aiplane resources -> native Kubernetes manifests, as plain dicts.

Pure functions (no client, no I/O, no clock): the operator applies what they return,
``aiplane render`` prints it, and unit tests compare it. Every object carries the
recommended ``app.kubernetes.io/*`` labels plus ``aiplane.dev/model`` or
``aiplane.dev/job``; with an ``owner`` it also carries a controller owner reference,
so deleting the aiplane object deletes what was lowered from it.
"""

from __future__ import annotations

from aiplane.api import AnyResource, BatchJob, Model, Queue, TrainingJob
from aiplane.runtime.kubernetes.lowering.batch import lower_batch_job
from aiplane.runtime.kubernetes.lowering.common import (
    DEFAULT_OPTIONS,
    GPU_PRODUCTS,
    LoweringOptions,
    Manifest,
    OwnerRef,
)
from aiplane.runtime.kubernetes.lowering.model import lower_model, selector_string
from aiplane.runtime.kubernetes.lowering.training import lower_training_job

__all__ = [
    "DEFAULT_OPTIONS",
    "GPU_PRODUCTS",
    "LoweringOptions",
    "Manifest",
    "OwnerRef",
    "lower",
    "lower_batch_job",
    "lower_model",
    "lower_training_job",
    "selector_string",
]


def lower(
    resource: AnyResource,
    namespace: str,
    owner: OwnerRef | None = None,
    *,
    replicas: int | None = None,
    suspend: bool = True,
    options: LoweringOptions = DEFAULT_OPTIONS,
) -> list[Manifest]:
    """Dispatch by kind. A Queue lowers to nothing: it is itself the (cluster-scoped) object."""
    if isinstance(resource, Model):
        return lower_model(resource, namespace, owner, replicas, options=options)
    if isinstance(resource, TrainingJob):
        return lower_training_job(resource, namespace, owner, suspend, options=options)
    if isinstance(resource, BatchJob):
        return lower_batch_job(resource, namespace, owner, suspend, options=options)
    if isinstance(resource, Queue):
        return []
    raise TypeError(f"cannot lower {type(resource).__name__}")
