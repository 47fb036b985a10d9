"""Rules every autoscaler gets: windows, look-ahead, bounds, scale-down delay, scale-to-zero.

* Windows, after Knative's KPA: a policy's desired replicas are averaged over a stable
  window (60 s) and a panic window (6 s), and the rules follow the higher of the two. So
  a burst is answered within seconds (the panic window), and replicas go only once the
  minute's average, too, has come down, and the lower count has held for
  ``scale_down_delay``: a lull between bursts does not drop a replica a cold start away
  from being needed again.
* Look-ahead (cold-start aware): a replica asked for now serves only after its cold
  start. When load is rising, the rules scale for the load expected one cold start from
  now (the stable window's trend), not for the load of now, so the SLO is not blown
  while the new replica loads.
* Headroom (square-root staffing): bursts come faster than a cold start, so they are
  served by the replicas that already exist. While a model serves, the rules keep
  ``headroom x max(1, sqrt(load))`` replicas beyond its load (load in replicas): the
  Halfin-Whitt rule for a pool under random arrivals, whose load varies by about its
  square root, with at least ``headroom`` spare. Not while no replica is ready (the first
  one serves what is held), and not when a replica starts within the panic window (scaling
  on the burst is then as fast as a spare).
* Cold-start aware scale-down: a replica no longer needed is kept for at least one cold
  start before it goes (the ski-rental break-even: an idle replica kept that long costs
  what stopping and restarting it would, so neither choice is ever more than twice the
  best in hindsight), or ``scale_down_delay`` if longer. Bursts that come back within a
  cold start then find their replicas still there.
* Scale-to-zero only after ``scale_to_zero_after`` without any demand, and a request
  held at zero replicas starts one at once.
"""

from __future__ import annotations

import math
from dataclasses import replace

from aiplane.policies.autoscaling.base import (
    Autoscaler,
    AutoscalerState,
    AutoscalingContext,
    ScaleTo,
)


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - 1e-9))


def _slope(samples: tuple[tuple[float, float], ...]) -> float:
    """Least-squares trend of desired replicas per second over the window."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var <= 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in samples) / var


def decide(
    policy: Autoscaler, ctx: AutoscalingContext, state: AutoscalerState
) -> tuple[ScaleTo, AutoscalerState]:
    """The replicas to run now, and the state to remember, for one model."""
    cfg, now = ctx.config, ctx.now
    raw = policy.desired(ctx, state)
    demand = ctx.signals.demand
    last_active = now if demand > 0 else state.last_active
    if last_active is None:
        last_active = now  # never seen load: count idleness from the first decision

    cold_start = ctx.signals.cold_start or cfg.cold_start
    window = (*(s for s in state.window if now - s[0] < cfg.stable_window), (now, raw.replicas))
    stable = sum(v for _, v in window) / len(window)
    recent = [v for t, v in window if now - t < cfg.panic_window] or [raw.replicas]
    panic = sum(recent) / len(recent)
    up, reason = max(stable, panic), raw.reason
    busy_all_window = all(v > 0 for _, v in window)
    if cfg.look_ahead and ctx.ready > 0 and busy_all_window and now - window[0][0] >= cfg.stable_window / 2:
        # A trend needs half a window of history (three samples 0.5 s apart are not one),
        # load all through it and a serving replica: the step from idle to a first
        # request is not a rise to extrapolate over a cold start.
        rise = _slope(window) * cold_start
        if rise > 0 and _ceil(up + rise) > _ceil(up):
            up += rise
            reason = f"{reason}; +{rise:.2f} expected within a cold start"
    if cfg.headroom > 0 and up > 0 and ctx.ready > 0 and cold_start > cfg.panic_window:
        spare = cfg.headroom * max(1.0, math.sqrt(up))
        up += spare
        reason = f"{reason}; +{spare:.2f} headroom for bursts within a {cold_start:.0f}s cold start"
    capacity = raw.capacity if raw.capacity is not None else state.capacity

    def remember(below_since: float | None) -> AutoscalerState:
        """Not scaling down: the peaks restart from what is wanted now."""
        return AutoscalerState(last_active, below_since, window, capacity, ((now, float(wanted)),))

    floor = cfg.min_replicas
    idle_for = now - last_active
    if floor == 0 and (demand > 0 or (ctx.current_replicas > 0 and idle_for < cfg.scale_to_zero_after)):
        floor = 1  # a held request starts one; the last one stays warm until idle long enough
    if floor == 0 and demand == 0 and idle_for >= cfg.scale_to_zero_after:
        up = 0.0  # idle that long: the windows' memory of older load no longer counts
    current = ctx.current_replicas
    wanted = min(max(_ceil(up), floor), cfg.max_replicas)
    if cfg.look_ahead and cfg.surge and ctx.ready > 0:
        wanted = min(wanted, max(current, 2 * ctx.ready, ctx.ready + 4))
    if _ceil(up) > cfg.max_replicas:
        reason = f"{reason}; capped at max {cfg.max_replicas}"
    elif wanted > _ceil(up):
        reason = f"{reason}; raised to floor {floor}"
    if wanted == 0 == current:
        return ScaleTo(0, "idle at zero replicas; a request starts one"), remember(None)
    if wanted >= current:  # up at once: requests are waiting, or will be within a cold start
        return ScaleTo(wanted, reason), remember(None)
    if current > cfg.max_replicas:  # the bound was lowered
        return ScaleTo(wanted, f"{current} above max {cfg.max_replicas}"), remember(None)
    if wanted == 0:  # governed by scale_to_zero_after alone
        why = f"idle for {idle_for:.0f}s >= scaleToZeroAfter {cfg.scale_to_zero_after:g}s"
        return ScaleTo(0, why), remember(None)
    # Scale down to the most wanted within the last ``delay`` (Kubernetes HPA's
    # stabilization window): replicas step down as older peaks age out, and a count we
    # have no history for (a restart) is held for a whole delay first.
    delay = max(cfg.scale_down_delay, cfg.hold * cold_start if cfg.look_ahead else 0.0)
    fresh = [(now, float(current))] if not state.peaks else []  # no history: a restart
    peaks = [p for p in state.peaks if now - p[0] < delay] + fresh
    while peaks and peaks[-1][1] <= wanted:
        peaks.pop()
    peaks.append((now, float(wanted)))
    below_since = state.below_since if state.below_since is not None else now
    keep = min(current, int(peaks[0][1]))  # peaks[0] is the most wanted within the delay
    after = AutoscalerState(last_active, below_since, window, capacity, tuple(peaks))
    if keep < current:
        return ScaleTo(max(keep, wanted), reason), replace(after, below_since=None)
    hold = ScaleTo(current, f"holding {current} (want {wanted}) for scaleDownDelay {delay:g}s")
    return hold, after
