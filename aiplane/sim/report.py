"""What ``aiplane sim schedule`` prints and draws: a table, JSON rows, a PNG of the curves,
and (given the FGD artifact's result table) the paper's figures beside ours."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aiplane.policies.scheduling.scorers import PAPER_NAMES
from aiplane.sim.schedule import STEPS, Curve, Row
from aiplane.sim.traces import TraceError

TABLE_ARRIVALS = (0.8, 0.9, 1.0, 1.3)
JSON_ARRIVALS = tuple(round(0.05 * i, 2) for i in range(1, 27))  # 0.05 .. 1.30


def as_json(rows: Sequence[Row]) -> str:
    return json.dumps({"results": [dataclasses.asdict(r) for r in rows]}, indent=2)


def paper_means(path: Path, pod_list: str) -> dict[str, dict[float, float]]:
    """Published allocated share (0..1) per policy and arrival for one pod list, mean over seeds."""
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("workload") == pod_list]
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    out: dict[str, dict[float, float]] = {}
    for paper, ours in PAPER_NAMES.items():
        mine = [r for r in rows if r.get("sc_policy") == paper]
        if mine:
            out[ours] = {
                a: float(np.mean([float(r[str(round(a * STEPS))]) for r in mine])) / 100
                for a in TABLE_ARRIVALS
            }
    return out


def plot(curves: Sequence[Curve], path: Path, title: str) -> None:
    """Allocated share against arrived demand, one line per policy (mean over seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TraceError("--plot needs matplotlib: pip install 'aiplane[sim]'") from None
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy in dict.fromkeys(c.policy for c in curves):
        mean = np.mean([c.allocated for c in curves if c.policy == policy], axis=0) * 100
        x = np.arange(len(mean)) * 100 / STEPS
        for ax in (whole, zoom):
            ax.plot(x, mean, label=policy, linewidth=2 if policy == "aiplane" else 1)
    whole.plot([0, 100], [0, 100], color="grey", linestyle=":", linewidth=0.8)
    zoom.set_xlim(80, x[-1])
    zoom.set_ylim(80, 100)
    for ax in (whole, zoom):
        ax.set_xlabel("arrived GPU demand (% of capacity)")
        ax.set_ylabel("GPUs allocated (% of capacity)")
        ax.grid(alpha=0.3)
    zoom.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
