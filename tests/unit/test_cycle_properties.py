"""Properties of one scheduling cycle, and of a few in a row, over random small clusters.

A scenario is a fleet (at most 6 nodes of at most 8 GPUs), queues with quota in one cohort
or none, and at most 10 workloads: some run already (admitted and bound, a few stopping),
some hold quota but no nodes yet, the rest wait, some taking no quota at all. The rules are
restated here (``violations``, ``check_cycle``), not taken from the code's arithmetic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aiplane.policies.scheduling import scorers
from aiplane.policies.scheduling.cycle import Candidate, CycleResult, Holder, schedule, usage_of
from aiplane.policies.scheduling.fleet import Eligibility, Fleet, NodeShape, Placement, PodShape
from aiplane.policies.scheduling.fragmentation import TargetWorkload
from aiplane.policies.scheduling.gangs import GangFit, place_gang
from aiplane.policies.scheduling.outcome import Mode
from aiplane.policies.scheduling.quota import QueueSpec, Usage, admit
from aiplane.policies.scheduling.scorers import BestFit, Scorer
from aiplane.policies.scheduling.workload import EPS, Demand, WorkloadInfo

PROPERTY = settings(max_examples=80, deadline=None)
TARGET = TargetWorkload.from_pods(
    [PodShape(cpu_milli=1000, gpus=1, gpu_milli=500), PodShape(cpu_milli=1000, gpus=1, gpu_milli=1000)]
)
SCORER_NAMES = ("best-fit", "aiplane")  # deterministic: a what-if replays the same placements


@dataclass
class Scenario:
    fleet: Fleet
    queues: dict[str, QueueSpec]
    holders: list[Holder]
    candidates: list[Candidate]
    scorer: str
    max_reservations: int
    reservations: dict[str, tuple[int, ...]] = field(default_factory=dict)
    preempting: dict[str, list[str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        f = self.fleet
        nodes = [f"{f.names[i]}:{f.gpu_free[i][: f.gpu_count[i]].tolist()}" for i in range(len(f))]
        held = [
            f"{h.key}({h.workload.queue} p{h.workload.priority} {h.flavor}"
            + (" stopping" if h.evicting else "")
            + (" pinned" if not h.preemptible else "")
            + f" {[(p.node, p.devices, pod.gpu_milli) for pod, p in h.pods]})"
            for h in self.holders
        ]
        waiting = [
            f"{c.key}({c.workload.queue} p{c.workload.priority} {[(p.gpus, p.gpu_milli) for p in c.pods]}"
            + (" admitted" if c.admitted else "")
            + ("" if c.queued else " unqueued")
            + f" waited {c.waiting_s:g}"
            + (f" on {c.eligible[0].mask.tolist()}" if c.eligible and c.eligible[0] is not None else "")
            + ")"
            for c in self.candidates
        ]
        queues = [
            f"{q.name}({dict(q.quota)} {q.cohort} b={q.borrowing} l={q.lending} lim={q.borrowing_limit})"
            for q in self.queues.values()
        ]
        return (
            f"Scenario({self.scorer}, max_res={self.max_reservations}, nodes={nodes}, queues={queues}, "
            f"holders={held}, candidates={waiting}, reservations={self.reservations}, "
            f"preempting={self.preempting})"
        )

    def scorer_(self) -> Scorer:
        return scorers.make([self.scorer], TARGET)[0]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    gpus = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6))
    fleet = Fleet([NodeShape(f"n{i}", 32_000, 131_072, g, "H100") for i, g in enumerate(gpus)])
    queues: dict[str, QueueSpec] = {}
    mostly = st.sampled_from([True, True, True, True, False])
    one_cohort = draw(mostly)  # where borrowing and reclaim happen
    for i in range(draw(st.integers(1, 3))):
        name = f"q{i}"
        queues[name] = QueueSpec(
            name,
            {"*": draw(st.sampled_from([0, 1, 2, 4, 4, 6, 8, 12]))},
            "c" if one_cohort else draw(st.sampled_from(["c", None])),
            borrowing=draw(mostly),
            lending=draw(mostly),
            borrowing_limit=draw(st.sampled_from([None, None, None, None, 0.0, 2.0])),
        )
    names = [*sorted(queues) * 3, ""]  # "": takes no quota (a Model replica)
    usage, holders, candidates = Usage(), [], []
    rng = np.random.default_rng(0)
    for i in range(draw(st.integers(1, 10))):
        queue = draw(st.sampled_from(names))
        n = draw(st.integers(1, 3))
        g = draw(st.sampled_from([1, 1, 1, 2, 2, 4, 8]))
        milli = draw(st.sampled_from([1000, 1000, 500, 250])) if g == 1 else 1000
        pods = tuple(PodShape(f"w{i}-{j}", 1000, 1024, g, milli) for j in range(n))
        w = WorkloadInfo(
            f"w{i}",
            queue or "none",
            Demand(gpu=n * g * milli / 1000, cpu=n),
            priority=draw(st.integers(0, 3)),
            created=float(i),
            gang_size=n,
        )
        eligible: tuple[Eligibility | None, ...] = ()
        if draw(st.integers(0, 3)) == 0:
            ok = np.array(draw(st.lists(st.booleans(), min_size=len(gpus), max_size=len(gpus))), dtype=bool)
            eligible = (
                Eligibility(np.ones(len(gpus), dtype=bool)).restricted(ok, "untolerated taint x"),
            ) * n
        state = draw(st.sampled_from(["running", "running", "stopping", "admitted", "waiting", "waiting"]))
        flavor: str | None = None
        if state != "waiting" and queue:
            outcome = admit(w, queues, usage)
            if outcome.mode == Mode.Fit:
                flavor = outcome.flavor
            else:
                state = "waiting"
        if state in ("running", "stopping"):
            placed = place_gang(fleet, pods, BestFit(), rng, eligible or None)
            if isinstance(placed, GangFit):
                for pod, p in zip(pods, placed.placements, strict=True):
                    fleet.bind(pod, p)
                if flavor is not None:
                    usage = usage.add(w, flavor)
                holders.append(
                    Holder(
                        w,
                        flavor,
                        tuple(zip(pods, placed.placements, strict=True)),
                        evicting=state == "stopping",
                        preemptible=bool(queue) or draw(st.booleans()),
                    )
                )
                continue
            state = "waiting"
        if state == "admitted" and queue:
            if flavor is not None:
                usage = usage.add(w, flavor)
            holders.append(Holder(w, flavor))
            candidates.append(Candidate(w, pods, eligible, admitted=True))
            continue
        waited = draw(st.sampled_from([0.0, 100.0, 300.0, 1000.0]))
        candidates.append(Candidate(w, pods, eligible, queued=bool(queue), waiting_s=waited))
    return Scenario(
        fleet, queues, holders, candidates, draw(st.sampled_from(SCORER_NAMES)), draw(st.integers(1, 2))
    )


def cycle(s: Scenario, candidates: Sequence[Candidate] | None = None, **kw: object) -> CycleResult:
    return schedule(
        s.fleet,
        s.queues,
        s.holders,
        s.candidates if candidates is None else candidates,
        s.scorer_(),
        np.random.default_rng(0),
        reservations=s.reservations,
        preempting=s.preempting,
        max_reservations=s.max_reservations,
        **kw,  # type: ignore[arg-type]
    )


# ---- the rules, restated ----


def used_gpus(holders: Sequence[Holder]) -> dict[tuple[str, str], float]:
    used: dict[tuple[str, str], float] = defaultdict(float)
    for h in holders:
        if h.flavor is not None:
            used[h.workload.queue, h.flavor] += h.workload.demand.gpu
    return used


def violations(queues: Mapping[str, QueueSpec], used: Mapping[tuple[str, str], float]) -> list[str]:
    """Why this usage breaks the quota rules: borrowing without a cohort or over the limit,
    or a cohort borrowing more than its lending queues leave idle."""
    bad = []

    def borrowed(q: QueueSpec) -> float:
        return max(0.0, used.get((q.name, "*"), 0.0) - q.quota.get("*", 0.0))

    for q in queues.values():
        if borrowed(q) > EPS and (q.cohort is None or not q.borrowing):
            bad.append(f"{q.name} borrows {borrowed(q)} without a cohort or borrowing")
        if q.borrowing_limit is not None and borrowed(q) > q.borrowing_limit + EPS:
            bad.append(f"{q.name} borrows {borrowed(q)} over its limit {q.borrowing_limit}")
    for c in {q.cohort for q in queues.values()} - {None}:
        members = [q for q in queues.values() if q.cohort == c]
        lent = sum(borrowed(q) for q in members)
        idle = sum(
            max(0.0, q.quota.get("*", 0.0) - used.get((q.name, "*"), 0.0)) for q in members if q.lending
        )
        if lent > idle + EPS:
            bad.append(f"cohort {c} borrows {lent} of {idle} idle lending quota")
    return bad


def reserved_by_others(
    s: Scenario, key: str, reservations: Mapping[str, tuple[int, ...]] | None = None
) -> np.ndarray:
    """Nodes held for other waiting workloads that ``key`` does not outrank (from those ``s``
    starts with, or ``reservations``): a reservation binds its priority and lower only."""
    mask = np.zeros(len(s.fleet), dtype=bool)
    priority = {c.key: c.workload.priority for c in s.candidates}
    for k, nodes in (s.reservations if reservations is None else reservations).items():
        if k != key and k in priority and priority[k] >= priority[key]:
            mask[list(nodes)] = True
    return mask


def check_cycle(s: Scenario, result: CycleResult) -> None:
    """Every rule one cycle's decisions must keep, given the state ``s`` it decided on."""
    by_key = {c.key: c for c in s.candidates}
    holding = {h.key: h for h in s.holders}
    started = {x.key: x for x in result.starts}
    waited = {w.key: w for w in result.waits}
    # one decision per candidate
    assert len(started) == len(result.starts) and len(waited) == len(result.waits)
    assert started.keys() | waited.keys() == by_key.keys() and not started.keys() & waited.keys()
    assert {w.cause for w in result.waits} <= {"quota", "placement", "preemption", "stopping"}

    # starts: whole gangs, on eligible nodes outside others' reservations, never over-committed
    # (a reservation whose workload starts is given back then, so only those still waiting count)
    held = {k: v for k, v in s.reservations.items() if k in waited}
    fleet = s.fleet.copy()
    for x in result.starts:
        c = by_key[x.key]
        assert len(x.placements) == len(c.pods)
        others = reserved_by_others(s, x.key, held)
        for i, (pod, p) in enumerate(zip(c.pods, x.placements, strict=True)):
            assert len(set(p.devices)) == len(p.devices) == (pod.gpus if pod.gpu_milli else 0)
            if c.eligible and c.eligible[i] is not None:
                assert c.eligible[i].mask[p.node]  # type: ignore[union-attr]
            assert not others[p.node], f"{x.key} started on {p.node}, reserved for another"
            fleet.bind(pod, p)  # raises on over-commit

    # quota: what each start borrows is at least what its queue goes over by; the rules hold after
    usage = usage_of(s.holders)
    for x in result.starts:
        c = by_key[x.key]
        if not c.queued:
            assert (x.flavor, x.borrowed) == (None, 0.0)
        if not c.queued or c.admitted:
            continue
        assert x.flavor == ("*" if c.workload.demand.gpu > EPS else None)
        spec = s.queues[c.workload.queue]
        before = usage.borrowed(spec, "*")
        usage = usage.add(c.workload, x.flavor)
        assert 0 <= x.borrowed <= c.workload.demand.gpu + EPS
        assert x.borrowed + EPS >= usage.borrowed(spec, "*") - before
        if x.borrowed > EPS:
            assert spec.cohort is not None and spec.borrowing
    after = used_gpus(s.holders)
    for x in result.starts:
        if x.flavor is not None and by_key[x.key].queued and not by_key[x.key].admitted:
            after[by_key[x.key].workload.queue, x.flavor] += by_key[x.key].workload.demand.gpu
    assert violations(s.queues, after) == []

    # evictions: each once, of a running holder, by a waiting preemptor with a right to it
    # (reclaim: the victim's queue borrows once this cycle's starts are counted, since a
    # start may borrow a lender's idle quota before the lender's own job comes up)
    evicted = [e.key for e in result.evictions]
    assert len(set(evicted)) == len(evicted)
    for e in result.evictions:
        victim, preemptor = holding[e.key], by_key[e.by]
        assert not victim.evicting and victim.preemptible
        assert e.by in waited and "preempting" in waited[e.by].reason
        assert waited[e.by].cause == "preemption"
        lower = victim.workload.priority < preemptor.workload.priority
        if e.reason.endswith(", quota)"):
            vq, pq = victim.workload.queue, preemptor.workload.queue
            if vq == pq:
                assert lower
            else:
                spec = s.queues[vq]
                assert spec.cohort is not None and spec.cohort == s.queues[pq].cohort
                assert victim.flavor is not None and usage.borrowed(spec, victim.flavor) > EPS
        else:
            assert lower, f"{e.by} evicts {e.key} of priority {victim.workload.priority}"

    # a preemptor whose victims still hold resources waits and evicts no more
    for key, victims in s.preempting.items():
        if key in by_key and any(v in holding for v in victims):
            assert key in waited and key not in {e.by for e in result.evictions}


# ---- one cycle ----


@PROPERTY
@given(scenarios())
def test_one_cycle_keeps_every_rule(s: Scenario) -> None:
    before = (s.fleet.gpu_free.copy(), s.fleet.cpu_free.copy(), s.fleet.memory_free.copy())
    result = cycle(s)
    check_cycle(s, result)
    assert (s.fleet.gpu_free == before[0]).all() and (s.fleet.cpu_free == before[1]).all()
    assert (s.fleet.memory_free == before[2]).all()


def without(s: Scenario, gone: set[str], bind: Sequence[tuple[PodShape, Placement]] = ()) -> Scenario:
    """``s`` once ``gone`` stopped (their pods unbound), with ``bind`` bound too."""
    fleet = s.fleet.copy()
    for h in s.holders:
        if h.key in gone:
            for pod, p in h.pods:
                fleet.unbind(pod, p)
    for pod, p in bind:
        fleet.bind(pod, p)
    return replace(s, fleet=fleet, holders=[h for h in s.holders if h.key not in gone], preempting={})


def alone(s: Scenario, c: Candidate, reservations: Mapping[str, tuple[int, ...]] | None = None) -> Candidate:
    """``c`` kept off the nodes reserved for others (as it was in the cycle)."""
    others = reserved_by_others(s, c.key, reservations)
    if not others.any():
        return c
    base = c.eligible or (None,) * len(c.pods)
    where = tuple(
        (e or Eligibility(np.ones(len(s.fleet), dtype=bool))).restricted(~others, "reserved") for e in base
    )
    return replace(c, eligible=where)


@PROPERTY
@given(scenarios())
def test_the_evicted_victims_make_room_for_their_preemptor_and_no_fewer_would(s: Scenario) -> None:
    result = cycle(s)
    by_key = {c.key: c for c in s.candidates}
    victims: dict[str, list[str]] = defaultdict(list)
    for e in result.evictions:
        victims[e.by].append(e.key)
    for key, vs in victims.items():
        c = by_key[key]
        # once its victims are gone, and nobody else took the room, it starts
        after = without(s, set(vs))
        nxt = cycle(replace(after, reservations={}), [alone(s, c)])
        assert key in {x.key for x in nxt.starts}, f"{key} evicted {vs} and still waits: {nxt.waits}"
        if all(not e.reason.endswith(", quota)") for e in result.evictions if e.by == key):
            # node preemption is minimal: with any one victim fewer, it does not fit
            started = [
                (pod, p)
                for x in result.starts
                for pod, p in zip(by_key[x.key].pods, x.placements, strict=True)
            ]
            for v in vs:
                fewer = without(s, set(vs) - {v}, started)
                others = {e.key for e in result.evictions} - set(vs)
                fewer.holders = [replace(h, evicting=h.evicting or h.key in others) for h in fewer.holders]
                # reservations made earlier in the cycle kept c off their nodes: keep it off all
                trial = cycle(replace(fewer, reservations={}), [alone(s, c, result.reservations)])
                assert key not in {x.key for x in trial.starts}, f"{key} fits without evicting {v}"


# ---- a few cycles in a row ----


def step(s: Scenario, result: CycleResult) -> Scenario:
    """The runtime between two cycles: starts bound, the evicted told to stop, those told
    before gone, 200 s more waiting for the rest."""
    fleet = s.fleet.copy()
    gone = {h.key for h in s.holders if h.evicting}
    for h in s.holders:
        if h.key in gone:
            for pod, p in h.pods:
                fleet.unbind(pod, p)
    evicted = {e.key for e in result.evictions}
    started = {x.key: x for x in result.starts}
    holders = [
        replace(h, evicting=h.key in evicted)
        for h in s.holders
        if h.key not in gone and h.key not in started  # an admitted candidate's quota-only holder
    ]
    for c in s.candidates:
        if c.key in started:
            x = started[c.key]
            for pod, p in zip(c.pods, x.placements, strict=True):
                fleet.bind(pod, p)
            holders.append(Holder(c.workload, x.flavor, tuple(zip(c.pods, x.placements, strict=True))))
    preempting = {k: list(v) for k, v in s.preempting.items()}
    for e in result.evictions:
        preempting.setdefault(e.by, []).append(e.key)
    candidates = [replace(c, waiting_s=c.waiting_s + 200) for c in s.candidates if c.key not in started]
    return replace(
        s,
        fleet=fleet,
        holders=holders,
        candidates=candidates,
        reservations=dict(result.reservations),
        preempting=preempting,
    )


@settings(max_examples=50, deadline=None)
@given(scenarios())
def test_cycles_in_a_row_keep_every_rule(s: Scenario) -> None:
    for _ in range(4):
        result = cycle(s)
        check_cycle(s, result)
        for key, nodes in result.reservations.items():
            assert key in {c.key for c in s.candidates} and nodes
        assert len(result.reservations) <= max(s.max_reservations, len(s.reservations))
        s = step(s, result)
