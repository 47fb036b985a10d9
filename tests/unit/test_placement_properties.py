"""Properties of placement that must hold for every policy, on random fleets and pod streams."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aiplane.policies.scheduling import scorers
from aiplane.policies.scheduling.fleet import MILLI, Fleet, NodeShape, PodShape
from aiplane.policies.scheduling.fragmentation import TargetWorkload
from aiplane.policies.scheduling.gangs import GangFit, place_gang

MODELS = ("T4", "V100M16", "V100M32", "A10")

nodes_st = st.lists(
    st.builds(
        lambda i, cpu, gpus, model: NodeShape(f"n{i:03d}", cpu * 1000, 65_536, gpus, model if gpus else ""),
        st.integers(0, 999),
        st.integers(1, 64),
        st.sampled_from([0, 1, 2, 4, 8]),
        st.sampled_from(MODELS),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda n: n.name,
)
pods_st = st.lists(
    st.one_of(
        st.builds(lambda c: PodShape(cpu_milli=c), st.integers(0, 16_000)),
        st.builds(
            lambda c, m, spec: PodShape(cpu_milli=c, memory_mib=512, gpus=1, gpu_milli=m, gpu_spec=spec),
            st.integers(0, 8000),
            st.integers(1, 1000),
            st.sampled_from(["", "T4", "V100M16|V100M32"]),
        ),
        st.builds(
            lambda c, g: PodShape(cpu_milli=c, gpus=g, gpu_milli=MILLI),
            st.integers(0, 16_000),
            st.sampled_from([1, 2, 4, 8]),
        ),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(nodes_st, pods_st, st.sampled_from(sorted(scorers.SCORERS)))
def test_no_node_is_ever_over_committed(nodes: list[NodeShape], pods: list[PodShape], policy: str) -> None:
    fleet = Fleet(nodes)
    (scorer,) = scorers.make([policy], TargetWorkload.from_pods(pods))
    rng = np.random.default_rng(0)
    bound: list[PodShape] = []
    for pod in pods:
        fits = np.flatnonzero(fleet.feasible(pod))
        if not len(fits):
            continue
        placement = scorer.place(fleet, pod, fits, rng)
        assert placement.node in fits
        assert len(placement.devices) == (pod.gpus if pod.total_milli else 0)
        assert len(set(placement.devices)) == len(placement.devices)
        if pod.total_milli:
            assert fleet.access(pod.gpu_spec)[placement.node], "placed on a GPU model the pod excludes"
        fleet.bind(pod, placement)  # raises on over-commit
        scorer.bound(placement.node)
        bound.append(pod)
    assert (fleet.cpu_free >= 0).all() and (fleet.memory_free >= 0).all()
    assert ((fleet.gpu_free >= 0) & (fleet.gpu_free <= MILLI)).all()
    assert (fleet.gpu_free[~fleet.gpu_exists] == 0).all()  # nothing lands on a device that does not exist
    # what the fleet shows as used is exactly what the placed pods asked for
    assert fleet.gpu_allocated_milli == sum(p.total_milli for p in bound)
    assert int((fleet.cpu_capacity - fleet.cpu_free).sum()) == sum(p.cpu_milli for p in bound)


@settings(max_examples=60, deadline=None)
@given(
    nodes_st,
    st.lists(st.sampled_from([1, 2, 4, 8]), min_size=2, max_size=6),
    st.sampled_from(["aiplane", "best-fit", "fgd"]),
)
def test_gangs_are_all_or_nothing(nodes: list[NodeShape], sizes: list[int], policy: str) -> None:
    fleet = Fleet(nodes)
    gang = [PodShape(f"w{i}", 1000, 0, g, MILLI) for i, g in enumerate(sizes)]
    (scorer,) = scorers.make([policy], TargetWorkload.from_pods(gang))
    before = fleet.gpu_free.copy()
    outcome = place_gang(fleet, gang, scorer, np.random.default_rng(0))
    assert (fleet.gpu_free == before).all()  # deciding binds nothing
    if isinstance(outcome, GangFit):
        assert len(outcome.placements) == len(gang)
        for pod, placement in zip(gang, outcome.placements, strict=True):
            fleet.bind(pod, placement)  # every pod at once: no over-commit among peers
    else:
        assert outcome.reason.startswith(f"gang of {len(gang)} pods, ")
