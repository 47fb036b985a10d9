"""Read the node and pod lists of a GPU cluster trace (the Alibaba 2023 ``openb`` format).

Nodes: ``sn,cpu_milli,memory_mib,gpu,model``. Pods: ``name,cpu_milli,memory_mib,num_gpu,
gpu_milli`` and optionally ``gpu_spec,qos,pod_phase,creation_time,deletion_time,
scheduled_time``. Any list in this format works; a bad row fails with the file, the
line, the column and what was expected, before anything is simulated.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from aiplane.errors import AiplaneError
from aiplane.policies.scheduling.fleet import MILLI, NodeShape, PodShape

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


class TraceError(AiplaneError):
    """A trace file that cannot be read; the message names the file, line and column."""


@dataclass(frozen=True)
class TracePod:
    shape: PodShape
    qos: str = ""
    created: float | None = None  # seconds since the trace began
    deleted: float | None = None


def _rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise TraceError(
                    f"{path}: missing column(s) {', '.join(missing)}; expected at least {','.join(required)}"
                )
            return [(i + 2, row) for i, row in enumerate(reader)]
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _int(path: Path, line: int, row: dict[str, str], column: str, *, minimum: int = 0) -> int:
    text = (row.get(column) or "").strip()
    try:
        value = int(float(text)) if text else 0
    except ValueError:
        raise TraceError(f"{path}:{line}: column {column}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise TraceError(f"{path}:{line}: column {column}: expected >= {minimum}, got {value}")
    return value


def _time(path: Path, line: int, row: dict[str, str], column: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: column {column}: expected seconds, got {text!r}") from None


def read_nodes(path: Path) -> list[NodeShape]:
    nodes = []
    for line, row in _rows(path, NODE_COLUMNS):
        gpus = _int(path, line, row, "gpu")
        model = (row.get("model") or "").strip()
        if gpus and not model:
            raise TraceError(f"{path}:{line}: column model: a node with {gpus} GPU(s) needs a model")
        nodes.append(
            NodeShape(
                name=(row.get("sn") or f"node-{line}").strip(),
                cpu_milli=_int(path, line, row, "cpu_milli"),
                memory_mib=_int(path, line, row, "memory_mib"),
                gpus=gpus,
                model=model,
            )
        )
    if not nodes:
        raise TraceError(f"{path}: no nodes")
    return nodes


def read_pods(path: Path) -> list[TracePod]:
    pods = []
    for line, row in _rows(path, POD_COLUMNS):
        gpus = _int(path, line, row, "num_gpu")
        milli = _int(path, line, row, "gpu_milli")
        if milli > MILLI:
            raise TraceError(f"{path}:{line}: column gpu_milli: expected 0-{MILLI} (per GPU), got {milli}")
        if gpus > 1 and 0 < milli < MILLI:
            raise TraceError(
                f"{path}:{line}: column gpu_milli: a pod of {gpus} GPUs takes them whole ({MILLI})"
            )
        shape = PodShape(
            name=(row.get("name") or f"pod-{line}").strip(),
            cpu_milli=_int(path, line, row, "cpu_milli"),
            memory_mib=_int(path, line, row, "memory_mib"),
            gpus=gpus if milli else 0,
            gpu_milli=milli if gpus else 0,
            gpu_spec=(row.get("gpu_spec") or "").strip(),
        )
        created, deleted = _time(path, line, row, "creation_time"), _time(path, line, row, "deletion_time")
        if created is not None and deleted is not None and deleted < created:
            raise TraceError(
                f"{path}:{line}: column deletion_time: {deleted:g} is before creation_time {created:g}"
            )
        pods.append(TracePod(shape, (row.get("qos") or "").strip(), created, deleted))
    if not pods:
        raise TraceError(f"{path}: no pods")
    return pods
