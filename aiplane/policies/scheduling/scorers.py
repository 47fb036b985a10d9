"""Placement scorers: which feasible node (and which devices on it) a pod goes to.

Each scorer sees the :class:`Fleet` and the indices of the nodes that passed the filters,
and returns one :class:`Placement`. They are vectorised over nodes (numpy), so one call
costs the same few array operations on 10 nodes or 1,000.

The baselines follow the FGD paper's artifact (hkust-adsl/kubernetes-scheduler-simulator)
rule for rule, integer scores and random choice among equal scores included, because
those details move the published figures by points:

* ``random``: any feasible node, any device with room;
* ``spread``: kube-scheduler's default, least allocated CPU and memory;
* ``best-fit``: least CPU and GPU left after placement;
* ``dot-product``: Tetris's alignment of free resources with the request;
* ``gpu-packing``: first partly used devices, then free devices of used nodes, then empty nodes;
* ``gpu-clustering``: nodes that already run pods of the same GPU-demand class;
* ``fgd``: least growth of expected fragmentation, its score squashed to 0-100 by a sigmoid.

``aiplane`` is this project's policy: FGD's score over a measure that counts memory too,
with ties broken toward nodes already in use, then by name, then by best fit on the
device (see :class:`Aiplane`). docs/benchmarks.md shows the variants that were measured
and dropped (exact instead of sigmoid-rounded growth, GPU-weighted shapes, best fit as
the node rule, node-size keys, a multi-step waste table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from aiplane.policies.scheduling.fleet import MILLI, Fleet, IntArray, Placement, PodShape
from aiplane.policies.scheduling.fragmentation import FloatArray, Fragmentation, TargetWorkload

MAX_SPEC_CPU = 128_000  # the artifact's normalisers: the largest node's CPU and GPU (milli)
MAX_SPEC_GPU = 8_000


class Scorer(Protocol):
    name: str

    def place(self, fleet: Fleet, pod: PodShape, nodes: IntArray, rng: np.random.Generator) -> Placement:
        """Pick one of ``nodes`` (non-empty, all feasible) and the devices there."""
        ...

    def bound(self, node: int) -> None:
        """``node`` changed (a pod bound or left): refresh what is cached about it."""
        ...


# -- shared pieces ---------------------------------------------------------------------------------
def pick_max(scores: np.ndarray, ranks: IntArray) -> int:
    """Index of a maximal score; among equals, the node whose name sorts first (the
    artifact's kube-scheduler does so "for reproducibility" instead of choosing at random)."""
    best = np.flatnonzero(scores == scores.max())
    return int(best[0] if len(best) == 1 else best[np.argmin(ranks[best])])


def best_fit_device(fleet: Fleet, pod: PodShape, node: int) -> tuple[int, ...]:
    """The device with least room that still fits a shared pod; whole free devices otherwise."""
    if pod.gpus <= 0 or pod.gpu_milli <= 0:
        return ()
    if not pod.shares_gpu:
        return fleet.exclusive_devices(node, pod.gpus)
    free = fleet.gpu_free[node]
    room = np.where(free >= pod.gpu_milli, free, MILLI + 1)
    return (int(np.argmin(room)),)  # argmin: first of equals


def random_device(fleet: Fleet, pod: PodShape, node: int, rng: np.random.Generator) -> tuple[int, ...]:
    if not pod.shares_gpu:
        return best_fit_device(fleet, pod, node)
    return (int(rng.choice(np.flatnonzero(fleet.gpu_free[node] >= pod.gpu_milli))),)


def share_candidates(fleet: Fleet, pod: PodShape, nodes: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """(row into ``nodes``, device, free before) for every device a shared pod could take,
    keeping only the first device of each distinct free amount on a node (the others are
    interchangeable)."""
    free = fleet.gpu_free[nodes]  # [n, G]
    same_before = np.tril(free[:, :, None] == free[:, None, :], k=-1).any(
        axis=2
    )  # equal to an earlier device
    rows, devices = np.nonzero((free >= pod.gpu_milli) & ~same_before)
    return rows, devices, free[rows, devices]


class _Stateless:
    name = ""

    def bound(self, node: int) -> None:
        return None


class _IntScore(_Stateless):
    """A scorer that gives each node an integer score and picks the best device by best fit."""

    def scores(self, fleet: Fleet, pod: PodShape, nodes: IntArray) -> np.ndarray:
        raise NotImplementedError

    def place(self, fleet: Fleet, pod: PodShape, nodes: IntArray, rng: np.random.Generator) -> Placement:
        node = int(nodes[pick_max(self.scores(fleet, pod, nodes), fleet.rank[nodes])])
        return Placement(node, best_fit_device(fleet, pod, node))


# -- baselines -------------------------------------------------------------------------------------
class RandomFit(_Stateless):
    name = "random"

    def place(self, fleet: Fleet, pod: PodShape, nodes: IntArray, rng: np.random.Generator) -> Placement:
        node = int(rng.choice(nodes))
        return Placement(node, random_device(fleet, pod, node, rng))


class Spread(_IntScore):
    """kube-scheduler's NodeResourcesLeastAllocated (CPU and memory, equal weights)."""

    name = "spread"

    def scores(self, fleet: Fleet, pod: PodShape, nodes: IntArray) -> np.ndarray:
        cpu = (fleet.cpu_free[nodes] - pod.cpu_milli) * 100 // np.maximum(fleet.cpu_capacity[nodes], 1)
        mem = (fleet.memory_free[nodes] - pod.memory_mib) * 100 // np.maximum(fleet.memory_capacity[nodes], 1)
        return (cpu + mem) // 2


class BestFit(_IntScore):
    name = "best-fit"

    def scores(self, fleet: Fleet, pod: PodShape, nodes: IntArray) -> np.ndarray:
        cpu_left = (fleet.cpu_free[nodes] - pod.cpu_milli) / MAX_SPEC_CPU
        gpu_left = (fleet.gpu_free[nodes].sum(axis=1) - pod.total_milli) / MAX_SPEC_GPU
        return np.trunc((1.0 - 0.5 * cpu_left - 0.5 * gpu_left) * 100).astype(np.int64)


class DotProduct(_IntScore):
    """The artifact's ``merge``/``max`` variant: the smaller the dot product, the better."""

    name = "dot-product"

    def scores(self, fleet: Fleet, pod: PodShape, nodes: IntArray) -> np.ndarray:
        cpu = fleet.cpu_free[nodes] / MAX_SPEC_CPU * (pod.cpu_milli / MAX_SPEC_CPU)
        gpu = fleet.gpu_free[nodes].sum(axis=1) / MAX_SPEC_GPU * (pod.total_milli / MAX_SPEC_GPU)
        return np.trunc(100 * (1 - (cpu + gpu) / 2)).astype(np.int64)


class GpuPacking(_IntScore):
    name = "gpu-packing"

    def scores(self, fleet: Fleet, pod: PodShape, nodes: IntArray) -> np.ndarray:
        if pod.total_milli <= 0:
            return np.zeros(len(nodes), dtype=np.int64)
        free = fleet.gpu_free[nodes]
        whole = (free == MILLI).sum(axis=1)
        empty = whole == fleet.gpu_count[nodes]
        case3 = np.maximum(100 // 3 - whole, whole)
        if pod.shares_gpu:
            least = np.where(free >= pod.gpu_milli, free, MILLI + 1).min(axis=1)
            used = np.where(
                least == MILLI,
                max(100 // 2 - 1, 100 // 3),
                np.maximum(100 - (least * 100 // MILLI) // 10, 50),
            )
        else:
            used = np.full(len(nodes), max(100 // 2 - pod.gpus, 100 // 3))
        return np.where(empty, case3, used)


class GpuClustering(_IntScore):
    name = "gpu-clustering"

    def scores(self, fleet: Fleet, pod: PodShape, nodes: IntArray) -> np.ndarray:
        if pod.total_milli <= 0:
            return np.zeros(len(nodes), dtype=np.int64)
        zeros = np.zeros(len(nodes), dtype=np.int64)
        tagged = fleet.tags.get(pod.tag)
        same = tagged[nodes] if tagged is not None else zeros
        kinds = sum(((t[nodes] > 0).astype(np.int64) for t in fleet.tags.values()), zeros)
        base = np.where(same > 0, np.where(kinds == 1, 75, 50), np.where(kinds == 0, 25, 0))
        return base + 25 * (MAX_SPEC_GPU - fleet.gpu_free[nodes].sum(axis=1)) // MAX_SPEC_GPU


# -- fragmentation-aware ---------------------------------------------------------------------------
class _FragmentationScorer:
    """Shared by FGD and aiplane: candidates (node, device) and the fragmentation growth of each."""

    name = ""
    counts_memory = False  # FGD's measure, as the paper defines it

    def __init__(self, workload: TargetWorkload) -> None:
        self.workload = workload
        self.frag: Fragmentation | None = None

    def _measure(self, fleet: Fleet) -> Fragmentation:
        if self.frag is None or self.frag.fleet is not fleet:
            self.frag = Fragmentation(fleet, self.workload, memory=self.counts_memory)
        return self.frag

    def bound(self, node: int) -> None:
        if self.frag is not None:
            self.frag.refresh(node)

    def growth(self, fleet: Fleet, pod: PodShape, nodes: IntArray) -> tuple[IntArray, IntArray, FloatArray]:
        """(row into ``nodes``, device or -1, fragmentation growth) per candidate placement."""
        frag = self._measure(fleet)
        if pod.shares_gpu:
            rows, devices, before = share_candidates(fleet, pod, nodes)
            grown = frag.after_share(pod, nodes[rows], before) - frag.node_frag[nodes[rows]]
            return rows, devices, grown
        rows = np.arange(len(nodes))
        grown = frag.after_whole(pod, nodes) - frag.node_frag[nodes]
        return rows, np.full(len(nodes), -1), grown

    def devices(self, fleet: Fleet, pod: PodShape, node: int, device: int) -> tuple[int, ...]:
        if pod.gpus <= 0 or pod.gpu_milli <= 0:
            return ()
        return (device,) if pod.shares_gpu else fleet.exclusive_devices(node, pod.gpus)


def _sigmoid_score(grown: FloatArray) -> IntArray:
    """The artifact's 0-100 score: sigmoid of the fragmentation *reduction* in whole GPUs."""
    return (100.0 / (1.0 + np.exp(grown / 1000.0))).astype(np.int64)


class Fgd(_FragmentationScorer):
    name = "fgd"

    def place(self, fleet: Fleet, pod: PodShape, nodes: IntArray, rng: np.random.Generator) -> Placement:
        rows, devices, grown = self.growth(fleet, pod, nodes)
        score = _sigmoid_score(grown)
        # per node, its best device (the first of equal scores), then a node among the best
        node_best = np.full(len(nodes), -1, dtype=np.int64)
        np.maximum.at(node_best, rows, score)
        choice = pick_max(node_best, fleet.rank[nodes])
        on_node = np.flatnonzero((rows == choice) & (score == node_best[choice]))
        device = int(devices[on_node].min()) if pod.shares_gpu else -1
        node = int(nodes[choice])
        return Placement(node, self.devices(fleet, pod, node, device))


class Aiplane(_FragmentationScorer):
    """FGD's score over a measure that counts memory; among equal scores a node already in
    use goes before an empty one, then the first name, then on that node the device with
    least room for a shared pod (best fit: half-used devices fill before free ones).

    Memory: FGD calls a free GPU usable by a shape when the node has the devices and the
    CPU for it, but a node can also run out of memory first, and then its GPUs are lost
    just as surely. Each target shape carries the median memory of its pods, and a GPU
    where that memory is not free counts as a fragment (see
    :mod:`~aiplane.policies.scheduling.fragmentation`). Most failed placements on the
    Alibaba lists were of that kind.

    Ties: FGD breaks them by name alone, so it opens an empty node as readily as it adds
    to a used one that scores the same. An empty node is the one thing a whole-node gang
    needs, and once opened it is never whole again (pods leave late, if at all): opening
    one only when no used node does as well keeps more of them whole.
    """

    name = "aiplane"
    counts_memory = True

    def place(self, fleet: Fleet, pod: PodShape, nodes: IntArray, rng: np.random.Generator) -> Placement:
        rows, devices, grown = self.growth(fleet, pod, nodes)
        node_ids = nodes[rows]
        empty = fleet.gpu_free[node_ids].sum(axis=1) == fleet.gpu_count[node_ids] * MILLI
        room = fleet.gpu_free[node_ids, np.maximum(devices, 0)] if pod.shares_gpu else np.zeros(len(rows))
        # primary key last: best score, a used node, name order, the device with least room
        best = int(np.lexsort((devices, room, fleet.rank[node_ids], empty, -_sigmoid_score(grown)))[0])
        node = int(node_ids[best])
        return Placement(node, self.devices(fleet, pod, node, int(devices[best])))


SCORERS: dict[str, Callable[[TargetWorkload], Scorer]] = {
    "aiplane": Aiplane,
    "fgd": Fgd,
    "best-fit": lambda _: BestFit(),
    "dot-product": lambda _: DotProduct(),
    "gpu-packing": lambda _: GpuPacking(),
    "gpu-clustering": lambda _: GpuClustering(),
    "spread": lambda _: Spread(),
    "random": lambda _: RandomFit(),
}
PAPER_NAMES = {  # fgd_paper_alloc.csv's sc_policy -> ours
    "01-Random": "random",
    "02-DotProd": "dot-product",
    "03-GpuClustering": "gpu-clustering",
    "04-GpuPacking": "gpu-packing",
    "05-BestFit": "best-fit",
    "06-FGD": "fgd",
}


def make(names: Sequence[str], workload: TargetWorkload) -> list[Scorer]:
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ValueError(f"unknown policy {', '.join(map(repr, unknown))}; known: {', '.join(SCORERS)}")
    return [SCORERS[n](workload) for n in names]
