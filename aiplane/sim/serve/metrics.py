"""A replay's outcome per policy: SLO attainment, TTFT percentiles, cost, cold starts, drops, hits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiplane.sim.serve.simulate import Replay

JSON_FIELDS = (
    "policy",
    "slo_attainment",
    "p50_ttft_s",
    "p99_ttft_s",
    "gpu_hours",
    "cold_starts",
    "dropped",
    "prefix_hit_rate",
)


@dataclass(frozen=True)
class Result:
    policy: str
    slo_attainment: float  # share of all requests with TTFT <= the SLO; dropped ones miss
    p50_ttft_s: float | None  # over served requests
    p99_ttft_s: float | None
    gpu_hours: float  # every replica that existed, starting and draining too, x its GPUs
    cold_starts: int
    dropped: int
    prefix_hit_rate: float  # prompt tokens served from the prefix cache / prompt tokens
    # Not in the JSON rows: for the table and the plots.
    target: float | None = None
    requests: int = 0
    peak_replicas: int = 0
    seconds: float = 0.0  # wall-clock time of the replay

    def row(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in JSON_FIELDS}


def summarize(policy: str, replay: Replay, slo: float, *, target: float | None, seconds: float) -> Result:
    served = [r for r in replay.requests if r.first_token_at is not None]
    ttfts = np.array([r.first_token_at - r.arrival for r in served if r.first_token_at is not None])
    met = int(np.count_nonzero(ttfts <= slo + 1e-9)) if len(ttfts) else 0
    prompt = sum(r.prompt for r in served)
    hits = sum(r.hit_tokens for r in served)
    total = len(replay.requests)
    return Result(
        policy=policy,
        slo_attainment=round(met / total, 6) if total else 0.0,
        p50_ttft_s=round(float(np.percentile(ttfts, 50)), 6) if len(ttfts) else None,
        p99_ttft_s=round(float(np.percentile(ttfts, 99)), 6) if len(ttfts) else None,
        gpu_hours=round(replay.fleet.gpu_seconds(replay.end) / 3600.0, 6),
        cold_starts=replay.fleet.cold_starts,
        dropped=sum(1 for r in replay.requests if r.dropped_at is not None),
        prefix_hit_rate=round(hits / prompt, 6) if prompt else 0.0,
        target=target,
        requests=total,
        peak_replicas=peak_replicas(replay),
        seconds=seconds,
    )


def peak_replicas(replay: Replay) -> int:
    """The most replicas that existed at once."""
    edges: list[tuple[float, int]] = []
    for r in replay.fleet.replicas.values():
        edges.append((r.started_at, 1))
        edges.append((r.removed_at if r.removed_at is not None else replay.end, -1))
    edges.sort(key=lambda e: (e[0], e[1]))
    peak = level = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak
