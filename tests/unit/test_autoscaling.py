"""``decide`` around the concurrency policy: bounds, scale-to-zero, scale-down delay.

These contexts have no windows and no look-ahead (``scale_context``'s default), so each
rule is seen alone; ``test_autoscaling_policies.py`` covers windows, look-ahead and the
other metrics."""

from __future__ import annotations

import dataclasses

import pytest
from builders import FakeClock, scale_context

from aiplane.policies.autoscaling import AutoscalerState, Concurrency, ScaleTo, decide

POLICY = Concurrency()


def replicas(state: AutoscalerState = AutoscalerState(), **ctx: float) -> int:
    scale, _ = decide(POLICY, scale_context(**ctx), state)  # type: ignore[arg-type]
    return scale.replicas


@pytest.mark.parametrize(
    ("ctx", "want"),
    [
        pytest.param({"current": 0, "queued": 1}, 1, id="from-zero-on-one-queued-request"),
        pytest.param({"current": 0, "queued": 5, "target": 2}, 3, id="from-zero-ceil-queued-over-target"),
        pytest.param({"current": 1, "in_flight": 4, "target": 4}, 1, id="exactly-at-target"),
        pytest.param({"current": 1, "in_flight": 5, "target": 4}, 2, id="one-over-target"),
        pytest.param({"current": 1, "in_flight": 9, "target": 4}, 3, id="ceil"),
        pytest.param({"current": 1, "in_flight": 3, "queued": 2, "target": 2}, 3, id="queued-counts-as-load"),
        pytest.param({"current": 1, "in_flight": 0.5, "target": 0.25}, 2, id="fractional-target"),
        pytest.param({"current": 2, "in_flight": 100, "max": 5}, 5, id="capped-at-max"),
        pytest.param({"current": 2, "in_flight": 0, "min": 2}, 2, id="min-respected-when-idle"),
        pytest.param({"current": 0, "in_flight": 0, "min": 3}, 3, id="min-raises-from-zero"),
        pytest.param({"current": 0, "in_flight": 0, "min": 0}, 0, id="stays-at-zero-when-idle"),
    ],
)
def test_replicas_for_load(ctx: dict[str, float], want: int) -> None:
    assert replicas(**ctx) == want


def test_capped_reason_says_so() -> None:
    scale, _ = decide(POLICY, scale_context(current=2, in_flight=100, max=5), AutoscalerState())
    assert scale == ScaleTo(5, "100 in flight+waiting / target 1 per replica; capped at max 5")


def test_one_replica_stays_warm_until_idle_for_scale_to_zero_after() -> None:
    clock = FakeClock(start=1000.0)
    state = AutoscalerState()
    # The last request finishes at t=1000.
    scale, state = decide(POLICY, scale_context(now=clock(), current=1, in_flight=1), state)
    assert scale.replicas == 1 and state.last_active == 1000.0

    for idle in (1.0, 100.0, 299.0, 299.999):
        scale, state = decide(
            POLICY, scale_context(now=1000.0 + idle, current=1, scale_to_zero_after=300), state
        )
        assert scale.replicas == 1, f"scaled to zero after only {idle}s idle"
        assert "raised to floor 1" in scale.reason, scale.reason
        assert state.last_active == 1000.0

    scale, state = decide(POLICY, scale_context(now=1300.0, current=1, scale_to_zero_after=300), state)
    assert scale == ScaleTo(0, "idle for 300s >= scaleToZeroAfter 300s")
    assert (state.last_active, state.below_since) == (1000.0, None)
    # Once at zero, the status keeps saying why (not a bare "0 in flight" line).
    scale, state = decide(POLICY, scale_context(now=1301.0, current=0, scale_to_zero_after=300), state)
    assert scale == ScaleTo(0, "idle at zero replicas; a request starts one")


def test_idleness_counts_from_the_first_decision_when_never_busy() -> None:
    state = AutoscalerState()
    scale, state = decide(POLICY, scale_context(now=50.0, current=1, scale_to_zero_after=60), state)
    assert scale.replicas == 1 and state.last_active == 50.0
    scale, state = decide(POLICY, scale_context(now=109.0, current=1, scale_to_zero_after=60), state)
    assert scale.replicas == 1
    scale, _ = decide(POLICY, scale_context(now=110.0, current=1, scale_to_zero_after=60), state)
    assert scale.replicas == 0


def test_new_load_restarts_the_idle_timer() -> None:
    state = AutoscalerState(last_active=0.0)
    _, state = decide(POLICY, scale_context(now=250.0, current=1, in_flight=1), state)
    assert state.last_active == 250.0
    scale, _ = decide(POLICY, scale_context(now=400.0, current=1, scale_to_zero_after=300), state)
    assert scale.replicas == 1  # idle 150 s since the request at 250, not 400 s


def test_min_one_never_scales_to_zero() -> None:
    state = AutoscalerState(last_active=0.0)
    scale, _ = decide(POLICY, scale_context(now=10_000.0, current=1, min=1), state)
    assert scale.replicas == 1


def test_scale_down_is_held_for_scale_down_delay_then_applied() -> None:
    clock = FakeClock(start=0.0)
    ctx = {"current": 4, "in_flight": 2, "min": 1, "scale_down_delay": 30.0}
    scale, state = decide(POLICY, scale_context(now=clock(), **ctx), AutoscalerState())
    assert scale.replicas == 4
    assert scale.reason == "holding 4 (want 2) for scaleDownDelay 30s"
    assert state.below_since == 0.0

    clock.advance(29.9)
    scale, state = decide(POLICY, scale_context(now=clock(), **ctx), state)
    assert scale.replicas == 4 and state.below_since == 0.0

    clock.advance(0.1)
    scale, state = decide(POLICY, scale_context(now=clock(), **ctx), state)
    assert scale.replicas == 2
    assert state.below_since is None


def test_scale_up_is_immediate_and_resets_the_hold() -> None:
    ctx = {"current": 4, "min": 1, "scale_down_delay": 30.0}
    _, state = decide(POLICY, scale_context(now=0.0, in_flight=2, **ctx), AutoscalerState())
    assert state.below_since == 0.0

    scale, state = decide(POLICY, scale_context(now=10.0, in_flight=6, **ctx), state)
    assert scale.replicas == 6
    assert state.below_since is None

    # Load drops again at t=20. As in the HPA's stabilization window, replicas go once
    # nothing within the last 30 s wanted them: 6 were wanted at t=10, so not before 40.
    scale, state = decide(POLICY, scale_context(now=20.0, in_flight=2, **ctx), state)
    assert scale.replicas == 4 and state.below_since == 20.0
    scale, state = decide(POLICY, scale_context(now=39.9, in_flight=2, **ctx), state)
    assert scale.replicas == 4
    scale, _ = decide(POLICY, scale_context(now=40.0, in_flight=2, **ctx), state)
    assert scale.replicas == 2


def test_scale_up_during_a_hold_is_not_delayed() -> None:
    held = AutoscalerState(last_active=0.0, below_since=0.0)
    scale, _ = decide(POLICY, scale_context(now=1.0, current=2, in_flight=3), held)
    assert scale.replicas == 3


def test_scale_to_zero_is_not_also_delayed_by_scale_down_delay() -> None:
    state = AutoscalerState(last_active=0.0)
    scale, state = decide(
        POLICY, scale_context(now=600.0, current=3, scale_to_zero_after=300, scale_down_delay=30), state
    )
    assert scale.replicas == 0
    assert state.below_since is None


def test_state_is_frozen_and_its_durable_part_round_trips_through_a_dict() -> None:
    _, state = decide(POLICY, scale_context(now=5.0, current=4, in_flight=1), AutoscalerState())
    assert (state.last_active, state.below_since) == (5.0, 5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.last_active = 1.0  # type: ignore[misc]
    stored = state.durable()  # what a runtime persists (SQLite JSON, the Model's status)
    assert stored == {"last_active": 5.0, "below_since": 5.0, "capacity": None}
    restored = AutoscalerState.restore(stored)
    # After a restart the count has no history: it is held for a whole scaleDownDelay
    # (never fewer replicas than a restart found), then follows the load.
    scale, restored = decide(POLICY, scale_context(now=40.0, current=4, in_flight=1), restored)
    assert scale.replicas == 4 and restored.last_active == 40.0
    scale, _ = decide(POLICY, scale_context(now=70.0, current=4, in_flight=1), restored)
    assert scale.replicas == 1


@pytest.mark.parametrize("stored", [None, {}, {"last_active": "yesterday"}, {"below_since": [1]}])
def test_an_unreadable_stored_state_starts_fresh(stored: dict[str, object] | None) -> None:
    assert AutoscalerState.restore(stored) == AutoscalerState()


def test_concurrency_recommendation_alone_ignores_bounds() -> None:
    assert POLICY.desired(scale_context(in_flight=0), AutoscalerState()).replicas == 0
    assert POLICY.desired(scale_context(in_flight=7, target=2, max=1), AutoscalerState()).replicas == 3.5
    assert POLICY.name == "concurrency"


def test_a_request_held_at_zero_starts_one_replica_at_once() -> None:
    scale, _ = decide(POLICY, scale_context(now=0.0, current=0, held=1, target=4), AutoscalerState())
    assert scale.replicas == 1


@pytest.mark.parametrize(
    ("ctx", "want"),
    [
        # load 0.25 replicas: at least `headroom` (1.5) spare -> ceil(1.75)
        pytest.param({"in_flight": 1, "target": 4}, 2, id="one-request-gets-a-spare"),
        # load 16: 1.5 x sqrt(16) = 6 spare
        pytest.param({"current": 16, "in_flight": 64, "target": 4, "max": 32}, 22, id="square-root-at-scale"),
        # load 100 over target 1 = 100: 15 spare, but max 32 bounds it
        pytest.param({"current": 16, "in_flight": 100, "max": 32}, 32, id="bounded-by-max"),
        pytest.param({"in_flight": 0, "min": 1}, 1, id="no-load-no-spare"),
        # the first replica serves what is held: no spare while none is ready
        pytest.param({"current": 0, "held": 1}, 1, id="none-while-starting-from-zero"),
        pytest.param({"current": 1, "ready": 0, "in_flight": 1}, 1, id="none-while-none-ready"),
        # a replica that starts within the panic window answers a burst as fast as a spare
        pytest.param({"in_flight": 1, "measured_cold_start": 1.0}, 1, id="none-for-a-fast-start"),
    ],
)
def test_headroom_keeps_square_root_spare_replicas_while_serving(ctx: dict[str, float], want: int) -> None:
    base = {"target": 1.0, "headroom": 1.5, "panic_window": 6.0, "cold_start": 60.0}
    assert replicas(**{**base, **ctx}) == want


def test_headroom_says_why_and_is_held_through_the_scale_down_delay() -> None:
    state = AutoscalerState()
    ctx = {"target": 4.0, "headroom": 1.5, "panic_window": 6.0, "cold_start": 60.0, "scale_down_delay": 30.0}
    scale, state = decide(POLICY, scale_context(now=0.0, current=1, in_flight=4, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 3  # load 1 + 1.5 spare
    assert "+1.50 headroom for bursts within a 60s cold start" in scale.reason
    # Load gone: the spare goes with it, but only after the delay, as any replica does.
    scale, state = decide(POLICY, scale_context(now=10.0, current=3, in_flight=0, min=1, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 3
    scale, state = decide(POLICY, scale_context(now=31.0, current=3, in_flight=0, min=1, **ctx), state)  # type: ignore[arg-type]
    assert scale.replicas == 1
