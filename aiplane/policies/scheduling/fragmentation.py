"""GPU fragmentation as FGD measures it (Weng et al., "Beware of Fragmentation", ATC 2023).

Free GPU capacity is a *fragment* for a kind of pod when that pod could not use it: the
node lacks CPU for it, has the wrong GPU model, or has too few devices with enough room;
and even on a node that fits, a device with less free than the pod's per-GPU share is
a fragment for it. A node's fragmentation is the expectation of that amount over the
*target workload*: the pod shapes that arrive, weighted by how often they do.

FGD ignores memory. aiplane's scorer counts it (``memory=True``): a free GPU on a node
whose memory is gone is a fragment too. On the Alibaba lists most GPU pods that failed
before 100% arrival did so while a node had the GPUs and CPU but not the memory (288 of
317 on ``default``, seed 42, with FGD's measure), a loss FGD's measure cannot see.

Everything is vectorised over nodes and pod shapes (numpy): per node and shape the
number of devices with room and the free milli-GPU on devices too small are kept, so
the effect of a hypothetical placement on any node is a few array operations, not a
rescan. FGD places a pod where fragmentation grows least; aiplane's own scorer reuses
the same measure (see :mod:`aiplane.policies.scheduling.scorers`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from aiplane.policies.scheduling.fleet import MILLI, BoolArray, Fleet, IntArray, PodShape

FloatArray = npt.NDArray[np.float64]
POPULARITY = 0.95  # the artifact's default: the most frequent shapes covering 95% of pods


@dataclass(frozen=True)
class TargetWorkload:
    """Pod shapes and their frequencies (summing to 1); a shape's ``memory_mib`` is the
    median of its pods' (memory is not part of the shape: it varies too much to group by)."""

    shapes: tuple[PodShape, ...]
    freq: FloatArray

    @classmethod
    def from_pods(cls, pods: Iterable[PodShape], popularity: float = POPULARITY) -> TargetWorkload:
        """The most frequent shapes covering ``popularity`` of the pods, renormalised.

        A shape is (CPU, GPUs, milli-GPU per GPU, GPU model spec), as in the paper. Ties in
        frequency go to the larger shape, so the cut is deterministic.
        """
        memory: dict[tuple[int, int, int, str], list[int]] = {}
        for p in pods:
            key = (p.cpu_milli, p.gpu_milli if p.gpus else 0, p.gpus if p.gpu_milli else 0, p.gpu_spec)
            memory.setdefault(key, []).append(p.memory_mib)
        counts = Counter({key: len(m) for key, m in memory.items()})
        if not counts:
            raise ValueError("the target workload needs at least one pod")
        total = sum(counts.values())
        ordered = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        kept, cum = [], 0
        for key, n in ordered:
            kept.append((key, n))
            cum += n
            if cum >= popularity * total:
                break
        shapes = tuple(_shape(key, int(np.median(memory[key]))) for key, _ in kept)
        freq = np.array([n for _, n in kept], dtype=np.float64)
        return cls(shapes, freq / freq.sum())


def _shape(key: tuple[int, int, int, str], memory_mib: int) -> PodShape:
    cpu, milli, gpus, spec = key
    return PodShape(cpu_milli=cpu, gpus=gpus, gpu_milli=milli, gpu_spec=spec, memory_mib=memory_mib)


class Fragmentation:
    """Per-node fragmentation of a :class:`Fleet` for a :class:`TargetWorkload`, kept current.

    Call :meth:`refresh` with a node after binding to (or unbinding from) it. With
    ``memory`` a shape fits only where its (median) memory is free as well.
    """

    def __init__(self, fleet: Fleet, workload: TargetWorkload, *, memory: bool = False) -> None:
        self.fleet = fleet
        self.workload = workload
        shapes = workload.shapes
        gpu = np.array([s.gpus > 0 and s.gpu_milli > 0 for s in shapes])
        self.gpu_kinds = np.flatnonzero(gpu)
        self.cpu_freq = float(workload.freq[~gpu].sum())  # CPU-only shapes: every free GPU is a fragment
        kinds = [shapes[k] for k in self.gpu_kinds]
        self.freq = workload.freq[self.gpu_kinds]
        self.milli = np.array([s.gpu_milli for s in kinds], dtype=np.int64)
        self.num = np.array([s.gpus for s in kinds], dtype=np.int64)
        self.cpu = np.array([s.cpu_milli for s in kinds], dtype=np.int64)
        self.memory = np.array([s.memory_mib if memory else 0 for s in kinds], dtype=np.int64)
        width = len(kinds)
        self.access: BoolArray = (
            np.stack([fleet.access(s.gpu_spec) for s in kinds], axis=1)
            if width
            else np.zeros((len(fleet), 0), dtype=bool)
        )
        self.count = np.zeros((len(fleet), width), dtype=np.int64)  # devices with room for the kind
        self.small = np.zeros((len(fleet), width), dtype=np.int64)  # free milli on devices too small
        self.node_frag = np.zeros(len(fleet), dtype=np.float64)
        self._recompute(np.arange(len(fleet)))

    def _recompute(self, nodes: IntArray) -> None:
        free = self.fleet.gpu_free[nodes][:, :, None]  # [n, G, 1]
        fits = free >= self.milli[None, None, :]  # [n, G, K]
        self.count[nodes] = fits.sum(axis=1)
        self.small[nodes] = np.where(fits, 0, free).sum(axis=1)
        self.node_frag[nodes] = self.frag(
            nodes,
            self.fleet.cpu_free[nodes],
            self.fleet.memory_free[nodes],
            self.count[nodes],
            self.small[nodes],
            self.fleet.gpu_free[nodes].sum(axis=1),
        )

    def refresh(self, node: int) -> None:
        self._recompute(np.array([node]))

    def frag(
        self,
        nodes: IntArray,
        cpu_free: IntArray,
        memory_free: IntArray,
        count: IntArray,
        small: IntArray,
        total: IntArray,
    ) -> FloatArray:
        """Expected fragment (milli-GPU) of nodes in the given (possibly hypothetical) state."""
        fits = (
            self.access[nodes]
            & (count >= self.num)
            & (cpu_free[:, None] >= self.cpu)
            & (memory_free[:, None] >= self.memory)
        )
        per_kind = np.where(fits, small, total[:, None])
        result: FloatArray = per_kind @ self.freq + self.cpu_freq * total
        return result

    def cluster_frag(self) -> float:
        return float(self.node_frag.sum())

    def frag_rate(self) -> float:
        """Share of idle GPU capacity that is fragment (0 when no GPU is idle)."""
        idle = float(self.fleet.gpu_free.sum())
        return self.cluster_frag() / idle if idle > 0 else 0.0

    def after_whole(self, pod: PodShape, nodes: IntArray) -> FloatArray:
        """Fragmentation of ``nodes`` once ``pod`` takes whole free devices (or none) there."""
        fleet = self.fleet
        taken = pod.gpus if pod.gpu_milli >= MILLI else 0
        count = self.count[nodes] - taken  # a free device has room for every kind
        total = fleet.gpu_free[nodes].sum(axis=1) - taken * MILLI
        cpu, memory = fleet.cpu_free[nodes] - pod.cpu_milli, fleet.memory_free[nodes] - pod.memory_mib
        return self.frag(nodes, cpu, memory, count, self.small[nodes], total)

    def after_share(self, pod: PodShape, nodes: IntArray, before: IntArray) -> FloatArray:
        """Fragmentation of ``nodes`` once ``pod`` takes its share of a device that had ``before`` free."""
        after = before - pod.gpu_milli
        b, a = before[:, None], after[:, None]
        count = self.count[nodes] - (b >= self.milli) + (a >= self.milli)
        small = self.small[nodes] - np.where(b < self.milli, b, 0) + np.where(a < self.milli, a, 0)
        total = self.fleet.gpu_free[nodes].sum(axis=1) - pod.gpu_milli
        cpu = self.fleet.cpu_free[nodes] - pod.cpu_milli
        memory = self.fleet.memory_free[nodes] - pod.memory_mib
        return self.frag(nodes, cpu, memory, count, small, total)
