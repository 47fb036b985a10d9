"""Quota admission by example: fits, borrowing, reclaim, priority preemption, fair order."""

from __future__ import annotations

import pytest

from aiplane.policies.scheduling.outcome import Mode, Outcome
from aiplane.policies.scheduling.preemption import plan_preemption
from aiplane.policies.scheduling.quota import (
    QueueSpec,
    Usage,
    admit,
    dominant_share,
    fair_order,
    flavor_for,
    flavors_for,
)
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo


def job(
    key: str, queue: str, gpu: float, model: str | None = "H100", priority: int = 0, created: float = 0
) -> WorkloadInfo:
    return WorkloadInfo(key, queue, Demand(gpu=gpu, cpu=gpu * 8, gpu_model=model), priority, created)


def holding(queues: dict[str, QueueSpec], *jobs: WorkloadInfo) -> Usage:
    """The usage after admitting ``jobs`` in order; each must fit."""
    usage = Usage()
    for j in jobs:
        outcome = admit(j, queues, usage)
        assert outcome.mode == Mode.Fit, outcome.reason
        usage = usage.add(j, outcome.flavor)
    return usage


def cohort(
    a: float = 8, b: float = 8, borrowing: bool = True, limit: float | None = None
) -> dict[str, QueueSpec]:
    return {
        "team-a": QueueSpec("team-a", {"H100": a}, "research", borrowing=borrowing, borrowing_limit=limit),
        "team-b": QueueSpec("team-b", {"H100": b}, "research"),
    }


# ---- outcome ----


def test_modes_are_ordered_like_kueue_and_reasons_join() -> None:
    assert Mode.Fit > Mode.Preempt > Mode.NoFit
    assert max([Mode.NoFit, Mode.Fit, Mode.Preempt]) == Mode.Fit
    assert Outcome(Mode.NoFit, ("a", "b")).reason == "a; b"
    with pytest.raises(ValueError, match="victims"):
        Outcome(Mode.Preempt, ("no victims",))
    with pytest.raises(ValueError, match="victims"):
        Outcome(Mode.Fit, ("x",), victims=("v",))


def test_demand_is_a_mapping_of_three_resources() -> None:
    d = Demand(gpu=0.5, cpu=4, memory=2**30, gpu_model="A100")
    assert dict(d) == {"gpu": 0.5, "cpu": 4, "memory": 2**30}
    assert d["gpu"] == 0.5 and "gpu_model" not in d
    with pytest.raises(ValueError, match="gpu"):
        Demand(gpu=-1)
    with pytest.raises(ValueError, match="gang size"):
        WorkloadInfo("w", "q", gang_size=0)


# ---- flavors ----


@pytest.mark.parametrize(
    ("model", "quota", "expected"),
    [
        ("A100", {"*": 8, "A100": 4}, "A100"),  # the exact model before "*"
        ("H100", {"*": 8, "A100": 4}, "*"),
        ("V100M16|V100M32", {"V100M32": 4}, "V100M32"),
        ("v100m32", {"V100M32": 4}, "V100M32"),  # case-insensitive
        ("V100", {"V100M32": 4}, None),  # whole names, not substrings
        ("A100", {"A100-40GB": 4}, None),
        (None, {"A100": 4}, None),  # no model: only "*" may count it
        (None, {"A100": 4, "*": 2}, "*"),
    ],
)
def test_flavor_for(model: str | None, quota: dict[str, float], expected: str | None) -> None:
    assert flavor_for(Demand(gpu=1, gpu_model=model), quota) == expected


def test_alternatives_follow_the_queues_order_then_any() -> None:
    quota = {"V100M32": 1, "*": 1, "V100M16": 1}
    assert flavors_for(Demand(gpu=1, gpu_model="V100M16|V100M32"), quota) == ("V100M32", "V100M16", "*")


def test_a_full_first_key_falls_through_to_the_next_without_borrowing() -> None:
    queues = {
        "q": QueueSpec("q", {"V100M32": 2, "V100M16": 4}, "c"),
        "r": QueueSpec("r", {"V100M32": 8}, "c"),
    }
    usage = holding(queues, job("old", "q", 2, "V100M32"))
    outcome = admit(job("new", "q", 2, "V100M16|V100M32"), queues, usage)
    assert (outcome.mode, outcome.flavor, outcome.borrowed) == (Mode.Fit, "V100M16", 0)


# ---- fit and no fit ----


def test_cpu_only_always_fits_and_unknown_queues_do_not() -> None:
    assert admit(job("c", "nowhere", 0), {}, Usage()) == Outcome(Mode.Fit, ("no GPUs requested",))
    assert admit(job("g", "nowhere", 1), {}, Usage()) == Outcome(
        Mode.NoFit, ("queue 'nowhere' does not exist",)
    )
    queues = {"q": QueueSpec("q", {"A100": 4})}
    assert admit(job("g", "q", 1, "H100"), queues, Usage()).reason == "queue 'q' has no quota for H100"


def test_fit_names_the_quota_it_counts_against() -> None:
    queues = cohort()
    usage = holding(queues, job("a1", "team-a", 4))
    outcome = admit(job("a2", "team-a", 4), queues, usage)
    assert outcome == Outcome(Mode.Fit, ("queue team-a: 4 H100 fit its quota (quota 4/8 in use)",), "H100")


def test_a_gang_is_admitted_whole_or_not_at_all() -> None:
    queues = {"q": QueueSpec("q", {"H100": 8})}
    usage = holding(queues, job("a", "q", 6))
    outcome = admit(job("gang", "q", 4), queues, usage)  # 2 of its 4 would fit
    assert outcome.mode == Mode.NoFit
    assert outcome.reasons == (
        "queue q: H100 quota 6/8 in use, needs 4 (no cohort to borrow from)",
        "preemption cannot make room",
    )


def test_fractional_gpus_add_up_exactly() -> None:
    queues = {"q": QueueSpec("q", {"*": 1})}
    usage = holding(queues, *(job(f"s{i}", "q", 0.25, None) for i in range(4)))
    assert usage.gpus("q", "*") == 1
    assert admit(job("one-more", "q", 0.25, None), queues, usage).mode == Mode.NoFit


# ---- borrowing ----


def test_borrows_idle_quota_of_the_cohort() -> None:
    queues = cohort(a=4, b=8)
    outcome = admit(job("big", "team-a", 10), queues, Usage())
    assert outcome == Outcome(
        Mode.Fit, ("queue team-a: 10 H100, 6 borrowed from cohort research (quota 0/4 in use)",), "H100", 6
    )


def test_no_borrowing_past_the_cohorts_idle_quota() -> None:
    queues = cohort(a=8, b=8)
    usage = holding(queues, job("b1", "team-b", 8), job("a1", "team-a", 8))
    outcome = admit(job("a2", "team-a", 1, priority=0), queues, usage)
    assert outcome.mode == Mode.NoFit
    assert (
        outcome.reasons[0]
        == "queue team-a: H100 quota 8/8 in use, needs 1 (borrowing: cohort research has 0 idle)"
    )


def test_borrowing_can_be_switched_off() -> None:
    outcome = admit(job("x", "team-a", 6), cohort(a=4, b=8, borrowing=False), Usage())
    assert outcome.mode == Mode.NoFit
    assert outcome.reasons[0] == "queue team-a: H100 quota 0/4 in use, needs 6 (borrowing disabled)"


def test_a_borrowing_limit_admits_up_to_the_limit() -> None:
    queues = cohort(a=4, b=8, limit=2)
    usage = holding(queues, job("x", "team-a", 5))
    assert admit(job("y", "team-a", 1), queues, usage) == Outcome(
        Mode.Fit, ("queue team-a: 1 H100, 1 borrowed from cohort research (quota 5/4 in use)",), "H100", 1
    )
    outcome = admit(job("y", "team-a", 1.5), queues, usage)
    assert outcome.mode == Mode.NoFit
    assert (
        outcome.reasons[0] == "queue team-a: H100 quota 5/4 in use, needs 1.5 (borrowing limit 2, 1 borrowed)"
    )


def test_a_queue_that_does_not_lend_keeps_its_idle_quota() -> None:
    queues = {
        "team-a": QueueSpec("team-a", {"H100": 4}, "research"),
        "team-b": QueueSpec("team-b", {"H100": 8}, "research", lending=False),
    }
    assert admit(job("x", "team-a", 5), queues, Usage()).mode == Mode.NoFit
    assert admit(job("x", "team-b", 8), queues, Usage()).mode == Mode.Fit


# ---- reclaim ----


def test_a_lender_reclaims_what_it_lent_whatever_the_borrowers_priority() -> None:
    queues = cohort(a=8, b=8)
    usage = holding(
        queues,
        job("b-own", "team-b", 8, priority=9, created=1),
        job("b-borrow-1", "team-b", 2, priority=9, created=2),
        job("b-borrow-2", "team-b", 4, priority=9, created=3),
        job("a-small", "team-a", 2, created=4),
    )
    lender = job("a-new", "team-a", 4, priority=0, created=5)
    outcome = admit(lender, queues, usage)
    assert outcome.mode == Mode.Preempt
    assert outcome.victims == ("b-borrow-2",)  # the newest borrower frees 4 and is enough
    assert outcome.borrowed == 0
    assert outcome.reasons == (
        "queue team-a: H100 quota 2/8 in use, needs 4 (6 of it lent within cohort research, "
        "borrowing: cohort research has 0 idle)",
        "preempting 1 workload(s) frees 4 H100, reclaiming quota lent within cohort research",
    )
    assert plan_preemption(lender, usage.workloads, queues, usage) == outcome.victims
    after = admit(lender, queues, usage.without(outcome.victims))
    assert (after.mode, after.borrowed) == (Mode.Fit, 0)


def test_reclaim_stops_at_a_queue_that_no_longer_borrows() -> None:
    queues = {
        "team-a": QueueSpec("team-a", {"H100": 8}, "research"),
        "team-b": QueueSpec("team-b", {"H100": 4}, "research"),
        "team-c": QueueSpec("team-c", {"H100": 4}, "research"),
    }
    usage = holding(
        queues,
        job("a1", "team-a", 4),
        job("b1", "team-b", 4, created=0),
        job("c1", "team-c", 4, created=1),
        job("b2", "team-b", 2, created=2),  # team-b and team-c each borrow 2 of team-a's idle 4
        job("c2", "team-c", 2, created=3),
    )
    # After b2, team-b is within its quota: b1 is its own and is skipped (taking it would
    # also make room, but out of team-b's nominal quota); c2 is taken instead.
    outcome = admit(job("a2", "team-a", 4), queues, usage)
    assert (outcome.mode, outcome.victims) == (Mode.Preempt, ("b2", "c2"))


def test_reclaim_victims_not_needed_are_dropped_again() -> None:
    queues = cohort(a=8, b=4)
    usage = holding(queues, job("b-big", "team-b", 8, created=0), job("b-small", "team-b", 4, created=1))
    # team-b borrows all 8 of team-a's quota; team-a wants 6. Newest first: b-small (4) is not
    # enough, b-big (8) is, and then b-small is not needed.
    outcome = admit(job("a", "team-a", 6), queues, usage)
    assert (outcome.mode, outcome.victims, outcome.borrowed) == (Mode.Preempt, ("b-big",), 0)
    assert admit(job("a", "team-a", 6), queues, usage.without(outcome.victims)).borrowed == 0


def test_a_borrower_cannot_preempt_to_borrow_more() -> None:
    queues = {
        "team-a": QueueSpec("team-a", {"H100": 2}, "research"),
        "team-b": QueueSpec("team-b", {"H100": 2}, "research"),
        "team-c": QueueSpec("team-c", {"H100": 2}, "research"),
    }
    usage = holding(queues, job("b", "team-b", 6))  # borrows all of team-c's and team-a's idle quota
    outcome = admit(job("a", "team-a", 4, priority=5), queues, usage)  # above team-a's quota of 2
    assert outcome.mode == Mode.NoFit
    within = admit(job("a", "team-a", 2, priority=5), queues, usage)
    assert (within.mode, within.victims) == (Mode.Preempt, ("b",))


# ---- priority preemption in one queue ----


def test_lowest_priority_then_newest_goes_first_and_the_set_is_minimal() -> None:
    queues = {"q": QueueSpec("q", {"H100": 8})}
    usage = holding(
        queues,
        job("low-old", "q", 2, priority=1, created=1),
        job("low-new", "q", 1, priority=1, created=2),
        job("mid", "q", 4, priority=2, created=3),
        job("peer", "q", 1, priority=5, created=4),
    )
    outcome = admit(job("urgent", "q", 4, priority=5, created=9), queues, usage)
    # Candidates low-new (1), low-old (2), mid (4): all three reach 7 free; then low-old
    # and low-new are dropped again, since mid alone frees the 4 needed.
    assert (outcome.mode, outcome.victims) == (Mode.Preempt, ("mid",))
    outcome = admit(job("urgent", "q", 2, priority=5, created=9), queues, usage)
    assert outcome.victims == ("low-old",)
    outcome = admit(job("urgent", "q", 1, priority=5, created=9), queues, usage)
    assert outcome.victims == ("low-new",)


def test_equal_or_higher_priority_in_the_same_queue_is_never_preempted() -> None:
    queues = {"q": QueueSpec("q", {"H100": 4})}
    usage = holding(queues, job("same", "q", 2, priority=3), job("higher", "q", 2, priority=4))
    outcome = admit(job("new", "q", 2, priority=3), queues, usage)
    assert outcome.mode == Mode.NoFit
    assert plan_preemption(job("new", "q", 2, priority=3), usage.workloads, queues, usage) is None


def test_plan_preemption_is_empty_when_it_fits_already() -> None:
    queues = {"q": QueueSpec("q", {"H100": 4})}
    assert plan_preemption(job("new", "q", 2), (), queues, Usage()) == ()


# ---- fair share ----


def test_fair_order_by_priority_then_weighted_dominant_share_then_age() -> None:
    queues = {
        "heavy": QueueSpec("heavy", {"H100": 8}, "c"),
        "light": QueueSpec("light", {"H100": 8}, "c"),
        "weighted": QueueSpec("weighted", {"H100": 8}, "c", weight=4),
    }
    usage = holding(queues, job("h", "heavy", 8), job("w", "weighted", 8), job("l", "light", 1))
    # CPU has no quota: its total is what the cohort uses (64 + 64 + 8 cores).
    assert dominant_share("heavy", queues, usage) == pytest.approx(max(8 / 24, 64 / 136))
    assert dominant_share("weighted", queues, usage) == pytest.approx(64 / 136 / 4)
    assert dominant_share("light", queues, usage) == pytest.approx(max(1 / 24, 8 / 136))
    pending = [
        job("p-heavy", "heavy", 1, created=1),
        job("p-light-new", "light", 1, created=3),
        job("p-light-old", "light", 1, created=2),
        job("p-weighted", "weighted", 1, created=0),
        job("p-urgent", "heavy", 1, priority=1, created=5),
    ]
    order = [w.key for w in fair_order(pending, queues, usage)]
    assert order == ["p-urgent", "p-light-old", "p-light-new", "p-weighted", "p-heavy"]


def test_dominant_share_takes_the_largest_resource_share() -> None:
    queues = {"a": QueueSpec("a", {"*": 10}, "c"), "b": QueueSpec("b", {"*": 10}, "c")}
    cpu_heavy = WorkloadInfo("x", "a", Demand(gpu=1, cpu=30))
    gpu_heavy = WorkloadInfo("y", "b", Demand(gpu=5, cpu=10))
    usage = Usage().add(cpu_heavy, "*").add(gpu_heavy, "*")
    assert dominant_share("a", queues, usage) == pytest.approx(30 / 40)
    assert dominant_share("b", queues, usage) == pytest.approx(max(5 / 20, 10 / 40))
    assert dominant_share("a", queues, usage, capacity={"cpu": 300}) == pytest.approx(30 / 300)
    assert dominant_share("missing", queues, usage) == float("inf")
