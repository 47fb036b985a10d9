"""Where a pod may go at all: the static node filters, as Kubernetes defines them.

Before the fleet (:mod:`aiplane.policies.scheduling.fleet`) checks free GPUs, CPU and
memory, each pod template is matched against every node's labels, taints and cordon:

* ``NodeUnschedulable``: a cordoned node (``spec.unschedulable``) takes only pods that
  tolerate ``node.kubernetes.io/unschedulable``;
* ``TaintToleration``: every ``NoSchedule``/``NoExecute`` taint must be tolerated
  (``PreferNoSchedule`` only discourages, so it never rejects);
* ``NodeSelector``: every ``nodeSelector`` label must match exactly;
* ``NodeAffinity``: ``requiredDuringSchedulingIgnoredDuringExecution``, its
  ``nodeSelectorTerms`` ORed and each term's expressions (``matchExpressions`` on labels,
  ``matchFields`` on ``metadata.name``) ANDed.

Each filter says why it rejects a node, so a pod's wait reason can count the nodes per
reason; the runtime runs them in order (the first failing one names the node's reason)
once per pod template and hands the fleet an ``Eligibility`` mask. Nothing here reads
resources or does I/O. ``PodRequest`` and ``Gang`` are what the runtime reads of pending
pods: where each may go, and which start together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only discourages


# -- nodes and pods ------------------------------------------------------------------------------
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
    """What the static filters read of a node (its resources live in the fleet)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False


@dataclass(frozen=True)
class PodRequest:
    """Where a pod asks to go: its node selector, required node affinity and tolerations."""

    name: str
    node_selector: Mapping[str, str] = field(default_factory=dict)
    required_affinity_terms: tuple[AffinityTerm, ...] = ()
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True)
class Gang:
    """Pods that start together. ``min_available`` below ``len(pods)`` lets a gang start
    with fewer (a replacement pod joins running peers); ``priority`` and ``created`` (epoch
    seconds) order it among the other work."""

    job_key: str
    pods: tuple[PodRequest, ...]
    min_available: int
    priority: int = 0
    created: float = 0.0


# -- filters -----------------------------------------------------------------------------------
class Filter(Protocol):
    name: str

    def check(self, node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
        """Why ``pod`` may not go on ``node``; empty when it may."""
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
