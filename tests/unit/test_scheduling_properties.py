"""Properties of quota admission and preemption, over random queues, cohorts and workloads.

Each property is checked against this file's own restatement of the rules (``Ledger``:
what each queue uses per quota key, and whether that state is allowed), not against the
code's arithmetic. GPU amounts are multiples of 0.5, so sums are exact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from aiplane.policies.scheduling.gpumodel import spec_matches
from aiplane.policies.scheduling.outcome import Mode, Outcome
from aiplane.policies.scheduling.preemption import plan_preemption
from aiplane.policies.scheduling.quota import QueueSpec, Usage, admit, dominant_share, fair_order
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo

KEYS = ("A100", "H100", "*")
MODELS = (None, "A100", "H100", "a100", "A100|H100", "H100|A100", "V100")
# A crowded cluster: one cohort, most queues lend and borrow, demands that match: where
# preemption and reclaim happen.
CROWDED_KEYS = ("H100", "*")
CROWDED_MODELS = (None, "H100", "h100", "A100|H100")
MOSTLY = st.sampled_from([True, True, True, False])
PROPERTY = settings(max_examples=200, deadline=None)


def halves(lo: int, hi: int) -> st.SearchStrategy[float]:
    """Multiples of 0.5 from ``lo/2`` to ``hi/2``."""
    return st.integers(lo, hi).map(lambda n: n / 2)


@st.composite
def queue_sets(draw: st.DrawFn, crowded: bool = False) -> dict[str, QueueSpec]:
    queues = {}
    flag = MOSTLY if crowded else st.booleans()
    for i in range(draw(st.integers(2 if crowded else 1, 4))):
        keys = draw(
            st.lists(st.sampled_from(CROWDED_KEYS if crowded else KEYS), min_size=1, max_size=3, unique=True)
        )
        name = f"q{i}"
        queues[name] = QueueSpec(
            name,
            {k: draw(halves(0, 16)) for k in keys},
            draw(st.sampled_from(["c", "c", "c", "d" if not crowded else "c", None])),
            weight=draw(st.sampled_from([1.0, 2.0])),
            borrowing=draw(flag),
            lending=draw(flag),
            borrowing_limit=draw(st.none() | halves(0, 8)) if draw(flag) else None,
        )
    return queues


@st.composite
def workload_lists(
    draw: st.DrawFn, queues: Mapping[str, QueueSpec], size: int = 14, crowded: bool = False
) -> list[WorkloadInfo]:
    names = sorted(queues)
    models = CROWDED_MODELS if crowded else MODELS
    return [
        WorkloadInfo(
            f"w{i}",
            draw(st.sampled_from(names)),
            Demand(
                gpu=draw(halves(0, 12 if crowded else 16)),
                cpu=draw(st.integers(0, 64)),
                gpu_model=draw(st.sampled_from(models)),
            ),
            priority=draw(st.integers(0, 3)),
            created=float(i),
            gang_size=draw(st.integers(1, 8)),
        )
        for i in range(draw(st.integers(size // 2 if crowded else 0, size)))
    ]


@st.composite
def scenarios(draw: st.DrawFn, crowded: bool = False) -> tuple[dict[str, QueueSpec], list[WorkloadInfo]]:
    queues = draw(queue_sets(crowded))
    return queues, draw(workload_lists(queues, size=20 if crowded else 14, crowded=crowded))


ANY_SCENARIO = st.booleans().flatmap(scenarios)


# ---- the rules, restated ----


def keys_for(demand: Demand, spec: QueueSpec) -> list[str]:
    named = [k for k in spec.quota if k != "*" and demand.gpu_model and spec_matches(demand.gpu_model, k)]
    return named + (["*"] if "*" in spec.quota else [])


@dataclass
class Ledger:
    """GPUs used per (queue, quota key), kept by the test from whole demands only."""

    queues: Mapping[str, QueueSpec]
    used: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    def plus(self, queue: str, key: str, gpus: float) -> Ledger:
        new = Ledger(self.queues, defaultdict(float, self.used))
        new.used[queue, key] += gpus
        return new

    def borrowed(self, queue: str, key: str) -> float:
        return max(0.0, self.used[queue, key] - self.queues[queue].quota.get(key, 0.0))

    def violations(self) -> list[str]:
        """Why this state breaks the quota rules (empty when it keeps them)."""
        bad = []
        keys = {k for q in self.queues.values() for k in q.quota} | {k for _, k in self.used}
        for key in keys:
            for spec in self.queues.values():
                b = self.borrowed(spec.name, key)
                if b and (spec.cohort is None or not spec.borrowing):
                    bad.append(f"{spec.name} borrows {b} {key} without a cohort or borrowing")
                if spec.borrowing_limit is not None and b > spec.borrowing_limit:
                    bad.append(f"{spec.name} borrows {b} {key} over its limit {spec.borrowing_limit}")
            for cohort in {q.cohort for q in self.queues.values()} - {None}:
                members = [q for q in self.queues.values() if q.cohort == cohort]
                lent = sum(self.borrowed(q.name, key) for q in members)
                idle = sum(
                    max(0.0, q.quota.get(key, 0.0) - self.used[q.name, key]) for q in members if q.lending
                )
                if lent > idle:
                    bad.append(f"cohort {cohort} borrows {lent} {key} of {idle} idle lending quota")
                total = sum(self.used[q.name, key] for q in members)
                if total > sum(q.quota.get(key, 0.0) for q in members):
                    bad.append(f"cohort {cohort} uses {total} {key} over its quota")
        return bad


def ledger_of(queues: Mapping[str, QueueSpec], usage: Usage) -> Ledger:
    ledger = Ledger(queues)
    for entry in usage.admitted:
        if entry.flavor is not None:
            ledger.used[entry.workload.queue, entry.flavor] += entry.workload.demand.gpu
    return ledger


def fill(queues: Mapping[str, QueueSpec], workloads: Iterable[WorkloadInfo]) -> Usage:
    """Admit what fits, in order, as a runtime would (no preemption)."""
    usage = Usage()
    for w in workloads:
        outcome = admit(w, queues, usage)
        if outcome.mode == Mode.Fit:
            usage = usage.add(w, outcome.flavor)
    return usage


# ---- properties ----


@PROPERTY
@given(ANY_SCENARIO)
def test_quota_is_never_exceeded_except_by_borrowing_idle_cohort_quota(
    scenario: tuple[dict[str, QueueSpec], list[WorkloadInfo]],
) -> None:
    queues, workloads = scenario
    usage, ledger = Usage(), Ledger(queues)
    borrowed: dict[tuple[str, str], float] = defaultdict(float)  # summed from the outcomes
    for w in workloads:
        outcome = admit(w, queues, usage)
        if outcome.mode != Mode.Fit:
            continue
        usage = usage.add(w, outcome.flavor)
        if w.demand.gpu == 0:
            assert (outcome.flavor, outcome.borrowed) == (None, 0)
            continue
        assert outcome.flavor is not None
        ledger = ledger.plus(w.queue, outcome.flavor, w.demand.gpu)
        borrowed[w.queue, outcome.flavor] += outcome.borrowed
        for (queue, key), used in ledger.used.items():
            spec = queues[queue]
            assert used <= spec.quota.get(key, 0.0) + borrowed[queue, key]
            if borrowed[queue, key]:
                assert spec.cohort is not None and spec.borrowing
            if spec.borrowing_limit is not None:
                assert borrowed[queue, key] <= spec.borrowing_limit
            assert usage.gpus(queue, key) == used
        assert ledger.violations() == []


@PROPERTY
@given(ANY_SCENARIO)
def test_a_gang_is_admitted_whole_or_not_at_all(
    scenario: tuple[dict[str, QueueSpec], list[WorkloadInfo]],
) -> None:
    """Fit exactly when the whole demand keeps the quota rules; never for a part of it."""
    queues, workloads = scenario
    usage = Usage()
    for w in workloads:
        ledger = ledger_of(queues, usage)
        outcome = admit(w, queues, usage)
        if w.demand.gpu == 0:
            assert outcome == Outcome(Mode.Fit, ("no GPUs requested",))
            usage = usage.add(w, None)
            continue
        allowed = [
            k
            for k in keys_for(w.demand, queues[w.queue])
            if not ledger.plus(w.queue, k, w.demand.gpu).violations()
        ]
        assert (outcome.mode == Mode.Fit) == bool(allowed), outcome.reason
        if outcome.mode != Mode.Fit:
            continue
        assert outcome.flavor in allowed
        after = ledger.plus(w.queue, outcome.flavor, w.demand.gpu)
        assert outcome.borrowed == after.borrowed(w.queue, outcome.flavor) - ledger.borrowed(
            w.queue, outcome.flavor
        )
        if any(
            ledger.plus(w.queue, k, w.demand.gpu).borrowed(w.queue, k) == ledger.borrowed(w.queue, k)
            for k in allowed
        ):
            assert outcome.borrowed == 0  # own quota before borrowing
        usage = usage.add(w, outcome.flavor)
        # the usage holds each admitted gang's whole demand, nothing less
        assert (
            ledger_of(queues, usage).used[w.queue, outcome.flavor]
            == ledger.used[w.queue, outcome.flavor] + w.demand.gpu
        )


@PROPERTY
@given(
    lender_quota=halves(2, 16),
    borrower_quotas=st.tuples(halves(0, 4), halves(0, 4)),
    lender_used=halves(0, 4),
    borrows=st.lists(st.tuples(st.sampled_from(["b", "c"]), halves(1, 8)), min_size=1, max_size=6),
    lender_priority=st.integers(0, 3),
    data=st.data(),
)
def test_borrowed_quota_is_reclaimed_on_demand(
    lender_quota: float,
    borrower_quotas: tuple[float, float],
    lender_used: float,
    borrows: list[tuple[str, float]],
    lender_priority: int,
    data: st.DataObject,
) -> None:
    """A lender whose free quota is in use by borrowers gets it back by preempting them,
    whatever their priority, and then runs on its own quota."""
    queues = {
        "lender": QueueSpec("lender", {"H100": lender_quota}, "research"),
        "b": QueueSpec("b", {"H100": borrower_quotas[0]}, "research"),
        "c": QueueSpec("c", {"H100": borrower_quotas[1]}, "research"),
    }
    lender_used = min(lender_used, lender_quota - 0.5)
    # the lender's own running work outranks the newcomer, so only reclaim can make room
    first = (
        [WorkloadInfo("l0", "lender", Demand(gpu=lender_used, gpu_model="H100"), priority=9)]
        if lender_used
        else []
    )
    borrowers = [
        WorkloadInfo(f"{queue}{i}", queue, Demand(gpu=g, gpu_model="H100"), priority=9, created=i + 1)
        for i, (queue, g) in enumerate(borrows)
    ]
    usage = fill(queues, [*first, *borrowers])
    ledger = ledger_of(queues, usage)
    own_free = lender_quota - ledger.used["lender", "H100"]
    cohort_free = sum(q.quota["H100"] - ledger.used[q.name, "H100"] for q in queues.values())
    if cohort_free >= own_free:  # nothing borrowed from the lender: nothing to reclaim
        return
    need = data.draw(halves(int(cohort_free * 2) + 1, int(own_free * 2)), label="need")
    lender = WorkloadInfo(
        "l1", "lender", Demand(gpu=need, gpu_model="H100"), priority=lender_priority, created=99
    )

    outcome = admit(lender, queues, usage)
    assert outcome.mode == Mode.Preempt, outcome.reason
    assert outcome.victims
    held = {w.key: w for w in usage.workloads}
    for i, victim in enumerate(outcome.victims):  # from borrowers, and only while they borrow
        queue = held[victim].queue
        assert queue != "lender"
        assert ledger_of(queues, usage.without(outcome.victims[:i])).borrowed(queue, "H100") > 0
    after = admit(lender, queues, usage.without(outcome.victims))
    assert (after.mode, after.borrowed) == (Mode.Fit, 0)
    for victim in outcome.victims:
        rest = [v for v in outcome.victims if v != victim]
        assert admit(lender, queues, usage.without(rest)).mode != Mode.Fit


@PROPERTY
@given(scenarios(crowded=True), st.data())
def test_preemption_frees_exactly_what_is_needed(
    scenario: tuple[dict[str, QueueSpec], list[WorkloadInfo]], data: st.DataObject
) -> None:
    queues, workloads = scenario
    usage = fill(queues, workloads)
    preemptor = WorkloadInfo(
        "new",
        data.draw(st.sampled_from(sorted(queues)), label="queue"),
        Demand(
            gpu=data.draw(halves(1, 12), label="gpu"),
            gpu_model=data.draw(st.sampled_from(CROWDED_MODELS), label="model"),
        ),
        priority=data.draw(st.integers(0, 4), label="priority"),
        created=100.0,
    )
    spec = queues[preemptor.queue]
    outcome = admit(preemptor, queues, usage)
    held = {w.key: w for w in usage.workloads}
    planned = plan_preemption(preemptor, usage.workloads, queues, usage)

    if outcome.mode == Mode.Fit:
        assert planned == ()
        return
    if outcome.mode == Mode.NoFit:
        assert planned is None
        # not even evicting every lower-priority workload of its own queue makes it fit
        lower = [w.key for w in usage.workloads if w.queue == spec.name and w.priority < preemptor.priority]
        assert admit(preemptor, queues, usage.without(lower)).mode != Mode.Fit
        return

    victims = outcome.victims
    assert planned == victims
    assert len(set(victims)) == len(victims) and set(victims) <= set(held)
    assert outcome.flavor is not None
    for i, v in enumerate(victims):
        w = held[v]
        assert usage.flavor_of(v) == outcome.flavor
        if w.queue == spec.name:
            assert w.priority < preemptor.priority  # never an equal or higher one of its own queue
        else:  # reclaim: only from queues of its cohort, and only while they borrow
            assert spec.cohort is not None and queues[w.queue].cohort == spec.cohort
            before = ledger_of(queues, usage.without(victims[:i]))
            assert before.borrowed(w.queue, outcome.flavor) > 0
    reclaims = any(held[v].queue != spec.name for v in victims)
    after = admit(preemptor, queues, usage.without(victims))
    assert after.mode == Mode.Fit and after.flavor == outcome.flavor and after.borrowed == outcome.borrowed
    if reclaims:  # within its own nominal quota after admission
        assert after.borrowed == 0
    for victim in victims:  # minimal: the plan does not work without any one of them
        rest = [v for v in victims if v != victim]
        without_one = admit(preemptor, queues, usage.without(rest))
        still_reclaims = any(held[v].queue != spec.name for v in rest)
        assert without_one.mode != Mode.Fit or (still_reclaims and without_one.borrowed > 0), victim


@PROPERTY
@given(scenarios(), st.data())
def test_fair_order_is_a_permutation_by_priority_then_share(
    scenario: tuple[dict[str, QueueSpec], list[WorkloadInfo]], data: st.DataObject
) -> None:
    queues, workloads = scenario
    usage = fill(queues, workloads)
    pending = data.draw(workload_lists(queues, size=8), label="pending")
    order = fair_order(pending, queues, usage)
    assert sorted(w.key for w in order) == sorted(w.key for w in pending)
    for a, b in pairwise(order):
        assert a.priority >= b.priority
        if a.priority == b.priority:
            share_a, share_b = (dominant_share(w.queue, queues, usage) for w in (a, b))
            assert share_a <= share_b
            if share_a == share_b:
                assert (a.created, a.key) <= (b.created, b.key)
