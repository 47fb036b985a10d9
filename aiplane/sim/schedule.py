"""``aiplane sim schedule``: replay a GPU pod list against placement policies.

The protocol is the FGD paper's artifact's (see ../shared/traces/README.md), so its
published table is a check on this code:

1. the cluster is the node list, empty;
2. the workload is the pod list, topped up with pods drawn from it at random (with
   replacement) until the GPUs requested reach ``ratio`` (1.3) times the cluster's GPU
   capacity, then shuffled with the seed;
3. pods are placed one by one, none departs; a pod that fits nowhere fails and is skipped;
4. after each 1% of arrived GPU demand the allocated share of GPU capacity is recorded,
   with the fragmentation rate (the share of idle GPU capacity that is fragment).

Policies and seeds are independent runs; results are averaged over seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from aiplane.policies.scheduling import scorers
from aiplane.policies.scheduling.fleet import Fleet, NodeShape, PodShape
from aiplane.policies.scheduling.fragmentation import Fragmentation, TargetWorkload

TUNE_RATIO = 1.3
FIRST_SEED = 42  # the artifact's seeds are 42..51
STEPS = 100  # records per 100% of arrival


@dataclass(frozen=True)
class Curve:
    """One run: the value after each 1% of arrived GPU demand, index = arrival percent."""

    policy: str
    seed: int
    allocated: np.ndarray  # share of GPU capacity allocated, 0..1
    frag_rate: np.ndarray  # share of idle GPU capacity that is fragment, 0..1
    failed: int  # pods that fitted nowhere
    pods: int
    seconds: float


def tune(
    pods: Sequence[PodShape], capacity_milli: int, ratio: float, rng: np.random.Generator
) -> list[PodShape]:
    """The artifact's workload tuning: scale the list's GPU demand to ``ratio`` x capacity.

    Below the target, pods drawn at random (with replacement) are appended until the next
    one would overshoot; above it, random pods are removed until it is met.
    """
    out = list(pods)
    target = ratio * capacity_milli
    demand = sum(p.total_milli for p in out)
    if demand > target:
        while demand > target and out:
            demand -= out.pop(int(rng.integers(len(out)))).total_milli
        return out
    if not any(p.total_milli for p in pods):
        raise ValueError("the pod list requests no GPU: nothing to scale to the cluster's capacity")
    while True:
        pod = pods[int(rng.integers(len(pods)))]
        if demand + pod.total_milli > target:
            return out
        out.append(pod)
        demand += pod.total_milli


def replay(
    nodes: Sequence[NodeShape],
    pods: Sequence[PodShape],
    policy: str,
    seed: int,
    *,
    ratio: float = TUNE_RATIO,
) -> Curve:
    """One policy, one seed."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    fleet = Fleet(nodes)
    capacity = fleet.gpu_capacity_milli
    if capacity <= 0:
        raise ValueError("the node list has no GPU")
    workload = tune(pods, capacity, ratio, rng)
    order = rng.permutation(len(workload))
    workload = [workload[i] for i in order]
    target = TargetWorkload.from_pods(workload)
    (scorer,) = scorers.make([policy], target)
    measure = Fragmentation(fleet, target)
    points = round(ratio * STEPS) + 1
    allocated = np.zeros(points)
    frag_rate = np.zeros(points)
    arrived = failed = 0
    step = 0
    for pod in workload:
        arrived += pod.total_milli
        fits = np.flatnonzero(fleet.feasible(pod))
        if len(fits):
            placement = scorer.place(fleet, pod, fits, rng)
            fleet.bind(pod, placement)
            scorer.bound(placement.node)
            measure.refresh(placement.node)
        else:
            failed += 1
        while step < points and arrived >= step * capacity / STEPS:
            allocated[step] = fleet.gpu_allocated_milli / capacity
            frag_rate[step] = measure.frag_rate()
            step += 1
    allocated[step:] = fleet.gpu_allocated_milli / capacity
    frag_rate[step:] = measure.frag_rate()
    return Curve(policy, seed, allocated, frag_rate, failed, len(workload), time.perf_counter() - started)


@dataclass(frozen=True)
class Row:
    policy: str
    arrival: float
    allocated_gpu_share: float
    fragmentation_rate: float
    seed_count: int


def summarize(curves: Sequence[Curve], arrivals: Sequence[float]) -> list[Row]:
    """Means over seeds, per policy (in first-seen order) and arrival (a fraction, 1.0 = 100%)."""
    rows = []
    for policy in dict.fromkeys(c.policy for c in curves):
        mine = [c for c in curves if c.policy == policy]
        for a in arrivals:
            i = round(a * STEPS)
            rows.append(
                Row(
                    policy,
                    a,
                    float(np.mean([c.allocated[min(i, len(c.allocated) - 1)] for c in mine])),
                    float(np.mean([c.frag_rate[min(i, len(c.frag_rate) - 1)] for c in mine])),
                    len(mine),
                )
            )
    return rows


def run(
    nodes: Sequence[NodeShape],
    pods: Sequence[PodShape],
    policies: Sequence[str],
    seeds: int,
    *,
    ratio: float = TUNE_RATIO,
    progress: Callable[[Curve], None] | None = None,
) -> list[Curve]:
    scorers.make(policies, TargetWorkload.from_pods(pods))  # unknown names fail before any work
    curves = []
    for policy in policies:
        for seed in range(FIRST_SEED, FIRST_SEED + seeds):
            curve = replay(nodes, pods, policy, seed, ratio=ratio)
            curves.append(curve)
            if progress:
                progress(curve)
    return curves
