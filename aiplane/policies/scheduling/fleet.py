"""A cluster's GPU nodes as numpy arrays: the snapshot every placement scorer reads.

One row per node, one column per GPU device: free milli-GPU per device (1000 = a whole
free GPU, 0 = full or absent), plus free CPU and memory and the node's GPU model. Asking
"which nodes fit this pod" is then a handful of vector operations over all nodes at once,
so the same code places pods on a 1,000-node cluster, replays a trace in the simulator,
and picks devices on one machine. Binding changes one row in place; :meth:`Fleet.copy`
gives a scratch snapshot for what-if questions (gangs, preemption).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from aiplane.policies.scheduling.gpumodel import canonical, parse_spec

MILLI = 1000
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int = 0
    model: str = ""


@dataclass(frozen=True)
class PodShape:
    """What one pod asks for. ``gpu_milli`` is per GPU: ``gpus=1, gpu_milli=460`` is a share of
    one device, ``gpus=4, gpu_milli=1000`` four whole devices on one node."""

    name: str = ""
    cpu_milli: int = 0
    memory_mib: int = 0
    gpus: int = 0
    gpu_milli: int = 0
    gpu_spec: str = ""

    @property
    def total_milli(self) -> int:
        return self.gpus * self.gpu_milli

    @property
    def shares_gpu(self) -> bool:
        return self.gpus == 1 and 0 < self.gpu_milli < MILLI

    @property
    def tag(self) -> str:
        """The pod's GPU-demand class: ``no-gpu``, ``share-gpu`` or ``<n>-gpu``."""
        if self.gpus == 0 or self.gpu_milli == 0:
            return "no-gpu"
        return "share-gpu" if self.shares_gpu else f"{self.gpus}-gpu"


@dataclass(frozen=True)
class Eligibility:
    """Where a pod may go, whatever is free: ``mask`` per node, and each rejection's reason
    as ``(reason, ok-mask)`` in filter order, so "why pending" can count them."""

    mask: BoolArray
    reasons: tuple[tuple[str, BoolArray], ...] = ()

    def restricted(self, allowed: BoolArray, reason: str) -> Eligibility:
        return Eligibility(self.mask & allowed, (*self.reasons, (reason, allowed)))


@dataclass(frozen=True)
class Placement:
    node: int
    devices: tuple[int, ...]


class Fleet:
    def __init__(self, nodes: Sequence[NodeShape]) -> None:
        self.names = [n.name for n in nodes]
        # name order, for ties: the artifact's kube-scheduler picks the smallest name among equals
        self.rank = np.argsort(np.argsort(np.array(self.names, dtype=object), kind="stable"), kind="stable")
        self.model_names = sorted({canonical(n.model) for n in nodes if n.gpus > 0 and n.model})
        index = {m: i for i, m in enumerate(self.model_names)}
        self.model = np.array(
            [index[canonical(n.model)] if n.gpus > 0 and n.model else -1 for n in nodes], dtype=np.int64
        )
        self.cpu_capacity = np.array([n.cpu_milli for n in nodes], dtype=np.int64)
        self.memory_capacity = np.array([n.memory_mib for n in nodes], dtype=np.int64)
        self.gpu_count = np.array([n.gpus for n in nodes], dtype=np.int64)
        width = max([n.gpus for n in nodes] + [1])
        self.gpu_exists: BoolArray = np.arange(width)[None, :] < self.gpu_count[:, None]
        self.cpu_free = self.cpu_capacity.copy()
        self.memory_free = self.memory_capacity.copy()
        self.gpu_free: IntArray = np.where(self.gpu_exists, MILLI, 0).astype(np.int64)
        self.tags: dict[str, IntArray] = {}  # GPU-demand class -> pods of it per node
        self._access: dict[str, BoolArray] = {}

    def __len__(self) -> int:
        return len(self.names)

    def copy(self) -> Fleet:
        other = object.__new__(Fleet)
        other.__dict__.update(self.__dict__)
        other.cpu_free = self.cpu_free.copy()
        other.memory_free = self.memory_free.copy()
        other.gpu_free = self.gpu_free.copy()
        other.tags = {k: v.copy() for k, v in self.tags.items()}
        return other

    # -- what fits ------------------------------------------------------------------------------
    @property
    def gpu_capacity_milli(self) -> int:
        return int(self.gpu_count.sum()) * MILLI

    @property
    def gpu_allocated_milli(self) -> int:
        return self.gpu_capacity_milli - int(self.gpu_free.sum())

    def access(self, spec: str) -> BoolArray:
        """Nodes whose GPU model satisfies ``spec`` (every GPU node for an empty spec)."""
        if spec not in self._access:
            wanted = parse_spec(spec)
            ok = [not wanted or m in wanted for m in self.model_names]
            by_model = np.array([*ok, False], dtype=bool)  # index -1: no GPU
            self._access[spec] = by_model[self.model] & (self.gpu_count > 0)
        return self._access[spec]

    def feasible(self, pod: PodShape, eligible: Eligibility | None = None) -> BoolArray:
        """Nodes that can take ``pod`` now: CPU, memory, GPU model, and enough devices with room.

        ``eligible`` masks the nodes the pod may go on at all (taints, selectors, affinity,
        reservations): what the runtime knows and the fleet does not.
        """
        ok = (self.cpu_free >= pod.cpu_milli) & (self.memory_free >= pod.memory_mib)
        if eligible is not None:
            ok &= eligible.mask
        if pod.gpus <= 0 or pod.gpu_milli <= 0:
            return ok
        ok &= self.access(pod.gpu_spec)
        return ok & ((self.gpu_free >= pod.gpu_milli).sum(axis=1) >= pod.gpus)

    def why_not(self, pod: PodShape, eligible: Eligibility | None = None) -> dict[str, int]:
        """How many nodes each filter rejected ``pod`` on (a node counts under its first failing filter)."""
        left = np.ones(len(self), dtype=bool)
        counts: dict[str, int] = {}
        checks: list[tuple[str, BoolArray]] = []
        if eligible is not None:
            checks += list(eligible.reasons)
        if pod.gpus > 0 and pod.gpu_milli > 0:
            checks.append(
                (f"GPU model not in {pod.gpu_spec}" if pod.gpu_spec else "no GPU", self.access(pod.gpu_spec))
            )
            checks.append(("too few free GPUs", (self.gpu_free >= pod.gpu_milli).sum(axis=1) >= pod.gpus))
        checks += [
            ("too little CPU", self.cpu_free >= pod.cpu_milli),
            ("too little memory", self.memory_free >= pod.memory_mib),
        ]
        for reason, ok in checks:
            rejected = left & ~ok
            if n := int(rejected.sum()):
                counts[reason] = n
            left &= ok
        return counts

    def emptied(self, nodes: Sequence[int]) -> Fleet:
        """A copy with ``nodes`` as if nothing ran on them: where could a gang go once they drain?"""
        other = self.copy()
        idx = np.asarray(nodes, dtype=np.int64)
        other.cpu_free[idx] = self.cpu_capacity[idx]
        other.memory_free[idx] = self.memory_capacity[idx]
        other.gpu_free[idx] = np.where(self.gpu_exists[idx], MILLI, 0)
        for counts in other.tags.values():
            counts[idx] = 0
        return other

    def exclusive_devices(self, node: int, count: int) -> tuple[int, ...]:
        """The first ``count`` wholly free devices of ``node``, lowest index first."""
        free = np.flatnonzero(self.gpu_free[node] == MILLI)
        return tuple(int(i) for i in free[:count])

    # -- changes ----------------------------------------------------------------------------------
    def bind(self, pod: PodShape, placement: Placement) -> None:
        n = placement.node
        self.cpu_free[n] -= pod.cpu_milli
        self.memory_free[n] -= pod.memory_mib
        for d in placement.devices:
            self.gpu_free[n, d] -= pod.gpu_milli
        if pod.gpus > 0 and pod.gpu_milli > 0:
            self.tags.setdefault(pod.tag, np.zeros(len(self), dtype=np.int64))[n] += 1
        if (self.cpu_free[n] < 0) or (self.memory_free[n] < 0) or (self.gpu_free[n] < 0).any():
            raise ValueError(f"over-committed node {self.names[n]} binding {pod.name or pod}")

    def unbind(self, pod: PodShape, placement: Placement) -> None:
        n = placement.node
        self.cpu_free[n] += pod.cpu_milli
        self.memory_free[n] += pod.memory_mib
        for d in placement.devices:
            self.gpu_free[n, d] += pod.gpu_milli
        if pod.gpus > 0 and pod.gpu_milli > 0:
            self.tags[pod.tag][n] -= 1
