"""Read the API server's Pods and Jobs: requests, quantities, node filters' inputs, gangs.

Pure functions over plain dicts (what :class:`Kube` returns), so how aiplane reads a
pod's requests, where it may go or a Job's gang is unit-tested without a cluster. The
scheduling view (``scheduling_view.py``) turns them into the cycle's input.

A pod's request is its containers' requests summed, or its largest init container's
when that is larger, plus ``overhead``; GPUs come from ``nvidia.com/gpu`` limits (an
extended resource's request always equals its limit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiplane.policies.scheduling.filters import AffinityTerm, Gang, MatchExpression, PodRequest, Toleration
from aiplane.runtime.kubernetes.constants import (
    ANNOTATION_GANG_SIZE,
    ANNOTATION_PRIORITY,
    GPU_RESOURCE,
    JOB_NAME_LABEL,
    LABEL_JOB,
)

Manifest = dict[str, Any]
LEGACY_JOB_NAME_LABEL = "job-name"

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$")
_SUFFIX = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    **{s: 1024.0 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


class SnapshotError(ValueError):
    """An object the scheduler cannot read (a malformed quantity); the message names it."""


def quantity(text: str | int | float) -> float:
    """Any Kubernetes quantity: ``500m``, ``2``, ``1.5Gi``, ``1e3``, ``100u``."""
    if isinstance(text, int | float):
        return float(text)
    m = _QUANTITY.match(text.strip())
    if not m:
        raise SnapshotError(f"not a Kubernetes quantity: {text!r}")
    number, exponent, suffix = m.groups()
    try:
        value = float(number)
    except ValueError:
        raise SnapshotError(f"not a Kubernetes quantity: {text!r}") from None
    return value * (10.0 ** int(exponent[1:]) if exponent else _SUFFIX[suffix or ""])


def _milli(text: str | int | float) -> int:
    return math.ceil(round(quantity(text) * 1000, 6))


def _whole(text: str | int | float) -> int:
    return math.ceil(round(quantity(text), 6))


@dataclass(frozen=True)
class Amounts:
    gpus: int = 0
    cpu_milli: int = 0
    memory: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(self.gpus + other.gpus, self.cpu_milli + other.cpu_milli, self.memory + other.memory)

    def max(self, other: Amounts) -> Amounts:
        return Amounts(
            max(self.gpus, other.gpus), max(self.cpu_milli, other.cpu_milli), max(self.memory, other.memory)
        )


def _container_amounts(container: Manifest) -> Amounts:
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    gpus = limits.get(GPU_RESOURCE, requests.get(GPU_RESOURCE, 0))
    cpu = requests.get("cpu", limits.get("cpu", 0))
    memory = requests.get("memory", limits.get("memory", 0))
    return Amounts(_whole(gpus), _milli(cpu), _whole(memory))


def pod_amounts(pod: Manifest) -> Amounts:
    """What the pod holds on its node while it lives (see the module docstring)."""
    spec = pod.get("spec") or {}
    where = f"pod {pod_ref(pod)}"
    try:
        sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        app = sum((_container_amounts(c) for c in [*(spec.get("containers") or []), *sidecars]), Amounts())
        peak = Amounts()
        for c in spec.get("initContainers") or []:
            if c.get("restartPolicy") != "Always":
                peak = peak.max(_container_amounts(c))
        total = app.max(peak)
        overhead = spec.get("overhead") or {}
        return total + Amounts(0, _milli(overhead.get("cpu", 0)), _whole(overhead.get("memory", 0)))
    except SnapshotError as exc:
        raise SnapshotError(f"{where}: {exc}") from None


def pod_ref(pod: Manifest) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _expressions(raw: Iterable[Manifest], on_field: bool) -> list[MatchExpression]:
    return [
        MatchExpression(e["key"], e["operator"], tuple(str(v) for v in e.get("values") or ()), on_field)
        for e in raw
    ]


def pod_request(pod: Manifest) -> PodRequest:
    """Where a pending pod may go: what the static node filters read of it."""
    spec = pod.get("spec") or {}
    node_affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = tuple(
        AffinityTerm(
            tuple(
                _expressions(t.get("matchExpressions") or [], False)
                + _expressions(t.get("matchFields") or [], True)
            )
        )
        for t in required.get("nodeSelectorTerms") or []
    )
    tolerations = tuple(
        Toleration(t.get("key", ""), t.get("operator", "Equal"), t.get("value", ""), t.get("effect", ""))
        for t in spec.get("tolerations") or []
    )
    return PodRequest(
        name=pod["metadata"]["name"],
        node_selector=dict(spec.get("nodeSelector") or {}),
        required_affinity_terms=terms,
        tolerations=tolerations,
    )


# -- gangs ---------------------------------------------------------------------------------------
def gang_key(pod: Manifest) -> str:
    """``namespace/job`` for a Job's pods (Job name label, else aiplane's job label); a pod
    of no Job is a gang of its own, ``namespace/pod/name``."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    job = labels.get(JOB_NAME_LABEL) or labels.get(LEGACY_JOB_NAME_LABEL) or labels.get(LABEL_JOB)
    return f"{meta.get('namespace', '')}/{job}" if job else f"{meta.get('namespace', '')}/pod/{meta['name']}"


def owner_job(pod: Manifest) -> str | None:
    """The name of the Job that controls the pod, if any."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/"):
            return str(ref["name"])
    return None


def count_indexes(text: str | None) -> int:
    """How many indexes ``status.failedIndexes`` lists (``"1,3-5"`` is 4)."""
    total = 0
    for part in (text or "").split(","):
        if not part.strip():
            continue
        lo, _, hi = part.partition("-")
        total += int(hi) - int(lo) + 1 if hi else 1
    return total


def job_gang_size(job: Manifest) -> int:
    """Pods the Job controller runs at once: ``parallelism``, capped by what is left to do."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    parallelism = int(spec.get("parallelism", 1))
    completions = spec.get("completions")
    if completions is None:
        return max(1, parallelism)
    left = int(completions) - int(status.get("succeeded", 0)) - count_indexes(status.get("failedIndexes"))
    return max(1, min(parallelism, left))


def _int_field(meta: Manifest, key: str) -> int | None:
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        try:
            return int(source[key])
        except (KeyError, ValueError):
            continue
    return None


def _created(meta: Manifest) -> float:
    stamp = meta.get("creationTimestamp")
    if not stamp:
        return 0.0
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class PendingGang:
    """A gang ready to place, with the pod manifests the runtime binds by name."""

    gang: Gang
    pods: dict[str, Manifest] = field(default_factory=dict)


@dataclass(frozen=True)
class Waiting:
    """A gang not ready to place (suspended Job, Job gone, or pods still being created)."""

    key: str
    reason: str


def assemble_gangs(
    pending: Iterable[Manifest],
    bound_active: Iterable[Manifest],
    jobs: Mapping[tuple[str, str], Manifest | None],
) -> tuple[list[PendingGang], list[Waiting]]:
    """Group pending pods into gangs and keep only those whose members are all there.

    ``jobs`` maps ``(namespace, name)`` of each owning Job to the Job (None when it is
    gone). The gang size is the ``aiplane.dev/gang-size`` annotation (a TrainingJob's
    workers), else the Job's current parallelism; either is capped by what the Job still
    has to run. Peers already bound count toward it, so a replacement pod joins its
    running gang instead of waiting for pods that will never come.
    """
    groups: dict[str, list[Manifest]] = {}
    for pod in pending:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        groups.setdefault(gang_key(pod), []).append(pod)
    running: dict[str, int] = {}
    for pod in bound_active:
        running[gang_key(pod)] = running.get(gang_key(pod), 0) + 1
    ready: list[PendingGang] = []
    waiting: list[Waiting] = []
    for key, pods in sorted(groups.items()):
        pods.sort(key=lambda p: p["metadata"]["name"])
        meta = pods[0]["metadata"]
        job_name = owner_job(pods[0])
        size = _int_field(meta, ANNOTATION_GANG_SIZE)
        if job_name is not None:
            job = jobs.get((meta.get("namespace", ""), job_name))
            if job is None:
                waiting.append(Waiting(key, f"Job {job_name} not found"))
                continue
            if (job.get("spec") or {}).get("suspend"):
                waiting.append(Waiting(key, f"Job {job_name} is suspended"))
                continue
            size = min(size, job_gang_size(job)) if size else job_gang_size(job)
        size = max(1, size or len(pods))
        have = running.get(key, 0)
        if len(pods) + have < size:
            waiting.append(Waiting(key, f"waiting for the gang: {len(pods) + have} of {size} pods exist"))
            continue
        priorities = [_int_field(p["metadata"], ANNOTATION_PRIORITY) or 0 for p in pods]
        gang = Gang(
            job_key=key,
            pods=tuple(pod_request(p) for p in pods),
            min_available=max(1, min(len(pods), size - have)),
            priority=max(priorities),
            created=min(_created(p["metadata"]) for p in pods),
        )
        ready.append(PendingGang(gang, {p["metadata"]["name"]: p for p in pods}))
    return ready, waiting
