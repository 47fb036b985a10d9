"""The simulator's baseline autoscalers against their documented defaults."""

from __future__ import annotations

from aiplane.policies.signals import ModelSignals
from aiplane.sim.serve.autoscalers import View
from aiplane.sim.serve.baselines import Hpa, Keda, Knative, KubeAi


def view(now: float, current: int, ready: int | None = None, **signals: float) -> View:
    return View(
        now=now, signals=ModelSignals(**signals), current=current, ready=current if ready is None else ready
    )


def test_hpa_holds_within_tolerance_and_scales_by_the_ratio_outside_it() -> None:
    hpa = Hpa("hpa-cpu", "cpu", 0.7)
    decision, _ = hpa.decide(view(0, 4, cpu_utilization=0.75), hpa.initial())
    assert decision.replicas == 4  # 0.75 / 0.7 = 1.07: within 10%
    decision, _ = hpa.decide(view(0, 4, cpu_utilization=1.0), hpa.initial())
    assert decision.replicas == 6  # ceil(4 x 1.0 / 0.7)


def test_hpa_scale_up_is_limited_to_double_or_four_pods_per_period() -> None:
    hpa = Hpa("hpa-concurrency", "concurrency", 1.0)
    decision, state = hpa.decide(view(0, 1, in_flight=100), hpa.initial())
    assert decision.replicas == 5  # max(1 + 4, 2 x 1)
    decision, _ = hpa.decide(view(10, 5, ready=1, in_flight=100), state)
    assert decision.replicas == 5  # still within the same 15 s period: no more


def test_hpa_counts_unready_pods_as_zero_when_scaling_up() -> None:
    hpa = Hpa("hpa-concurrency", "concurrency", 10.0)
    decision, _ = hpa.decide(view(0, 4, ready=1, in_flight=12), hpa.initial())
    assert decision.replicas == 4  # 12 over 4 pods is 3 per pod: under target, no scale-up


def test_hpa_scale_down_waits_out_the_stabilization_window() -> None:
    hpa = Hpa("hpa-concurrency", "concurrency", 1.0)
    state = hpa.initial()
    decision, state = hpa.decide(view(0, 8, in_flight=8), state)
    for t in range(15, 300, 15):
        decision, state = hpa.decide(view(t, 8, in_flight=1), state)
        assert decision.replicas == 8
    decision, state = hpa.decide(view(300, 8, in_flight=1), state)
    assert decision.replicas == 1


def test_hpa_cannot_scale_from_zero() -> None:
    hpa = Hpa("hpa-cpu", "cpu", 0.7, min_replicas=0)
    assert hpa.wake(view(0, 0, held=3), hpa.initial())[0] is None


def test_kubeai_averages_over_ten_minutes_from_zeros_and_needs_consecutive_scale_downs() -> None:
    kubeai = KubeAi(target=10)
    state = kubeai.initial()
    assert len(state.samples) == 60
    decision, state = kubeai.decide(view(0, 1, in_flight=600), state)
    assert decision.replicas == 1  # 600 / 60 samples = 10 average: one replica
    decision, state = kubeai.decide(view(10, 1, in_flight=600), state)
    assert decision.replicas == 2
    ups = state
    for i in range(3):
        decision, state = kubeai.decide(view(20 + 10 * i, 5), state)
        assert decision.replicas == 5  # lower answers 1, 2, 3 of 3 are held
    decision, state = kubeai.decide(view(50, 5), state)
    assert decision.replicas == 2
    assert kubeai.wake(view(0, 0, held=1), ups)[0].replicas == 1  # type: ignore[union-attr]


def test_knative_panics_on_a_burst_and_does_not_scale_down_in_panic() -> None:
    kpa = Knative(target=10, utilization=1.0, min_replicas=1)
    state = kpa.initial()
    for t in range(0, 60, 2):
        decision, state = kpa.decide(view(t, 1, in_flight=5), state)
    assert decision.replicas == 1 and state.panic_since is None
    decision, state = kpa.decide(view(60, 1, in_flight=200), state)
    assert state.panic_since == 60 and decision.replicas > 2  # panic window follows the burst
    peak = decision.replicas
    decision, state = kpa.decide(view(62, peak, in_flight=1), state)
    assert decision.replicas == peak  # in panic: no scale-down
    for t in range(64, 124, 2):
        decision, state = kpa.decide(view(t, peak, in_flight=1), state)
    assert state.panic_since is None and decision.replicas < peak


def test_knative_scales_to_zero_after_its_grace_period() -> None:
    kpa = Knative(target=10)
    state = kpa.initial()
    decision, state = kpa.decide(view(0, 1), state)
    assert decision.replicas == 1  # zero demand, but within the 30 s grace
    decision, state = kpa.decide(view(30, 1), state)
    assert decision.replicas == 0


def test_keda_scales_on_waiting_requests_through_its_hpa() -> None:
    keda = Keda()
    decision, state = keda.decide(view(0, 1, engine_waiting=20), keda.initial())
    assert decision.replicas == 4  # 20 waiting / 5 per pod
    decision, state = keda.decide(view(15, 4, engine_waiting=0), state)
    assert decision.replicas == 4  # the HPA's 300 s window, not the cooldown, holds it


def test_keda_with_min_zero_deactivates_after_its_cooldown() -> None:
    keda = Keda(min_replicas=0)
    decision, state = keda.decide(view(0, 1, engine_waiting=3), keda.initial())
    assert decision.replicas >= 1
    for t in range(30, 360, 30):
        decision, state = keda.decide(view(t, 1), state)
        assert decision.replicas == 1
    decision, state = keda.decide(view(390, 1), state)
    assert decision.replicas == 0
