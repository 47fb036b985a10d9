"""Rules every autoscaler gets: bounds, scale-to-zero after idleness, scale-down delay.

Scale-up is immediate (a held request is waiting). Scale-down waits until the lower
recommendation has held for ``scale_down_delay``, and the last replica goes only after
``scale_to_zero_after`` without any load.
"""

from __future__ import annotations

from aiplane.policies.autoscaling.base import (
    Autoscaler,
    AutoscalerState,
    AutoscalingContext,
    ScaleTo,
)


def decide(
    policy: Autoscaler, ctx: AutoscalingContext, state: AutoscalerState
) -> tuple[ScaleTo, AutoscalerState]:
    """The replicas to run now, and the state to remember, for one model."""
    raw = policy.recommend(ctx)
    busy = ctx.in_flight + ctx.queued > 0
    last_active = ctx.now if busy else state.last_active
    if last_active is None:
        # Never seen load: count idleness from the first decision.
        last_active = ctx.now

    wanted, reason = raw.replicas, raw.reason
    floor = ctx.min_replicas
    idle_for = ctx.now - last_active
    if floor == 0 and ctx.current_replicas > 0 and idle_for < ctx.scale_to_zero_after:
        floor = 1  # keep one warm until idle long enough
    if wanted < floor:
        wanted, reason = floor, f"{reason}; raised to floor {floor}"
    if wanted > ctx.max_replicas:
        wanted, reason = ctx.max_replicas, f"{reason}; capped at max {ctx.max_replicas}"
    if ctx.min_replicas == 0 and wanted == 0:
        reason = (
            f"idle for {idle_for:.0f}s >= scaleToZeroAfter {ctx.scale_to_zero_after:g}s"
            if ctx.current_replicas > 0
            else "idle at zero replicas; a request starts one"
        )

    if wanted >= ctx.current_replicas:
        return ScaleTo(wanted, reason), AutoscalerState(last_active, None)

    # Scale-down: to zero is governed by scale_to_zero_after alone; otherwise wait.
    below_since = state.below_since if state.below_since is not None else ctx.now
    if wanted == 0 or ctx.now - below_since >= ctx.scale_down_delay:
        return ScaleTo(wanted, reason), AutoscalerState(last_active, None)
    hold = ScaleTo(
        ctx.current_replicas,
        f"holding {ctx.current_replicas} (want {wanted}) for scaleDownDelay {ctx.scale_down_delay:g}s",
    )
    return hold, AutoscalerState(last_active, below_since)
