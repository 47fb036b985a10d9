"""Cluster node placement: filters with reasons, GPU bin-packing, all-or-nothing gangs."""

from __future__ import annotations

import dataclasses

import pytest

from aiplane.policies.scheduling.nodes import (
    AffinityTerm,
    Gang,
    GangFit,
    GangNoFit,
    MatchExpression,
    NodeInfo,
    PodRequest,
    Profile,
    Taint,
    Toleration,
    default_profile,
    place_gang,
    place_gangs,
    rejections,
    summarize,
)

GPU_TAINT = Taint("nvidia.com/gpu", "present", "NoSchedule")
TOLERATE_GPU = Toleration("nvidia.com/gpu", "Exists", effect="NoSchedule")
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "aiplane.dev/gpu-model": "H100", "rank": "3"}


def gpu_node(name: str, used: int = 0, gpus: int = 8, **changes: object) -> NodeInfo:
    node = NodeInfo(
        name,
        labels=dict(H100),
        taints=(GPU_TAINT,),
        allocatable_gpus=gpus,
        allocatable_cpu_milli=192_000,
        allocatable_memory=2048 * 2**30,
        used_gpus=used,
    )
    return dataclasses.replace(node, **changes)  # type: ignore[arg-type]


def gpu_pod(name: str, gpus: int = 8, **changes: object) -> PodRequest:
    pod = PodRequest(name, gpus=gpus, cpu_milli=1000, memory=2**30, tolerations=(TOLERATE_GPU,))
    return dataclasses.replace(pod, **changes)  # type: ignore[arg-type]


def gang(key: str, *pods: PodRequest, min_available: int | None = None, **kw: object) -> Gang:
    return Gang(key, pods, len(pods) if min_available is None else min_available, **kw)  # type: ignore[arg-type]


def expr(key: str, op: str, *values: str) -> MatchExpression:
    return MatchExpression(key, op, values)


# -- filters -----------------------------------------------------------------------------------
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
        # resources: every short resource counts
        (gpu_node("n", used=6), gpu_pod("p", gpus=2), ()),
        (gpu_node("n", used=7), gpu_pod("p", gpus=2), ("Insufficient nvidia.com/gpu",)),
        (
            gpu_node("n", used_cpu_milli=191_500),
            gpu_pod("p", gpus=9),
            ("Insufficient nvidia.com/gpu", "Insufficient cpu"),
        ),
        (gpu_node("n", used_memory=2048 * 2**30), gpu_pod("p"), ("Insufficient memory",)),
        (gpu_node("n", used_pods=110), gpu_pod("p"), ("Too many pods",)),
        # a cordoned node, unless the pod tolerates the cordon
        (gpu_node("n", unschedulable=True), gpu_pod("p"), ("node is unschedulable",)),
        (
            gpu_node("n", unschedulable=True),
            gpu_pod(
                "p", tolerations=(TOLERATE_GPU, Toleration("node.kubernetes.io/unschedulable", "Exists"))
            ),
            (),
        ),
        # the first failing filter names the node's reason
        (gpu_node("n", used=8, unschedulable=True), gpu_pod("p", tolerations=()), ("node is unschedulable",)),
        (gpu_node("n", used=8), gpu_pod("p", tolerations=()), ("untolerated taint nvidia.com/gpu=present",)),
    ],
)
def test_filters_say_why_a_node_is_rejected(
    node: NodeInfo, pod: PodRequest, reasons: tuple[str, ...]
) -> None:
    assert rejections(default_profile(), node, pod) == reasons


# -- scoring -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("used", "gpus", "chosen"),
    [
        ({"a": 0, "b": 4}, 2, "b"),  # b ends 6/8 full, a 2/8
        ({"a": 6, "b": 4}, 2, "a"),  # a ends full
        ({"a": 7, "b": 4}, 2, "b"),  # a cannot take it
        ({"a": 0, "b": 0}, 4, "a"),  # a tie goes to the first name
        ({"b": 0, "a": 0}, 4, "a"),  # whatever the input order
    ],
)
def test_bin_packing_prefers_the_node_that_ends_fullest(used: dict[str, int], gpus: int, chosen: str) -> None:
    nodes = [gpu_node(name, used=u) for name, u in used.items()]
    fit = place_gang(nodes, gang("ns/j", gpu_pod("p", gpus=gpus)))
    assert isinstance(fit, GangFit)
    assert fit.assignments == {"p": chosen}


def test_a_pod_without_gpus_prefers_a_node_without_gpus() -> None:
    cpu = NodeInfo("cpu-0", allocatable_cpu_milli=16_000, allocatable_memory=64 * 2**30)
    fit = place_gang([gpu_node("a-gpu", used=4), cpu], gang("ns/web", gpu_pod("web", gpus=0)))
    assert isinstance(fit, GangFit)
    assert fit.assignments == {"web": "cpu-0"}


# -- gangs -------------------------------------------------------------------------------------
FOUR_H100 = [gpu_node(f"gpu-h100-{i}") for i in range(4)]


def test_a_gang_that_does_not_fit_places_nothing() -> None:
    big = gang("ns/big", *(gpu_pod(f"big-{i}") for i in range(5)))
    outcome = place_gang(FOUR_H100, big)
    assert isinstance(outcome, GangNoFit)
    assert outcome.reason == (
        "gang ns/big needs 5 of 5 pods, 4 fit; 0/4 nodes fit pod big-4: 4 Insufficient nvidia.com/gpu"
    )
    assert outcome.node_reasons == {n.name: ("Insufficient nvidia.com/gpu",) for n in FOUR_H100}
    assert outcome.resolvable  # it would fit on a bigger fleet, or after preemption on this one...
    assert all(n.used_gpus == 0 for n in FOUR_H100)  # ...and the input is untouched
    # In a cycle, the failed gang leaves the nodes to the next gang: nothing was held.
    decisions = place_gangs(FOUR_H100, [big, gang("ns/small", gpu_pod("s", gpus=8), created=1.0)])
    assert [type(d.outcome) for d in decisions] == [GangNoFit, GangFit]
    assert decisions[1].outcome == GangFit(
        {"s": "gpu-h100-0"},
        {"s": "gpu-h100-0: best of 4 fitting nodes, score 100 (GpuBinPacking 100, AvoidGpuNodes 100)"},
    )


def test_a_gang_that_fits_gets_one_node_per_eight_gpu_worker() -> None:
    outcome = place_gang(FOUR_H100, gang("ns/train", *(gpu_pod(f"train-{i}") for i in range(3))))
    assert isinstance(outcome, GangFit)
    assert outcome.assignments == {"train-0": "gpu-h100-0", "train-1": "gpu-h100-1", "train-2": "gpu-h100-2"}


def test_packing_keeps_a_whole_node_free_for_a_big_pod() -> None:
    """Two 4-GPU pods share a node, so the 8-GPU pod that comes later still fits; spreading
    them (the default scheduler's habit) would strand 4 GPUs on each node."""
    nodes = [gpu_node("gpu-0"), gpu_node("gpu-1")]
    gangs = [
        gang("ns/a", gpu_pod("a", gpus=4), created=1.0),
        gang("ns/b", gpu_pod("b", gpus=4), created=2.0),
        gang("ns/c", gpu_pod("c", gpus=8), created=3.0),
    ]
    packed = place_gangs(nodes, gangs)
    assert [d.outcome.assignments for d in packed if isinstance(d.outcome, GangFit)] == [
        {"a": "gpu-0"},
        {"b": "gpu-0"},
        {"c": "gpu-1"},
    ]

    class LeastAllocated:  # the spreading baseline, as a Score plugin
        name = "LeastAllocated"

        def score(self, node: NodeInfo, pod: PodRequest) -> float:
            return 100.0 * (1 - (node.used_gpus + pod.gpus) / node.allocatable_gpus)

    spread = place_gangs(nodes, gangs, Profile(default_profile().filters, ((LeastAllocated(), 1.0),)))
    assert [type(d.outcome).__name__ for d in spread] == ["GangFit", "GangFit", "GangNoFit"]
    last = spread[2].outcome
    assert isinstance(last, GangNoFit)
    assert last.reason == "0/2 nodes fit pod c: 2 Insufficient nvidia.com/gpu"


def test_reasons_count_nodes_per_reason_most_common_first() -> None:
    full = [gpu_node(f"gpu-h100-{i}", used=8) for i in range(4)]
    reserved = [gpu_node(f"gpu-a100-{i}", taints=(Taint("dedicated", "inference"),)) for i in range(2)]
    outcome = place_gang(full + reserved, gang("ns/x", gpu_pod("x")))
    assert isinstance(outcome, GangNoFit)
    assert (
        outcome.reason
        == "0/6 nodes fit pod x: 4 Insufficient nvidia.com/gpu, 2 untolerated taint dedicated=inference"
    )
    assert summarize("y", {}, 3) == "3/3 nodes fit pod y"


def test_a_pod_no_node_could_ever_take_is_unresolvable() -> None:
    outcome = place_gang(FOUR_H100, gang("ns/huge", gpu_pod("huge", gpus=16)))
    assert isinstance(outcome, GangNoFit)
    assert not outcome.resolvable
    assert (
        outcome.reason
        == "0/4 nodes fit pod huge: 4 Insufficient nvidia.com/gpu (no node could fit it even if empty)"
    )


def test_min_available_lets_a_gang_start_with_fewer_pods() -> None:
    nodes = [gpu_node("gpu-0")]
    outcome = place_gang(nodes, gang("ns/shards", gpu_pod("s-0"), gpu_pod("s-1"), min_available=1))
    assert isinstance(outcome, GangFit)
    assert outcome.assignments == {"s-0": "gpu-0"}
    assert outcome.reasons["s-1"] == "0/1 nodes fit pod s-1: 1 Insufficient nvidia.com/gpu"
    none_fit = place_gang(
        [gpu_node("gpu-0", used=8)], gang("ns/shards", gpu_pod("s-0"), gpu_pod("s-1"), min_available=1)
    )
    assert isinstance(none_fit, GangNoFit)


def test_largest_pods_of_a_gang_are_placed_first() -> None:
    """The 2-GPU pod alone would pick the fuller big node and leave no room for the 6-GPU pod."""
    nodes = [gpu_node("gpu-a", gpus=4), gpu_node("gpu-b", gpus=16, used=10)]
    small, large = gpu_pod("small", gpus=2), gpu_pod("large", gpus=6)
    outcome = place_gang(nodes, gang("ns/mixed", small, large))
    assert isinstance(outcome, GangFit)
    assert outcome.assignments == {"large": "gpu-b", "small": "gpu-a"}
    one_by_one = place_gangs(nodes, [gang("ns/s", small, created=1.0), gang("ns/l", large, created=2.0)])
    assert [type(d.outcome).__name__ for d in one_by_one] == ["GangFit", "GangNoFit"]


def test_gangs_are_placed_by_priority_then_age() -> None:
    nodes = [gpu_node("gpu-0")]
    old = gang("ns/old", gpu_pod("old"), created=1.0)
    new = gang("ns/new", gpu_pod("new"), created=2.0)
    urgent = gang("ns/urgent", gpu_pod("urgent"), created=3.0, priority=10)
    decisions = place_gangs(nodes, [new, urgent, old])
    assert [(d.gang.job_key, type(d.outcome).__name__) for d in decisions] == [
        ("ns/urgent", "GangFit"),
        ("ns/old", "GangNoFit"),
        ("ns/new", "GangNoFit"),
    ]
    assert next(d.gang.job_key for d in place_gangs(nodes, [new, old])) == "ns/old"
