"""One scheduling cycle by example: quota and placement together, preemption, gangs, backfill.

Each test builds a small fleet, binds what runs on it (``Holder``), hands the cycle what
waits (``Candidate``) and checks the decisions it returns: which keys start and where,
which are evicted and by whom, and the "why pending" line of the others. ``advance``
plays the runtime between cycles: it binds the starts and marks the evicted as stopping.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import pytest

from aiplane.policies.scheduling import scorers
from aiplane.policies.scheduling.cycle import (
    Candidate,
    CycleResult,
    Evict,
    Holder,
    Start,
    Wait,
    schedule,
    usage_of,
)
from aiplane.policies.scheduling.fleet import Eligibility, Fleet, NodeShape, Placement, PodShape
from aiplane.policies.scheduling.fragmentation import TargetWorkload
from aiplane.policies.scheduling.quota import QueueSpec
from aiplane.policies.scheduling.scorers import BestFit, Scorer
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo

CPU, MEMORY = 64_000, 262_144  # per node: never the constraint in these tests


def fleet(*gpus: int, model: str = "H100") -> Fleet:
    """Nodes ``n0``, ``n1``, ... with that many GPUs each."""
    return Fleet([NodeShape(f"n{i}", CPU, MEMORY, g, model) for i, g in enumerate(gpus)])


def cand(
    key: str,
    queue: str = "team-a",
    pods: int = 1,
    gpus: int = 8,
    milli: int = 1000,
    priority: int = 0,
    created: float = 0.0,
    **kw: object,
) -> Candidate:
    """A gang of ``pods`` pods of ``gpus`` GPUs (``milli`` of each) whose demand is their total."""
    shapes = tuple(PodShape(f"{key}-{i}", 1000, 1024, gpus, milli) for i in range(pods))
    demand = Demand(gpu=pods * gpus * milli / 1000, cpu=pods)
    workload = WorkloadInfo(key, queue, demand, priority, created, gang_size=pods)
    return Candidate(workload, shapes, **kw)  # type: ignore[arg-type]


def whole(node: int, gpus: int = 8, first: int = 0) -> Placement:
    return Placement(node, tuple(range(first, first + gpus)))


def hold(
    f: Fleet, c: Candidate, placements: Sequence[Placement], flavor: str | None = "*", **kw: bool
) -> Holder:
    """``c`` running where ``placements`` say: its pods are bound on ``f``."""
    for pod, placement in zip(c.pods, placements, strict=True):
        f.bind(pod, placement)
    return Holder(c.workload, flavor, tuple(zip(c.pods, placements, strict=True)), **kw)


def run(
    f: Fleet,
    queues: dict[str, QueueSpec],
    holders: Sequence[Holder],
    candidates: Sequence[Candidate],
    scorer: Scorer | None = None,
    **kw: object,
) -> CycleResult:
    return schedule(
        f,
        queues,
        holders,
        candidates,
        scorer or BestFit(),
        np.random.default_rng(0),
        **kw,  # type: ignore[arg-type]
    )


def advance(
    f: Fleet, holders: Sequence[Holder], result: CycleResult, candidates: Sequence[Candidate]
) -> list[Holder]:
    """What runs after the runtime applied ``result``: starts bound on ``f``, victims stopping."""
    by_key = {c.key: c for c in candidates}
    evicted = {e.key for e in result.evictions}
    out = [
        Holder(
            h.workload, h.flavor, h.pods, evicting=h.evicting or h.key in evicted, preemptible=h.preemptible
        )
        for h in holders
    ]
    for s in result.starts:
        out.append(hold(f, by_key[s.key], s.placements, s.flavor))
    return out


def drain(f: Fleet, holders: Sequence[Holder], keys: Iterable[str]) -> list[Holder]:
    """``holders`` without ``keys``, whose pods are unbound from ``f`` (they stopped)."""
    gone = set(keys)
    for h in holders:
        if h.key in gone:
            for pod, placement in h.pods:
                f.unbind(pod, placement)
    return [h for h in holders if h.key not in gone]


def started(result: CycleResult) -> dict[str, tuple[Placement, ...]]:
    return {s.key: s.placements for s in result.starts}


def waits(result: CycleResult) -> dict[str, str]:
    return {w.key: w.reason for w in result.waits}


def cohort(a: float = 8, b: float = 8) -> dict[str, QueueSpec]:
    return {
        "team-a": QueueSpec("team-a", {"*": a}, "research"),
        "team-b": QueueSpec("team-b", {"*": b}, "research"),
    }


ROOMY = {"team-a": QueueSpec("team-a", {"*": 1000})}  # quota never the constraint


# -- 1. borrowing and reclaim across cycles -----------------------------------------------------------
def test_a_lender_reclaims_its_quota_over_three_cycles() -> None:
    queues, f = cohort(), fleet(8, 8)
    a1, a2 = cand("a1", created=0), cand("a2", created=1)
    first = run(f, queues, [], [a1, a2])
    assert first.starts == [
        Start("a1", "*", 0.0, (whole(0),), "queue team-a: 8 GPU fit its quota (quota 0/8 in use); on n0"),
        Start(
            "a2",
            "*",
            8.0,
            (whole(1),),
            "queue team-a: 8 GPU, 8 borrowed from cohort research (quota 8/8 in use); on n1",
        ),
    ]
    assert first.evictions == first.waits == []
    holders = advance(f, [], first, [a1, a2])

    # team-b's own work arrives: it takes back the 8 GPUs team-a borrowed (the newest workload)
    b1 = cand("b1", "team-b", created=2)
    second = run(f, queues, holders, [b1])
    assert second.starts == []
    assert second.evictions == [Evict("a2", "b1", "preempted by b1 (priority 0, quota)")]
    assert second.waits == [
        Wait(
            "b1",
            "queue team-b: GPU quota 0/8 in use, needs 8 "
            "(8 of it lent within cohort research, borrowing: cohort research has 0 idle); "
            "preempting 1 workload(s) frees 8 GPU, reclaiming quota lent within cohort research; "
            "preempting 1 workload(s): a2",
            "preemption",
        )
    ]
    holders = advance(f, holders, second, [b1])
    assert [h.key for h in holders if h.evicting] == ["a2"]

    # a2 is stopping (it still holds n1): b1 waits, evicting nothing more
    third = run(f, queues, holders, [b1], preempting={"b1": ["a2"]})
    assert (third.starts, third.evictions) == ([], [])
    assert third.waits == [Wait("b1", "waiting for 1 preempted workload(s) to stop: a2", "preemption")]
    # without being told what it preempted, the quota plan names the stopping a2 again: wait too
    again = run(f, queues, holders, [b1])
    assert (again.starts, again.evictions) == ([], [])
    assert waits(again)["b1"].endswith("; waiting for them to stop")

    # a2 is gone: b1 starts on its node, within its own quota
    holders = drain(f, holders, ["a2"])
    fourth = run(f, queues, holders, [b1], preempting={"b1": ["a2"]})
    assert fourth.starts == [
        Start("b1", "*", 0.0, (whole(1),), "queue team-b: 8 GPU fit its quota (quota 0/8 in use); on n1")
    ]
    assert fourth.evictions == fourth.waits == []


def test_reclaimed_quota_goes_to_the_lender_not_back_to_its_higher_priority_borrower() -> None:
    """b1 (priority 0) takes back the quota team-a (priority 5) borrowed. Once a2 is gone both
    wait, and a2, which outranks b1, would be tried first and borrow the idle quota again,
    to be reclaimed again the cycle after, and so on. A preemptor whose victims are gone
    has the first turn."""
    queues, f = cohort(), fleet(8, 8)
    a2 = cand("a2", priority=5, created=1)
    holders = [hold(f, cand("a1", priority=5, created=0), [whole(0)]), hold(f, a2, [whole(1)])]
    b1 = cand("b1", "team-b", created=2)
    first = run(f, queues, holders, [b1])
    assert [(e.key, e.by) for e in first.evictions] == [("a2", "b1")]

    holders = drain(f, holders, ["a2"])  # stopped, and back in line
    second = run(f, queues, holders, [a2, b1], preempting={"b1": ["a2"]})
    assert started(second) == {"b1": (whole(1),)}
    assert second.evictions == []
    assert waits(second) == {
        "a2": "queue team-a: GPU quota 8/8 in use, needs 8 "
        "(borrowing: cohort research has 0 idle); preemption cannot make room"
    }
    # without it, a2 goes first and borrows again: the loop this guards against
    loop = run(f, queues, holders, [a2, b1])
    assert set(started(loop)) == {"a2"}


def test_a_reclaim_never_names_a_workload_started_in_the_same_cycle() -> None:
    """Both teams submit at once: team-a's older gangs come first and the second borrows
    team-b's idle quota; team-b's job then reclaims from it. A workload started in this
    cycle is no Holder: it may not be evicted (nothing is undone within a cycle)."""
    queues, f = cohort(), fleet(8, 8)
    a1, a2, b1 = cand("a1", created=0), cand("a2", created=1), cand("b1", "team-b", created=2)
    result = run(f, queues, [], [a1, a2, b1])
    assert result.evictions == []
    assert set(started(result)) == {"a1", "a2"}
    assert "b1" in waits(result)


def test_a_holder_that_may_not_be_preempted_is_not_reclaimed() -> None:
    queues, f = cohort(), fleet(8, 8)
    holders = [
        hold(f, cand("a1", created=0), [whole(0)]),
        hold(f, cand("a2", created=1), [whole(1)], preemptible=False),  # borrows team-b's 8
    ]
    result = run(f, queues, holders, [cand("b1", "team-b", created=2)])
    assert [e.key for e in result.evictions if e.key == "a2"] == []


def test_a_reclaim_that_cannot_place_the_preemptor_evicts_nothing() -> None:
    """team-b's job may only run on a tainted-for-it node set that does not exist here: the
    reclaim would stop a2 for nothing, and a2's GPUs would sit idle."""
    queues, f = cohort(), fleet(8, 8)
    holders = [hold(f, cand("a1", created=0), [whole(0)]), hold(f, cand("a2", created=1), [whole(1)])]
    nowhere = Eligibility(np.ones(2, dtype=bool)).restricted(np.zeros(2, dtype=bool), "untolerated taint x")
    result = run(f, queues, holders, [cand("b1", "team-b", created=2, eligible=(nowhere,))])
    assert result.evictions == []
    assert "2 untolerated taint x" in waits(result)["b1"]


# -- 2. priority preemption on nodes -----------------------------------------------------------------
def test_node_preemption_takes_lowest_priority_then_newest() -> None:
    f = fleet(8, 8, 8)
    holders = [
        hold(f, cand("lo1", gpus=4, created=1), [whole(0, 4)]),
        hold(f, cand("lo2", gpus=4, created=2), [whole(0, 4, first=4)]),
        hold(f, cand("mid", gpus=8, priority=1, created=0), [whole(1)]),
        hold(f, cand("eq", gpus=4, priority=5, created=0), [whole(2, 4)]),
        hold(f, cand("lo3", gpus=4, created=3), [whole(2, 4, first=4)]),
    ]
    hi = cand("hi", pods=2, gpus=4, priority=5, created=9)
    result = run(f, ROOMY, holders, [hi])
    # lo3 (newest of the lowest) frees half of n2, lo2 half of n0: both pods fit, mid and lo1 stay
    assert result.evictions == [
        Evict("lo3", "hi", "preempted by hi (priority 5 > 0)"),
        Evict("lo2", "hi", "preempted by hi (priority 5 > 0)"),
    ]
    assert result.starts == []
    assert waits(result) == {
        "hi": "queue team-a: 8 GPU fit its quota (quota 24/1000 in use); preempting 2 workload(s): lo3, lo2"
    }

    # once they are gone, hi starts where they were
    holders = advance(f, holders, result, [hi])
    again = run(f, ROOMY, holders, [hi], preempting={"hi": ["lo3", "lo2"]})
    assert again.evictions == [] and waits(again)["hi"].startswith("waiting for 2 preempted")
    holders = drain(f, holders, ["lo3", "lo2"])
    last = run(f, ROOMY, holders, [hi], preempting={"hi": ["lo3", "lo2"]})
    assert sorted(started(last)["hi"], key=lambda p: p.node) == [whole(0, 4, first=4), whole(2, 4, first=4)]


def test_node_preemption_drops_victims_the_fit_does_not_need() -> None:
    f = fleet(8, 8)
    holders = [
        hold(f, cand("tiny", gpus=1, created=9), [whole(0, 1)]),  # lowest priority, tried first
        hold(f, cand("eq", gpus=7, priority=5), [whole(0, 7, first=1)]),
        hold(f, cand("mid1", gpus=4, priority=1, created=1), [whole(1, 4)]),
        hold(f, cand("mid2", gpus=4, priority=1, created=2), [whole(1, 4, first=4)]),
    ]
    result = run(f, ROOMY, holders, [cand("hi", pods=2, gpus=4, priority=5)])
    # tiny's one GPU does not help a 4-GPU pod: only n1's two workloads are evicted
    assert [(e.key, e.by) for e in result.evictions] == [("mid2", "hi"), ("mid1", "hi")]
    assert result.starts == []


def test_node_preemption_never_takes_equal_or_higher_priority() -> None:
    f = fleet(8, 8)
    holders = [
        hold(f, cand("eq", gpus=8, priority=5), [whole(0)]),
        hold(f, cand("top", gpus=8, priority=9), [whole(1)]),
    ]
    result = run(f, ROOMY, holders, [cand("hi", pods=2, gpus=4, priority=5)])
    assert (result.evictions, result.starts) == ([], [])
    assert waits(result)["hi"].endswith("gang of 2 pods, 0 fit; 0/2 nodes fit: 2 too few free GPUs")


def test_node_preemption_skips_stopping_and_unpreemptible_holders() -> None:
    f = fleet(8, 8, 8)
    holders = [
        hold(f, cand("stopping", gpus=8, created=3), [whole(0)], evicting=True),
        hold(f, cand("pinned", gpus=8, created=2), [whole(1)], flavor=None, preemptible=False),
        hold(f, cand("lo", gpus=8, created=1), [whole(2)]),
    ]
    result = run(f, ROOMY, holders, [cand("hi", gpus=8, priority=1)])
    assert result.evictions == [Evict("lo", "hi", "preempted by hi (priority 1 > 0)")]


# -- 3. gangs are all or nothing ---------------------------------------------------------------------
def test_a_gang_only_three_nodes_could_take_does_not_start_in_part() -> None:
    f = fleet(8, 8, 8, 8)
    holders = [hold(f, cand("busy", gpus=1), [whole(3, 1)])]  # same priority: not a victim
    gang = cand("gang", pods=4, gpus=8)
    result = run(f, ROOMY, holders, [gang])
    assert (result.starts, result.evictions) == ([], [])
    assert result.waits == [
        Wait(
            "gang",
            "queue team-a: 32 GPU fit its quota (quota 1/1000 in use); "
            "gang of 4 pods, 3 fit; 0/4 nodes fit: 4 too few free GPUs",
        )
    ]
    # nothing of the gang was bound: a 1-GPU job behind it still finds all three free nodes
    small = cand("small", gpus=8, created=1)
    after = run(f, ROOMY, holders, [gang, small])
    assert started(after) == {"small": (whole(0),)}


# -- 4. eligibility ----------------------------------------------------------------------------------
def tainted(n: int, allowed: Sequence[int], reason: str = "untolerated taint x") -> Eligibility:
    ok = np.zeros(n, dtype=bool)
    ok[list(allowed)] = True
    return Eligibility(np.ones(n, dtype=bool)).restricted(ok, reason)


def test_pods_land_only_on_eligible_nodes_and_waits_count_the_rejections() -> None:
    f = fleet(8, 8, 8)
    holders = [hold(f, cand("half", gpus=4), [whole(2, 4)])]
    only_n2 = tainted(3, [2])
    fits = run(f, ROOMY, holders, [cand("small", gpus=4, eligible=(only_n2,))])
    assert started(fits) == {"small": (whole(2, 4, first=4),)}  # n0 and n1 are empty, yet not eligible

    big = run(f, ROOMY, holders, [cand("big", gpus=8, eligible=(only_n2,))])
    assert big.starts == []
    assert waits(big)["big"].endswith("; 0/3 nodes fit: 2 untolerated taint x, 1 too few free GPUs")


def test_node_preemption_only_looks_at_eligible_nodes() -> None:
    f = fleet(8, 8)
    holders = [
        hold(f, cand("lo-n0", gpus=8, created=5), [whole(0)]),  # newest, lowest: but not where hi may go
        hold(f, cand("lo-n1", gpus=8, created=1), [whole(1)]),
    ]
    hi = cand("hi", gpus=8, priority=1, eligible=(tainted(2, [1]),))
    result = run(f, ROOMY, holders, [hi])
    assert [e.key for e in result.evictions] == ["lo-n1"]


def test_each_pod_of_a_gang_has_its_own_eligibility() -> None:
    f = fleet(8, 8, 8)
    gang = cand("gang", pods=2, gpus=4, eligible=(tainted(3, [1]), tainted(3, [2])))
    placements = started(run(f, ROOMY, [], [gang]))["gang"]
    assert [p.node for p in placements] == [1, 2]


# -- 5. fractional GPUs ------------------------------------------------------------------------------
HALF = PodShape("half", 1000, 1024, 1, 500)
TARGET = TargetWorkload.from_pods([HALF, PodShape("one", 1000, 1024, 1, 1000)])


@pytest.mark.parametrize("name", ["aiplane", "best-fit"])
def test_two_half_gpu_pods_share_one_device(name: str) -> None:
    queues = {"team-a": QueueSpec("team-a", {"*": 1})}
    f = fleet(2, 2)
    s1, s2 = cand("s1", gpus=1, milli=500, created=0), cand("s2", gpus=1, milli=500, created=1)
    scorer = scorers.make([name], TARGET)[0]
    result = run(f, queues, [], [s1, s2], scorer)
    assert started(result) == {"s1": (Placement(0, (0,)),), "s2": (Placement(0, (0,)),)}
    assert [s.reason for s in result.starts] == [
        "queue team-a: 0.5 GPU fit its quota (quota 0/1 in use); on n0",
        "queue team-a: 0.5 GPU fit its quota (quota 0.5/1 in use); on n0",
    ]
    holders = advance(f, [], result, [s1, s2])
    assert usage_of(holders).gpus("team-a", "*") == 1.0
    assert f.gpu_free.tolist() == [[0, 1000], [1000, 1000]]
    # the quota is full at 0.5 + 0.5, though three devices are free
    third = run(f, queues, holders, [cand("s3", gpus=1, milli=500, created=2)], scorer)
    assert third.starts == []
    assert waits(third)["s3"] == (
        "queue team-a: GPU quota 1/1 in use, needs 0.5 (no cohort to borrow from); "
        "preemption cannot make room"
    )


# -- 6. bounded backfill -----------------------------------------------------------------------------
def backfill_state() -> tuple[Fleet, list[Holder]]:
    """Three nodes kept partly used by small jobs: n0 1 GPU, n1 2, n2 3."""
    f = fleet(8, 8, 8)
    holders = [
        hold(f, cand("s0", gpus=1), [whole(0, 1)]),
        hold(f, cand("s1", gpus=2), [whole(1, 2)]),
        hold(f, cand("s2", gpus=3), [whole(2, 3)]),
    ]
    return f, holders


def test_small_jobs_pass_a_gang_until_it_has_waited_long_enough() -> None:
    f, holders = backfill_state()
    gang = cand("gang", pods=2, gpus=8, created=0, waiting_s=10)
    small = cand("small", gpus=1, created=5)
    result = run(f, ROOMY, holders, [gang, small])
    assert result.reservations == {}
    assert waits(result) == {
        "gang": "queue team-a: 16 GPU fit its quota (quota 6/1000 in use); "
        "gang of 2 pods, 0 fit; 0/3 nodes fit: 3 too few free GPUs"
    }
    assert [p.node for p in started(result)["small"]] == [2]  # best fit: the fullest node


def test_a_starving_gang_reserves_the_nodes_closest_to_free_then_starts() -> None:
    f, holders = backfill_state()
    gang = cand("gang", pods=2, gpus=8, created=0, waiting_s=300)
    small = cand("small", gpus=1, created=5)
    medium = cand("medium", gpus=5, created=6)
    result = run(f, ROOMY, holders, [gang, small, medium])
    assert result.reservations == {"gang": (0, 1)}
    gang_wait = next(w for w in result.waits if w.key == "gang")
    assert gang_wait.reserved == (0, 1)
    assert gang_wait.reason.endswith("; waited 300s, reserved n0, n1")
    # backfill only beside the reservation: small goes to n2, medium fits nowhere else
    assert started(result) == {"small": (Placement(2, (3,)),)}
    assert waits(result)["medium"].endswith("; 0/3 nodes fit: 2 reserved for gang, 1 too few free GPUs")

    # next cycle: the reservation holds even for a job that would fit n0 now
    holders = advance(f, holders, result, [gang, small, medium])
    later = run(f, ROOMY, holders, [gang, cand("tiny", gpus=1, created=7)], reservations=result.reservations)
    assert later.reservations == {"gang": (0, 1)}
    assert started(later) == {"tiny": (Placement(2, (4,)),)}

    # the reserved nodes drain: the gang starts there and gives the reservation back
    holders = drain(f, holders, ["s0", "s1"])
    done = run(f, ROOMY, holders, [gang], reservations=later.reservations)
    assert sorted(p.node for p in started(done)["gang"]) == [0, 1]
    assert done.reservations == {}


def test_a_reservation_takes_the_nodes_whose_oldest_workload_is_youngest() -> None:
    """Lengths are heavy-tailed: a job that has run long is likely to run on. n0's job is
    the oldest; n2 has most free, but holds an old job beside a young one; n1's one job
    is the youngest, so n1 is held, though it has least free."""
    f = fleet(8, 8, 8)
    holders = [
        hold(f, cand("old", gpus=3, created=0), [whole(0, 3)]),
        hold(f, cand("young", gpus=5, created=100), [whole(1, 5)]),
        hold(f, cand("young2", gpus=1, created=100), [whole(2, 1)]),
        hold(f, cand("older", gpus=1, created=10), [whole(2, 1, first=1)]),
    ]
    gang = cand("gang", gpus=8, created=200, waiting_s=300)
    result = run(f, ROOMY, holders, [gang])
    assert result.reservations == {"gang": (1,)}
    # no ages to go by: most free first
    same = [replace(h, workload=replace(h.workload, created=0)) for h in holders]
    assert run(f, ROOMY, same, [gang]).reservations == {"gang": (2,)}


def test_a_reservation_binds_its_priority_and_below_but_not_what_outranks_it() -> None:
    """kube-scheduler's rule for nominated pods: higher priority passes a reservation."""
    f, holders = backfill_state()
    gang = cand("gang", pods=2, gpus=8, created=0, waiting_s=300)
    first = run(f, ROOMY, holders, [gang])
    assert first.reservations == {"gang": (0, 1)}
    peer = cand("peer", gpus=6, created=5)  # fits only n1 (6 free): reserved
    urgent = cand("urgent", gpus=6, created=6, priority=10)
    result = run(f, ROOMY, holders, [gang, peer, urgent], reservations=first.reservations)
    assert started(result) == {"urgent": (Placement(1, (2, 3, 4, 5, 6, 7)),)}
    assert waits(result)["peer"].endswith("; 0/3 nodes fit: 2 reserved for gang, 1 too few free GPUs")
    assert result.reservations == {"gang": (0, 1)}  # the gang keeps it, and waits on

    # nor does a reservation shield a lower-priority holder from the outranking one's
    # preemption: with n0 and n1 full and n2's job not preemptible, the victim is on n0
    f, holders = backfill_state()
    holders = [
        *holders[:2],
        replace(holders[2], preemptible=False),
        hold(f, cand("f0", gpus=6), [whole(0, 6, first=1)]),
        hold(f, cand("f1", gpus=6), [whole(1, 6, first=2)]),
    ]
    again = run(f, ROOMY, holders, [gang, urgent], reservations={"gang": (0, 1)})
    assert [(e.key, e.by) for e in again.evictions] == [("f0", "urgent")]


def test_a_reservation_is_not_made_for_a_gang_no_node_could_ever_take() -> None:
    f, holders = backfill_state()
    huge = cand("huge", pods=4, gpus=8, waiting_s=1000)  # 4 x 8 GPUs on 3 nodes
    result = run(f, ROOMY, holders, [huge, cand("small", gpus=1, created=5)])
    assert result.reservations == {}
    assert "small" in started(result)


@pytest.mark.parametrize(("limit", "expected"), [(1, {"g1": (0, 1)}), (2, {"g1": (0, 1), "g2": (2, 3)})])
def test_only_max_reservations_gangs_hold_reservations(
    limit: int, expected: dict[str, tuple[int, ...]]
) -> None:
    f = fleet(8, 8, 8, 8)
    holders = [hold(f, cand(f"s{i}", gpus=1), [whole(i, 1)]) for i in range(4)]
    g1 = cand("g1", pods=2, gpus=8, created=0, waiting_s=400)
    g2 = cand("g2", pods=2, gpus=8, created=1, waiting_s=400)
    result = run(f, ROOMY, holders, [g1, g2], max_reservations=limit)
    assert result.reservations == expected
    assert {w.key: w.reserved for w in result.waits} == {"g1": (0, 1), "g2": expected.get("g2", ())}


def test_reservations_of_workloads_no_longer_waiting_are_dropped() -> None:
    f, holders = backfill_state()
    result = run(f, ROOMY, holders, [cand("small", gpus=1)], reservations={"gone": (0, 1)})
    assert result.reservations == {}
    assert [p.node for p in started(result)["small"]] == [2]  # n0 and n1 are free to use again


# -- 7. admitted and unqueued candidates ------------------------------------------------------------
def test_admitted_candidates_are_placed_before_new_admissions() -> None:
    queues = {"team-a": QueueSpec("team-a", {"*": 8}), "team-b": QueueSpec("team-b", {"*": 8})}
    f = fleet(8)
    old = cand("old", priority=0, created=10, admitted=True)
    holders = [Holder(old.workload, "*")]  # its quota is held, its pods not placed yet
    new = cand("new", "team-b", priority=9, created=0)
    result = run(f, queues, holders, [new, old])
    assert result.starts == [Start("old", "*", 0.0, (whole(0),), "on n0")]
    assert waits(result) == {
        "new": "queue team-b: 8 GPU fit its quota (quota 0/8 in use); 0/1 nodes fit: 1 too few free GPUs"
    }
    assert result.evictions == []


def test_the_rest_of_a_partly_bound_gang_keeps_its_quota_key() -> None:
    f = fleet(8, 8)
    gang = cand("gang", pods=2, gpus=8, admitted=True)
    holders = [hold(f, Candidate(gang.workload, gang.pods[:1]), [whole(0)])]
    rest = Candidate(gang.workload, gang.pods[1:], admitted=True)
    result = run(f, ROOMY, holders, [rest])
    assert result.starts == [Start("gang", "*", 0.0, (whole(1),), "on n1")]


def test_unqueued_candidates_are_placed_without_touching_quota() -> None:
    queues = {"team-a": QueueSpec("team-a", {"*": 1})}
    f = fleet(2)
    replica = cand("replica", gpus=1, queued=False, created=5)
    job = cand("job", gpus=1, created=0)
    result = run(f, queues, [], [job, replica])
    assert result.starts == [  # equal priority: the older first, whether it takes quota or not
        Start(
            "job",
            "*",
            0.0,
            (Placement(0, (0,)),),
            "queue team-a: 1 GPU fit its quota (quota 0/1 in use); on n0",
        ),
        Start("replica", None, 0.0, (Placement(0, (1,)),), "on n0"),
    ]
    holders = advance(f, [], result, [job, replica])
    assert usage_of(holders).gpus("team-a", "*") == 1.0  # the replica counts against nothing


# -- 8. the input fleet is not changed --------------------------------------------------------------
def test_schedule_does_not_change_the_fleet_it_is_given() -> None:
    f = fleet(8, 8, 8)
    holders = [
        hold(f, cand("lo", gpus=8), [whole(0)]),
        hold(f, cand("half", gpus=1, milli=500), [Placement(1, (0,))]),
    ]
    before = (
        f.gpu_free.copy(),
        f.cpu_free.copy(),
        f.memory_free.copy(),
        {k: v.copy() for k, v in f.tags.items()},
    )
    candidates = [
        cand("hi", pods=2, gpus=8, priority=1, waiting_s=1000),
        cand("s", gpus=1, milli=500, created=1),
        cand("t", gpus=4, created=2),
    ]
    result = run(f, ROOMY, holders, candidates, scorers.make(["aiplane"], TARGET)[0])
    assert result.starts and result.evictions  # it did bind and preempt on its copies
    assert (f.gpu_free == before[0]).all() and (f.cpu_free == before[1]).all()
    assert (f.memory_free == before[2]).all()
    assert f.tags.keys() == before[3].keys() and all((f.tags[k] == v).all() for k, v in before[3].items())
