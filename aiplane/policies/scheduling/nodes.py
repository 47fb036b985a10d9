"""Place gangs of pods on cluster nodes: the aiplane scheduler's decisions, without I/O.

The runtime hands over a frozen snapshot (nodes with what is already used, gangs of
pending pods) and gets decisions back as data, each with its reason; only the runtime
binds. The shape is the Kubernetes scheduler framework's, cut to what aiplane needs:

* ``Filter`` plugins say whether a pod may go on a node, and why not (taints against
  tolerations, node selector, required node affinity, resources, cordoned nodes);
* ``Score`` plugins rank the nodes that pass, 0-100, weighted; ties go to the node whose
  name sorts first, so the same snapshot always gives the same placement.

The default score is **GPU bin-packing**: a pod goes to the node that will be fullest
after it lands. Spreading (the default scheduler's habit) leaves a few GPUs free on many
nodes, and then no 8-GPU worker fits anywhere; packing keeps whole nodes free for the
big gangs.

A gang is all-or-nothing (or at least ``min_available``): its pods are placed one by one,
largest first, on a *copy* of the snapshot, and the gang fits only if enough of them
did. A half-placed gang would hold GPUs while waiting for peers that cannot start.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

GPU = "nvidia.com/gpu"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only discourages


# -- the snapshot ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}" if self.value else self.key


@dataclass(frozen=True)
class Toleration:
    """Kubernetes semantics: an empty key with ``Exists`` tolerates everything; an empty
    effect matches every effect; ``Equal`` (the default) compares the value."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True)
class MatchExpression:
    """One ``matchExpressions`` (or, with ``on_field``, ``matchFields``) requirement."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist | Gt | Lt
    values: tuple[str, ...] = ()
    on_field: bool = False  # matchFields: the key is ``metadata.name``

    def matches(self, node: NodeInfo) -> bool:
        if self.on_field:
            value = node.name if self.key == "metadata.name" else None
        else:
            value = node.labels.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op in ("Gt", "Lt") and value is not None and len(self.values) == 1:
            try:
                have, bound = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > bound if op == "Gt" else have < bound
        return False  # an unknown operator never matches: the API server rejects them anyway


@dataclass(frozen=True)
class AffinityTerm:
    """A ``nodeSelectorTerm``: its expressions are ANDed; a pod's terms are ORed."""

    match_expressions: tuple[MatchExpression, ...] = ()

    def matches(self, node: NodeInfo) -> bool:
        return bool(self.match_expressions) and all(e.matches(node) for e in self.match_expressions)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    allocatable_gpus: int = 0
    allocatable_cpu_milli: int = 0
    allocatable_memory: int = 0  # bytes
    allocatable_pods: int = 110
    used_gpus: int = 0
    used_cpu_milli: int = 0
    used_memory: int = 0
    used_pods: int = 0
    unschedulable: bool = False

    def with_pod(self, pod: PodRequest) -> NodeInfo:
        """The node as it would be with ``pod`` on it (a new value; this one is untouched)."""
        return dataclasses.replace(
            self,
            used_gpus=self.used_gpus + pod.gpus,
            used_cpu_milli=self.used_cpu_milli + pod.cpu_milli,
            used_memory=self.used_memory + pod.memory,
            used_pods=self.used_pods + 1,
        )


@dataclass(frozen=True)
class PodRequest:
    name: str
    gpus: int = 0
    cpu_milli: int = 0
    memory: int = 0  # bytes
    node_selector: Mapping[str, str] = field(default_factory=dict)
    required_affinity_terms: tuple[AffinityTerm, ...] = ()
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True)
class Gang:
    """Pods that start together. ``min_available`` below ``len(pods)`` lets a gang start
    with fewer (a replacement pod joins running peers); ``priority`` and ``created`` order
    gangs in :func:`place_gangs` (higher priority first, then older)."""

    job_key: str
    pods: tuple[PodRequest, ...]
    min_available: int
    priority: int = 0
    created: float = 0.0


@dataclass(frozen=True)
class GangFit:
    assignments: dict[str, str]  # pod name -> node name
    reasons: dict[str, str]  # pod name -> why that node (or, for a pod left out, why none)


@dataclass(frozen=True)
class GangNoFit:
    """``reason`` is what a user reads (events, conditions, CLI); ``node_reasons`` is why each
    node rejected the first pod that did not fit. ``resolvable`` is False when no node could
    take that pod even empty: waiting (or preempting) will not help."""

    reason: str
    node_reasons: dict[str, tuple[str, ...]]
    resolvable: bool = True


# -- plugins -----------------------------------------------------------------------------------
class Filter(Protocol):
    name: str

    def check(self, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
        """Why ``pod`` may not go on ``node``; empty when it may."""
        ...


class Score(Protocol):
    name: str

    def score(self, node: NodeInfo, pod: PodRequest) -> float:
        """0 (worst) to 100 (best) for ``pod`` on ``node``, which passed every filter."""
        ...


def tolerated(taint: Taint, tolerations: Iterable[Toleration]) -> bool:
    return any(t.tolerates(taint) for t in tolerations)


class NodeUnschedulable:
    name = "NodeUnschedulable"

    def check(self, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
        cordon = Taint(UNSCHEDULABLE_TAINT, effect="NoSchedule")
        return (
            ("node is unschedulable",)
            if node.unschedulable and not tolerated(cordon, pod.tolerations)
            else ()
        )


class TaintToleration:
    name = "TaintToleration"

    def check(self, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
        for taint in node.taints:
            if taint.effect in BLOCKING_EFFECTS and not tolerated(taint, pod.tolerations):
                return (f"untolerated taint {taint}",)
        return ()


class NodeSelector:
    name = "NodeSelector"

    def check(self, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
        ok = all(node.labels.get(k) == v for k, v in pod.node_selector.items())
        return () if ok else ("node selector mismatch",)


class NodeAffinity:
    name = "NodeAffinity"

    def check(self, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
        terms = pod.required_affinity_terms
        return () if not terms or any(t.matches(node) for t in terms) else ("node affinity mismatch",)


class Resources:
    """Every short resource is a reason of its own, as the default scheduler counts them."""

    name = "NodeResourcesFit"

    def check(self, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
        short = []
        if pod.gpus > node.allocatable_gpus - node.used_gpus:
            short.append(f"Insufficient {GPU}")
        if pod.cpu_milli > node.allocatable_cpu_milli - node.used_cpu_milli:
            short.append("Insufficient cpu")
        if pod.memory > node.allocatable_memory - node.used_memory:
            short.append("Insufficient memory")
        if node.used_pods + 1 > node.allocatable_pods:
            short.append("Too many pods")
        return tuple(short)


class GpuBinPacking:
    """How full the node's GPUs will be with the pod: the fullest node wins.

    Pods without GPUs score 0 everywhere: this plugin has no opinion about them.
    """

    name = "GpuBinPacking"

    def score(self, node: NodeInfo, pod: PodRequest) -> float:
        if pod.gpus <= 0 or node.allocatable_gpus <= 0:
            return 0.0
        return 100.0 * min(1.0, (node.used_gpus + pod.gpus) / node.allocatable_gpus)


class AvoidGpuNodes:
    """A pod that needs no GPU prefers a node that has none: GPU nodes stay for GPU work."""

    name = "AvoidGpuNodes"

    def score(self, node: NodeInfo, pod: PodRequest) -> float:
        return 100.0 if pod.gpus > 0 or node.allocatable_gpus == 0 else 0.0


@dataclass(frozen=True)
class Profile:
    """Filters run in order (a node's first failing filter names its reason); scores are
    weighted and normalized back to 0-100."""

    filters: tuple[Filter, ...]
    scores: tuple[tuple[Score, float], ...]


def default_profile() -> Profile:
    return Profile(
        filters=(NodeUnschedulable(), TaintToleration(), NodeSelector(), NodeAffinity(), Resources()),
        scores=((GpuBinPacking(), 10.0), (AvoidGpuNodes(), 1.0)),
    )


# -- decisions ---------------------------------------------------------------------------------
def rejections(profile: Profile, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
    """The first failing filter's reasons, or empty when the pod fits the node."""
    for f in profile.filters:
        if reasons := f.check(node, pod):
            return reasons
    return ()


def total_score(profile: Profile, node: NodeInfo, pod: PodRequest) -> float:
    weight = sum(w for _, w in profile.scores)
    if weight <= 0:
        return 0.0
    return sum(w * min(100.0, max(0.0, s.score(node, pod))) for s, w in profile.scores) / weight


def explain(profile: Profile, node: NodeInfo, pod: PodRequest, score: float, fitting: int) -> str:
    """``gpu-0: best of 4 fitting nodes, score 100 (GpuBinPacking 100, AvoidGpuNodes 100)``."""
    parts = ", ".join(f"{s.name} {s.score(node, pod):.0f}" for s, _ in profile.scores)
    return f"{node.name}: best of {fitting} fitting nodes, score {score:.0f} ({parts})"


def summarize(pod: str, node_reasons: Mapping[str, Sequence[str]], total: int) -> str:
    """``0/6 nodes fit pod x: 4 Insufficient nvidia.com/gpu, 2 untolerated taint ...``."""
    counts = Counter(r for reasons in node_reasons.values() for r in reasons)
    parts = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda rn: (-rn[1], rn[0])))
    fit = total - len(node_reasons)
    return f"{fit}/{total} nodes fit pod {pod}" + (f": {parts}" if parts else "")


def _order(pods: Iterable[PodRequest]) -> list[PodRequest]:
    """Largest first: the hardest pod to place picks while there is most choice."""
    return sorted(pods, key=lambda p: (-p.gpus, -p.cpu_milli, -p.memory, p.name))


def place_gang(nodes: Sequence[NodeInfo], gang: Gang, profile: Profile | None = None) -> GangFit | GangNoFit:
    """Place the gang on a copy of ``nodes``: enough pods fit, or nothing is assigned."""
    profile = profile or default_profile()
    working = {n.name: n for n in nodes}  # a copy: the caller's snapshot is never touched
    assignments: dict[str, str] = {}
    reasons: dict[str, str] = {}
    first_miss: tuple[PodRequest, dict[str, tuple[str, ...]]] | None = None
    for pod in _order(gang.pods):
        node_reasons: dict[str, tuple[str, ...]] = {}
        best: tuple[float, str] | None = None
        for name in sorted(working):
            if rejected := rejections(profile, working[name], pod):
                node_reasons[name] = rejected
                continue
            score = total_score(profile, working[name], pod)
            if best is None or score > best[0]:  # names ascend: the first of equals wins
                best = (score, name)
        if best is None:
            first_miss = first_miss or (pod, node_reasons)
            reasons[pod.name] = summarize(pod.name, node_reasons, len(working))
            continue
        score, name = best
        reasons[pod.name] = explain(profile, working[name], pod, score, len(working) - len(node_reasons))
        working[name] = working[name].with_pod(pod)
        assignments[pod.name] = name
    need = max(0, min(gang.min_available, len(gang.pods)))
    if first_miss is None or len(assignments) >= need:
        return GangFit(assignments, reasons)
    pod, node_reasons = first_miss
    detail = summarize(pod.name, node_reasons, len(working))
    if len(gang.pods) > 1:
        detail = (
            f"gang {gang.job_key} needs {need} of {len(gang.pods)} pods, {len(assignments)} fit; {detail}"
        )
    empty = [dataclasses.replace(n, used_gpus=0, used_cpu_milli=0, used_memory=0, used_pods=0) for n in nodes]
    resolvable = any(not rejections(profile, n, pod) for n in empty)
    if not resolvable:
        detail += " (no node could fit it even if empty)"
    return GangNoFit(detail, node_reasons, resolvable)


@dataclass(frozen=True)
class GangDecision:
    gang: Gang
    outcome: GangFit | GangNoFit


def gang_order(gangs: Iterable[Gang]) -> list[Gang]:
    """Higher priority first, then the older gang, then by key (deterministic)."""
    return sorted(gangs, key=lambda g: (-g.priority, g.created, g.job_key))


def place_gangs(
    nodes: Sequence[NodeInfo], gangs: Iterable[Gang], profile: Profile | None = None
) -> list[GangDecision]:
    """One scheduling cycle: gangs in order, each seeing the nodes as earlier fits left them.

    A gang that does not fit does not block smaller ones behind it (they may use what it
    could not); reserving capacity for a starving gang is a later policy.
    """
    by_name = {n.name: n for n in nodes}
    decisions = []
    for gang in gang_order(gangs):
        outcome = place_gang(list(by_name.values()), gang, profile)
        if isinstance(outcome, GangFit):
            pods = {p.name: p for p in gang.pods}
            for pod_name, node_name in outcome.assignments.items():
                by_name[node_name] = by_name[node_name].with_pod(pods[pod_name])
        decisions.append(GangDecision(gang, outcome))
    return decisions
