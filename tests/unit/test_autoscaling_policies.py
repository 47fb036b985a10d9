"""The metrics' policies, the windows, and look-ahead over the cold start."""

from __future__ import annotations

import math

import pytest
from builders import scale_context

from aiplane.policies.autoscaling import (
    METRICS,
    AutoscalerState,
    Latency,
    autoscaler_for,
    decide,
)


def desired(metric: str, state: AutoscalerState = AutoscalerState(), **ctx: object) -> float:
    return autoscaler_for(metric).desired(scale_context(metric=metric, **ctx), state).replicas  # type: ignore[arg-type]


def test_every_metric_of_the_api_has_a_policy_and_an_unknown_one_is_named() -> None:
    from aiplane.api.model import DEFAULT_TARGETS

    assert set(METRICS) == set(DEFAULT_TARGETS)
    assert {autoscaler_for(m).name for m in METRICS} == set(METRICS)
    with pytest.raises(
        ValueError, match=r"unknown autoscaling metric 'rps' \(known: concurrency, queue-depth"
    ):
        autoscaler_for("rps")


@pytest.mark.parametrize(
    ("ctx", "want"),
    [
        # 4 slots + 5 waiting per replica: 12 running and 6 waiting want 18 / 9 = 2 replicas.
        (
            {"current": 3, "engine_running": 12, "engine_waiting": 6, "replica_concurrency": 4, "target": 5},
            2.0,
        ),
        # The gateway's own queue counts as waiting, with the engine's.
        ({"current": 1, "in_flight": 4, "queued": 9, "replica_concurrency": 4, "target": 5}, 13 / 9),
        # No slots known (vLLM batches inside): the running count per ready replica is one's share.
        ({"current": 2, "engine_running": 40, "engine_waiting": 30, "target": 5}, 70 / 25),
    ],
)
def test_queue_depth_keeps_waiting_requests_per_replica_at_target(ctx: dict[str, float], want: float) -> None:
    assert desired("queue-depth", **ctx) == pytest.approx(want)


def test_kv_cache_is_proportional_and_adds_a_replica_while_requests_wait() -> None:
    assert desired("kv-cache", current=2, target=0.8, kv_cache=0.6) == pytest.approx(1.5)
    assert desired("kv-cache", current=2, target=0.8, kv_cache=0.4) == pytest.approx(1.0)
    # Full caches queue requests: at least one more replica, whatever the ratio says.
    assert desired("kv-cache", current=2, target=0.8, kv_cache=0.5, engine_waiting=3) == pytest.approx(3.0)


def test_kv_cache_without_the_signal_falls_back_to_concurrency_and_says_so() -> None:
    policy = autoscaler_for("kv-cache")
    ctx = scale_context(metric="kv-cache", current=1, in_flight=6, replica_concurrency=4, target=0.75)
    got = policy.desired(ctx, AutoscalerState())
    assert got.replicas == pytest.approx(2.0)  # 6 / (4 slots x 0.75)
    assert got.reason.startswith("no KV-cache signal")


def test_cpu_is_the_textbook_proportional_rule_and_holds_without_a_signal() -> None:
    assert desired("cpu", current=2, target=0.7, cpu_utilization=1.05) == pytest.approx(3.0)
    assert desired("cpu", current=3, target=0.7) == 3.0


def test_latency_learns_the_capacity_that_keeps_p95_ttft_under_the_slo() -> None:
    """A closed loop against a toy replica whose p95 TTFT is 0.5 s per request it holds
    beyond 2: the SLO of 2 s holds up to 6 requests per replica. Starting from 4 slots,
    the policy must settle where p95 is under the SLO and replicas are not idle."""
    policy, state = Latency(), AutoscalerState()
    load, replicas = 60.0, 10
    for step in range(200):
        per_replica = load / replicas
        p95 = 0.5 * max(0.0, per_replica - 2.0)
        ctx = scale_context(
            metric="latency", now=float(step), current=replicas, in_flight=load, target=2.0, max=100,
            stable_window=0.0, ttft_p95=p95,
        )  # fmt: skip
        scale, state = decide(policy, ctx, state)
        replicas = scale.replicas
    assert state.capacity is not None
    assert 0.5 * max(0.0, load / replicas - 2.0) <= 2.0  # the SLO holds
    assert replicas <= 12  # and no more replicas than 5 requests each need (it started at 15)
    assert replicas == math.ceil(load / state.capacity - 1e-9)


def test_latency_lowers_capacity_at_once_when_the_slo_breaks() -> None:
    got = Latency().desired(
        scale_context(metric="latency", current=2, in_flight=16, target=2.0, ttft_p95=3.0),
        AutoscalerState(capacity=10.0),
    )
    assert got.capacity == pytest.approx(0.9 * 8)
    assert got.replicas == pytest.approx(16 / 7.2)


def test_a_burst_is_answered_by_the_panic_window_and_replicas_go_as_the_windows_forget_it() -> None:
    """KPA's windows: 1 replica of load for a minute, then a 6x burst for 3 s."""
    policy, state = autoscaler_for("concurrency"), AutoscalerState()
    ctx = {"target": 1.0, "stable_window": 60.0, "panic_window": 6.0, "scale_down_delay": 0.0, "min": 1}
    trace = [1.0] * 60 + [6.0] * 3 + [1.0] * 70
    seen, current = [], 1
    for t, load in enumerate(trace):
        scale, state = decide(policy, scale_context(now=t, current=current, in_flight=load, **ctx), state)
        current = scale.replicas
        seen.append(current)
    assert seen[:60] == [1] * 60
    # t=60: the panic mean (5 x 1 + 6) / 6 = 1.83 answers at once; the stable one is 1.08.
    assert seen[60] == 2
    assert seen[62] == 4  # (3 x 1 + 3 x 6) / 6 = 3.5
    # The burst ends: the panic window forgets it within 6 s ...
    assert seen[63:66] == [4, 4, 4] and seen[66] == 3 and seen[68] == 2
    # ... and the stable window, above one replica's load while the burst is in it, keeps 2
    # until the last burst sample (t=62) leaves it at t=122.
    assert set(seen[68:122]) == {2}
    assert seen[122:] == [1] * len(seen[122:])


def test_look_ahead_scales_for_the_load_one_cold_start_away_while_load_rises() -> None:
    """Load rises by 0.1 replica per second; a cold start is 20 s. With look-ahead the
    trend adds what 20 s more of the rise will bring."""
    state = AutoscalerState()
    ctx = {"target": 1.0, "stable_window": 20.0, "panic_window": 6.0, "max": 50, "look_ahead": True}
    current = 1
    for t in range(30):
        scale, state = decide(
            autoscaler_for("concurrency"),
            scale_context(now=t, current=current, in_flight=1 + 0.1 * t, cold_start=20.0, **ctx),  # type: ignore[arg-type]
            state,
        )
        current = scale.replicas
    # At t=29 the panic window's mean is 3.65 replicas of load; in 20 s it will be 2 more.
    assert current == 6
    assert "+2.00 expected within a cold start" in scale.reason

    # A measured cold start of 2 s overrides the assumed 20 s: the lead is 0.2 on the
    # panic mean of 3.75 at t=30, not enough for a fifth replica.
    def at_30(**extra: float) -> int:
        ctx30 = scale_context(now=30, current=2, in_flight=4.0, cold_start=20.0, **ctx, **extra)  # type: ignore[arg-type]
        return decide(autoscaler_for("concurrency"), ctx30, AutoscalerState(window=state.window))[0].replicas

    assert at_30() == 6  # 3.75 + 2 (from 2 ready: the surge limit allows up to 6)
    assert at_30(measured_cold_start=2.0) == 4


def test_look_ahead_needs_half_a_window_of_history() -> None:
    """Three samples half a second apart are no trend: no jump to max at start-up."""
    state = AutoscalerState()
    ctx = {"target": 1.0, "stable_window": 60.0, "max": 32, "look_ahead": True, "cold_start": 60.0}
    for t, load in ((0.0, 1.0), (0.25, 2.0), (0.5, 3.0)):
        scale, state = decide(
            autoscaler_for("concurrency"), scale_context(now=t, current=1, in_flight=load, **ctx), state
        )  # type: ignore[arg-type]
    assert scale.replicas == 3 and "cold start" not in scale.reason  # the load of now, no more


def test_a_replica_no_longer_needed_is_kept_for_hold_cold_starts() -> None:
    """With look-ahead, scale-down waits max(scaleDownDelay, hold x cold start): 5 x 45 s."""
    ctx = {"target": 1.0, "min": 1, "scale_down_delay": 10.0, "look_ahead": True, "cold_start": 45.0}
    state = AutoscalerState()
    for t in (0.0, 224.9):
        scale, state = decide(
            autoscaler_for("concurrency"), scale_context(now=t, current=3, in_flight=1, **ctx), state
        )  # type: ignore[arg-type]
        assert scale.replicas == 3, t
    scale, _ = decide(
        autoscaler_for("concurrency"), scale_context(now=225.0, current=3, in_flight=1, **ctx), state
    )  # type: ignore[arg-type]
    assert scale.replicas == 1


def test_replicas_step_down_as_older_peaks_leave_the_window() -> None:
    """The HPA's stabilization: the count follows the most wanted within the delay."""
    ctx = {"target": 1.0, "min": 1, "scale_down_delay": 10.0}
    state = AutoscalerState()
    seen = []
    for t, load in enumerate([4, 4, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]):
        scale, state = decide(
            autoscaler_for("concurrency"),
            scale_context(now=t, current=4 if not seen else seen[-1], in_flight=load, **ctx),
            state,
        )  # type: ignore[arg-type]
        seen.append(scale.replicas)
    # 4 was last wanted at t=1, 3 at t=4, 2 at t=12: each goes 10 s later.
    assert seen.index(3) == 11 and seen.index(2) == 14 and seen.index(1) == 22, seen


def test_look_ahead_never_scales_ahead_of_a_falling_load() -> None:
    state = AutoscalerState()
    ctx = {"target": 1.0, "stable_window": 60.0, "panic_window": 6.0, "max": 50, "look_ahead": True, "min": 1}
    for t in range(30):
        scale, state = decide(
            autoscaler_for("concurrency"),
            scale_context(now=t, current=8, in_flight=8 - 0.2 * t, **ctx),  # type: ignore[arg-type]
            state,
        )
        assert "cold start" not in scale.reason


def test_scale_to_zero_after_is_not_held_up_by_the_stable_windows_memory() -> None:
    """A minute's window still remembers the last request; idleness of scaleToZeroAfter
    (3 s here) is what decides zero."""
    policy, state = autoscaler_for("concurrency"), AutoscalerState()
    ctx = {"target": 4.0, "stable_window": 60.0, "panic_window": 6.0, "scale_to_zero_after": 3.0, "min": 0}
    scale, state = decide(policy, scale_context(now=0.0, current=1, in_flight=1, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 1
    scale, state = decide(policy, scale_context(now=2.9, current=1, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 1
    scale, state = decide(policy, scale_context(now=3.0, current=1, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 0 and scale.reason == "idle for 3s >= scaleToZeroAfter 3s"


def test_a_surge_is_limited_to_double_the_ready_replicas_or_four_more() -> None:
    """As the HPA's default scale-up policy: replicas asked for while a backlog drains
    arrive a cold start later, mostly after the burst; doubling (or +4) per cold start
    still reaches any size in a few steps."""
    ctx = {"target": 1.0, "max": 64, "look_ahead": True}
    for ready, want in ((1, 5), (4, 8), (10, 20)):
        got = decide(
            autoscaler_for("concurrency"),
            scale_context(now=0, current=ready, in_flight=40, **ctx),
            AutoscalerState(),  # type: ignore[arg-type]
        )[0]
        assert got.replicas == want, (ready, got)
    # Replicas already starting count: with 1 ready and 5 asked for, nothing more until some are ready.
    got = decide(
        autoscaler_for("concurrency"),
        scale_context(now=0, current=5, ready=1, in_flight=40, **ctx),
        AutoscalerState(),  # type: ignore[arg-type]
    )[0]
    assert got.replicas == 5


def test_one_request_held_at_zero_starts_one_replica_not_a_trend() -> None:
    """From zero the window goes 0, 0, ..., 1: a step, not a rise to extrapolate over the
    (assumed 30 s) cold start."""
    policy, state = autoscaler_for("concurrency"), AutoscalerState()
    ctx = {"target": 1.0, "min": 0, "max": 4, "stable_window": 4.0, "panic_window": 2.0, "look_ahead": True}
    for t in range(10):
        scale, state = decide(policy, scale_context(now=t, current=0, **ctx), state)  # type: ignore[arg-type]
    scale, state = decide(policy, scale_context(now=10, current=0, held=1, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 1
    scale, state = decide(policy, scale_context(now=11, current=1, ready=0, held=1, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 1


def test_the_step_from_idle_to_one_request_is_not_extrapolated() -> None:
    """Idle, then one request on the one ready replica: least squares over the window sees
    a rise, but it is a step; one replica is enough."""
    policy, state = autoscaler_for("concurrency"), AutoscalerState()
    ctx = {"target": 1.0, "min": 0, "max": 4, "stable_window": 4.0, "panic_window": 2.0, "look_ahead": True}
    for t in range(4):
        scale, state = decide(policy, scale_context(now=t, current=1, **ctx), state)  # type: ignore[arg-type]
    for t in (4.0, 4.5, 5.0, 5.5, 6.0):
        scale, state = decide(policy, scale_context(now=t, current=1, in_flight=1, **ctx), state)  # type: ignore[arg-type]
        assert scale.replicas == 1, t
