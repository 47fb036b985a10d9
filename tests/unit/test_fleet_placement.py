"""The vectorised fleet, FGD's fragmentation measure and the placement scorers, by hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from aiplane.policies.scheduling import scorers
from aiplane.policies.scheduling.fleet import Fleet, NodeShape, Placement, PodShape
from aiplane.policies.scheduling.fragmentation import Fragmentation, TargetWorkload
from aiplane.policies.scheduling.gangs import GangFit, GangNoFit, place_gang
from aiplane.policies.scheduling.gpumodel import canonical, parse_spec, spec_matches

RNG = np.random.default_rng(0)
SHARE = PodShape("share", cpu_milli=1000, gpus=1, gpu_milli=500)
WHOLE = PodShape("whole", cpu_milli=1000, gpus=1, gpu_milli=1000)


def fleet(*nodes: tuple[str, int, str]) -> Fleet:
    return Fleet([NodeShape(name, 32_000, 131_072, gpus, model) for name, gpus, model in nodes])


# -- the one GPU-model matcher -----------------------------------------------------------------------
def test_gpu_spec_matches_whole_names_and_aliases() -> None:
    assert spec_matches("V100M16|V100M32", "v100m32")
    assert not spec_matches("V100M16|V100M32", "V100")
    assert spec_matches("A100", "NVIDIA-A100-SXM4-80GB")  # the alias users write, the label GFD reports
    assert not spec_matches("A100", "NVIDIA-A100-SXM4-40GB")  # a substring rule matched this
    assert spec_matches(None, "T4") and spec_matches("", "T4") and spec_matches("*", "T4")
    assert not spec_matches("T4", None)
    assert parse_spec(" T4 | p100 ") == {canonical("T4"), "p100"}


# -- the fleet ---------------------------------------------------------------------------------------
def test_feasible_checks_model_devices_cpu_and_memory() -> None:
    f = fleet(("a", 2, "T4"), ("b", 8, "V100M32"), ("c", 0, ""))
    assert f.feasible(PodShape(gpus=4, gpu_milli=1000)).tolist() == [False, True, False]
    assert f.feasible(PodShape(gpus=1, gpu_milli=300, gpu_spec="T4|P100")).tolist() == [True, False, False]
    assert f.feasible(PodShape(cpu_milli=40_000)).tolist() == [False, False, False]
    assert f.feasible(PodShape(cpu_milli=1000)).tolist() == [True, True, True]  # CPU-only goes anywhere
    f.bind(PodShape(gpus=1, gpu_milli=700), Placement(0, (0,)))
    f.bind(PodShape(gpus=1, gpu_milli=700), Placement(0, (1,)))
    assert f.feasible(PodShape(gpus=1, gpu_milli=400)).tolist() == [False, True, False]
    assert f.feasible(PodShape(gpus=1, gpu_milli=300)).tolist() == [True, True, False]


def test_bind_refuses_to_over_commit_and_unbind_restores() -> None:
    f = fleet(("a", 1, "T4"))
    f.bind(SHARE, Placement(0, (0,)))
    f.unbind(SHARE, Placement(0, (0,)))
    assert f.gpu_free.tolist() == [[1000]] and f.cpu_free.tolist() == [32_000]
    f.bind(WHOLE, Placement(0, (0,)))
    with pytest.raises(ValueError, match="over-committed node a"):
        f.bind(SHARE, Placement(0, (0,)))


def test_why_not_counts_each_node_under_its_first_failing_filter() -> None:
    f = fleet(("a", 2, "T4"), ("b", 8, "V100M16"), ("c", 8, "V100M32"))
    f.bind(PodShape(gpus=8, gpu_milli=1000), Placement(2, tuple(range(8))))
    pod = PodShape(gpus=4, gpu_milli=1000, gpu_spec="V100M16|V100M32")
    assert f.why_not(pod) == {"GPU model not in V100M16|V100M32": 1, "too few free GPUs": 1}


# -- fragmentation -----------------------------------------------------------------------------------
def test_fragmentation_counts_what_each_shape_cannot_use() -> None:
    f = fleet(("a", 2, "T4"))
    workload = TargetWorkload(
        (PodShape(cpu_milli=1000, gpus=1, gpu_milli=600), PodShape(gpus=2, gpu_milli=1000)),
        np.array([0.5, 0.5]),
    )
    frag = Fragmentation(f, workload)
    assert frag.node_frag.tolist() == [0.0]  # an empty node suits both shapes
    f.bind(PodShape(gpus=1, gpu_milli=500), Placement(0, (0,)))
    frag.refresh(0)
    # the 600m shape fits the free device and cannot use the 500m left: 500 fragment;
    # the 2-GPU shape fits nowhere: all 1500 free is fragment for it
    assert frag.node_frag.tolist() == [0.5 * 500 + 0.5 * 1500]
    assert frag.frag_rate() == pytest.approx(1000 / 1500)


def test_fragmentation_with_memory_counts_gpus_whose_node_has_no_memory_left() -> None:
    f = fleet(("a", 2, "T4"))
    wants = PodShape(cpu_milli=1000, memory_mib=65_536, gpus=1, gpu_milli=1000)
    workload = TargetWorkload.from_pods([wants])
    f.bind(PodShape(memory_mib=100_000, gpus=1, gpu_milli=1000), Placement(0, (0,)))
    assert Fragmentation(f, workload).node_frag.tolist() == [0.0]  # FGD: the free GPU suits the shape
    assert Fragmentation(f, workload, memory=True).node_frag.tolist() == [1000.0]  # 31 GiB left, 64 wanted


def test_target_shapes_carry_the_median_memory_of_their_pods() -> None:
    pods = [PodShape(cpu_milli=1000, memory_mib=m, gpus=1, gpu_milli=1000) for m in (1024, 4096, 65_536)]
    (shape,) = TargetWorkload.from_pods(
        [*pods, PodShape(cpu_milli=1000, memory_mib=2048, gpus=1, gpu_milli=1000)]
    ).shapes
    assert shape.memory_mib == 3072  # the median of 1024, 2048, 4096 and 65536, not their mean


def test_aiplane_keeps_memory_beside_free_gpus_where_fgd_takes_the_first_name() -> None:
    f = fleet(("a", 4, "G2"), ("b", 4, "G2"))
    f.bind(PodShape(memory_mib=59_392, gpus=2, gpu_milli=1000), Placement(0, (0, 1)))  # a: 70 GiB free
    f.bind(PodShape(gpus=2, gpu_milli=1000), Placement(1, (0, 1)))  # b: 128 GiB free
    popular = PodShape(cpu_milli=1000, memory_mib=65_536, gpus=1, gpu_milli=1000)
    workload = TargetWorkload.from_pods(
        [popular] * 9 + [PodShape(cpu_milli=1000, memory_mib=40_960, gpus=1, gpu_milli=1000)]
    )
    pod = PodShape(cpu_milli=1000, memory_mib=40_960, gpus=1, gpu_milli=1000)
    nodes = np.flatnonzero(f.feasible(pod))
    fgd, ours = scorers.make(["fgd", "aiplane"], workload)
    # on a the pod leaves 30 GiB beside its last free GPU: no popular pod can use that GPU
    assert fgd.place(f, pod, nodes, RNG).node == 0
    assert ours.place(f, pod, nodes, RNG).node == 1


@pytest.mark.parametrize("memory", [False, True])
def test_hypothetical_growth_matches_recomputing_after_binding(memory: bool) -> None:
    f = fleet(("a", 4, "T4"), ("b", 8, "G2"))
    pods = [
        PodShape(cpu_milli=c, memory_mib=mem, gpus=1, gpu_milli=m)
        for c, mem, m in ((2000, 70_000, 300), (4000, 8192, 500), (1000, 64_000, 1000))
    ]
    workload = TargetWorkload.from_pods([*pods, PodShape(gpus=4, gpu_milli=1000), PodShape(cpu_milli=8000)])
    frag = Fragmentation(f, workload, memory=memory)
    f.bind(pods[0], Placement(0, (2,)))
    frag.refresh(0)
    for pod in (*pods, PodShape(gpus=4, gpu_milli=1000), PodShape(cpu_milli=8000)):
        nodes = np.flatnonzero(f.feasible(pod))
        if pod.shares_gpu:
            rows, devices, before = scorers.share_candidates(f, pod, nodes)
            predicted = frag.after_share(pod, nodes[rows], before)
            placements = [Placement(int(nodes[r]), (int(d),)) for r, d in zip(rows, devices, strict=True)]
        else:
            predicted = frag.after_whole(pod, nodes)
            placements = [
                Placement(int(n), f.exclusive_devices(int(n), pod.gpus if pod.gpu_milli else 0))
                for n in nodes
            ]
        for value, placement in zip(predicted, placements, strict=True):
            trial = f.copy()
            trial.bind(pod, placement)
            expected = Fragmentation(trial, workload, memory=memory).node_frag[placement.node]
            assert value == pytest.approx(expected)


def test_target_workload_keeps_the_popular_shapes() -> None:
    pods = [WHOLE] * 60 + [SHARE] * 35 + [PodShape(cpu_milli=7, gpus=8, gpu_milli=1000)] * 5
    workload = TargetWorkload.from_pods(pods, popularity=0.95)
    assert [s.gpu_milli for s in workload.shapes] == [1000, 500]
    assert workload.freq.tolist() == pytest.approx([60 / 95, 35 / 95])


# -- scorers -----------------------------------------------------------------------------------------
def place(name: str, f: Fleet, pod: PodShape, workload: TargetWorkload | None = None) -> Placement:
    (scorer,) = scorers.make([name], workload or TargetWorkload.from_pods([pod]))
    return scorer.place(f, pod, np.flatnonzero(f.feasible(pod)), RNG)


def half_used() -> Fleet:
    f = fleet(("empty", 4, "T4"), ("half", 4, "T4"))
    f.bind(PodShape(cpu_milli=16_000, gpus=2, gpu_milli=1000), Placement(1, (0, 1)))
    return f


@pytest.mark.parametrize("name", ["best-fit", "gpu-packing", "fgd", "aiplane"])
def test_packing_policies_add_to_the_used_node(name: str) -> None:
    assert (
        place(
            name, half_used(), WHOLE, TargetWorkload.from_pods([WHOLE, PodShape(gpus=4, gpu_milli=1000)])
        ).node
        == 1
    )


def test_gpu_clustering_joins_pods_of_the_same_class() -> None:
    f = half_used()  # node 1 runs a 2-GPU pod
    assert place("gpu-clustering", f, WHOLE).node == 0  # a 1-GPU pod keeps away from it
    assert place("gpu-clustering", f, PodShape(gpus=2, gpu_milli=1000)).node == 1


def test_spread_picks_the_least_allocated_node() -> None:
    assert place("spread", half_used(), WHOLE).node == 0


def test_equal_scores_go_to_the_first_name() -> None:
    f = Fleet([NodeShape(n, 32_000, 131_072, 4, "T4") for n in ("n2", "n0", "n1")])
    assert f.names[place("best-fit", f, WHOLE).node] == "n0"


def test_shared_pods_take_the_tightest_device_and_fgd_avoids_stranding() -> None:
    f = fleet(("a", 2, "T4"))
    f.bind(PodShape(gpus=1, gpu_milli=300), Placement(0, (1,)))  # device 1 has 700 free
    pod = PodShape(cpu_milli=100, gpus=1, gpu_milli=200)
    assert place("best-fit", f, pod).devices == (1,)
    # when 700m pods are what arrives, FGD keeps device 1's 700 for them (500 left there would
    # be a fragment) and takes the share from the free device
    workload = TargetWorkload((PodShape(gpus=1, gpu_milli=700), pod), np.array([0.9, 0.1]))
    assert place("fgd", f, pod, workload).devices == (0,)
    assert place("aiplane", f, pod, workload).devices == (0,)


def test_unknown_policy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown policy 'nope'; known: aiplane, fgd"):
        scorers.make(["nope"], TargetWorkload.from_pods([WHOLE]))


# -- gangs -------------------------------------------------------------------------------------------
def test_gang_fits_whole_or_not_at_all() -> None:
    f = fleet(("a", 4, "T4"), ("b", 4, "T4"))
    (scorer,) = scorers.make(["best-fit"], TargetWorkload.from_pods([WHOLE]))
    four = PodShape(cpu_milli=1000, gpus=4, gpu_milli=1000)
    fit = place_gang(f, [four, four], scorer, RNG)
    assert isinstance(fit, GangFit) and sorted(p.node for p in fit.placements) == [0, 1]
    assert f.gpu_free.sum() == 8000  # nothing bound until the caller binds
    miss = place_gang(f, [four, four, four], scorer, RNG)
    assert isinstance(miss, GangNoFit)
    assert miss.reason == "gang of 3 pods, 2 fit; 0/2 nodes fit: 2 too few free GPUs"
    assert f.gpu_free.sum() == 8000
