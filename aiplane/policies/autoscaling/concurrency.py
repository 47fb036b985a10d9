"""Scale on in-flight requests per replica: what an LLM server's latency responds to."""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiplane.policies.autoscaling.base import AutoscalingContext, ScaleTo


@dataclass(frozen=True)
class ConcurrencyAutoscaler:
    name: str = "concurrency"

    def recommend(self, ctx: AutoscalingContext) -> ScaleTo:
        load = ctx.in_flight + ctx.queued
        wanted = math.ceil(load / ctx.target - 1e-9) if load > 0 else 0
        return ScaleTo(wanted, f"{load:g} in flight+queued / target {ctx.target:g} per replica")
