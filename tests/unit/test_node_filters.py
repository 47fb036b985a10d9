"""The static node filters: taints and tolerations, node selector, required affinity, cordon."""

from __future__ import annotations

import dataclasses

import pytest

from aiplane.policies.scheduling.filters import (
    AffinityTerm,
    MatchExpression,
    NodeInfo,
    PodRequest,
    Taint,
    Toleration,
)
from aiplane.runtime.kubernetes.scheduling_view import STATIC_FILTERS

GPU_TAINT = Taint("nvidia.com/gpu", "present", "NoSchedule")
TOLERATE_GPU = Toleration("nvidia.com/gpu", "Exists", effect="NoSchedule")
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "aiplane.dev/gpu-model": "H100", "rank": "3"}


def gpu_node(name: str, **changes: object) -> NodeInfo:
    node = NodeInfo(name, labels=dict(H100), taints=(GPU_TAINT,))
    return dataclasses.replace(node, **changes)  # type: ignore[arg-type]


def gpu_pod(name: str, **changes: object) -> PodRequest:
    pod = PodRequest(name, tolerations=(TOLERATE_GPU,))
    return dataclasses.replace(pod, **changes)  # type: ignore[arg-type]


def rejections(node: NodeInfo, pod: PodRequest) -> tuple[str, ...]:
    """The first failing filter's reasons, in the order the scheduling view runs them."""
    for f in STATIC_FILTERS:
        if reasons := f.check(node, pod):
            return reasons
    return ()


def expr(key: str, op: str, *values: str) -> MatchExpression:
    return MatchExpression(key, op, values)


@pytest.mark.parametrize(
    ("node", "pod", "reasons"),
    [
        # taints and tolerations
        (gpu_node("n"), gpu_pod("p", tolerations=()), ("untolerated taint nvidia.com/gpu=present",)),
        (gpu_node("n"), gpu_pod("p"), ()),
        (gpu_node("n"), gpu_pod("p", tolerations=(Toleration("nvidia.com/gpu", "Equal", "present"),)), ()),
        (
            gpu_node("n"),
            gpu_pod("p", tolerations=(Toleration("nvidia.com/gpu", "Equal", "absent"),)),
            ("untolerated taint nvidia.com/gpu=present",),
        ),
        (
            gpu_node("n"),
            gpu_pod("p", tolerations=(Toleration("nvidia.com/gpu", "Exists", effect="NoExecute"),)),
            ("untolerated taint nvidia.com/gpu=present",),
        ),
        (gpu_node("n"), gpu_pod("p", tolerations=(Toleration("", "Exists"),)), ()),  # tolerates everything
        (gpu_node("n", taints=(Taint("spot", "", "PreferNoSchedule"),)), gpu_pod("p", tolerations=()), ()),
        (
            gpu_node("n", taints=(Taint("maintenance", "", "NoExecute"),)),
            gpu_pod("p"),
            ("untolerated taint maintenance",),
        ),
        # node selector
        (gpu_node("n"), gpu_pod("p", node_selector={"aiplane.dev/gpu-model": "H100"}), ()),
        (
            gpu_node("n"),
            gpu_pod("p", node_selector={"aiplane.dev/gpu-model": "H100", "zone": "a"}),
            ("node selector mismatch",),
        ),
        # required node affinity: expressions ANDed within a term, terms ORed
        (
            gpu_node("n"),
            gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("rank", "In", "2", "3"),)),)),
            (),
        ),
        (
            gpu_node("n"),
            gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("rank", "NotIn", "3"),)),)),
            ("node affinity mismatch",),
        ),
        (
            gpu_node("n"),
            gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("zone", "NotIn", "a"),)),)),
            (),
        ),
        (gpu_node("n"), gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("rank", "Exists"),)),)), ()),
        (
            gpu_node("n"),
            gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("zone", "Exists"),)),)),
            ("node affinity mismatch",),
        ),
        (
            gpu_node("n"),
            gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("zone", "DoesNotExist"),)),)),
            (),
        ),
        (
            gpu_node("n"),
            gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("rank", "Gt", "2"),)),)),
            (),
        ),
        (
            gpu_node("n"),
            gpu_pod("p", required_affinity_terms=(AffinityTerm((expr("rank", "Lt", "3"),)),)),
            ("node affinity mismatch",),
        ),
        (
            gpu_node("n"),
            gpu_pod(
                "p", required_affinity_terms=(AffinityTerm((expr("rank", "Exists"), expr("zone", "Exists"))),)
            ),
            ("node affinity mismatch",),
        ),
        (
            gpu_node("n"),
            gpu_pod(
                "p",
                required_affinity_terms=(
                    AffinityTerm((expr("zone", "Exists"),)),
                    AffinityTerm((expr("aiplane.dev/gpu-model", "In", "H100"),)),
                ),
            ),
            (),
        ),
        (
            gpu_node("n"),
            gpu_pod(
                "p",
                required_affinity_terms=(
                    AffinityTerm((MatchExpression("metadata.name", "In", ("m",), True),)),
                ),
            ),
            ("node affinity mismatch",),
        ),
        # a cordoned node, unless the pod tolerates the cordon
        (gpu_node("n", unschedulable=True), gpu_pod("p"), ("node is unschedulable",)),
        (
            gpu_node("n", unschedulable=True),
            gpu_pod(
                "p", tolerations=(TOLERATE_GPU, Toleration("node.kubernetes.io/unschedulable", "Exists"))
            ),
            (),
        ),
        # the first failing filter names the node's reason: cordon, taints, selector, affinity
        (gpu_node("n", unschedulable=True), gpu_pod("p", tolerations=()), ("node is unschedulable",)),
        (
            gpu_node("n"),
            gpu_pod("p", tolerations=(), node_selector={"zone": "a"}),
            ("untolerated taint nvidia.com/gpu=present",),
        ),
        (
            gpu_node("n"),
            gpu_pod(
                "p",
                node_selector={"zone": "a"},
                required_affinity_terms=(AffinityTerm((expr("zone", "Exists"),)),),
            ),
            ("node selector mismatch",),
        ),
    ],
)
def test_filters_say_why_a_node_is_rejected(
    node: NodeInfo, pod: PodRequest, reasons: tuple[str, ...]
) -> None:
    assert rejections(node, pod) == reasons
