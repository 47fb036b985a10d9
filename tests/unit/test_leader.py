"""Leader election: the pure decision, then the elector against an in-memory Lease API.

The in-memory API keeps a resourceVersion and answers 404/409 like the API server, so
the optimistic-concurrency paths run without a cluster; it can also be made to fail,
to check that a leader whose renewals fail steps down before its lease could expire.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from aiplane.errors import KubernetesError
from aiplane.runtime.kubernetes.leader import (
    Action,
    Decision,
    LeaderElector,
    LeaseRecord,
    Observation,
    decide,
    jittered,
    micro_time,
    observe,
)

pytestmark = pytest.mark.timeout(30)

WALL = datetime(2026, 12, 2, 18, 47, 5, 123456, tzinfo=UTC)
STAMP = "2026-12-02T18:47:05.123456Z"
OLD = "2026-12-02T18:00:00.000000Z"


def held(holder: str, transitions: int = 3, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, OLD, OLD, transitions)


def run_decide(
    current: LeaseRecord | None,
    observed_at: float = 100.0,
    now: float = 100.0,
    leading: bool = False,
    identity: str = "me",
) -> Decision:
    observation = None if current is None else Observation(current, observed_at)
    return decide(
        current, observation, identity=identity, leading=leading, now=now, wall=WALL, lease_seconds=15
    )


# -- the pure decision -----------------------------------------------------------------


def test_absent_lease_is_created_holding_it() -> None:
    d = run_decide(None)
    assert d.action is Action.CREATE
    assert d.write == LeaseRecord("me", 15, STAMP, STAMP, 0)


def test_own_lease_is_renewed_keeping_acquire_time_and_transitions() -> None:
    d = run_decide(held("me", duration=7), observed_at=0.0, now=1000.0)  # even if "expired"
    assert d.action is Action.RENEW
    assert d.write == LeaseRecord("me", 15, OLD, STAMP, 3)


def test_fresh_lease_of_another_is_waited_for() -> None:
    d = run_decide(held("other"), observed_at=100.0, now=114.9)
    assert d.action is Action.WAIT
    assert d.write is None
    assert "other" in d.reason


def test_lease_of_another_expires_by_observation_time() -> None:
    # still valid at exactly observed + duration, expired just after
    assert run_decide(held("other"), observed_at=100.0, now=115.0).action is Action.WAIT
    d = run_decide(held("other"), observed_at=100.0, now=115.1)
    assert d.action is Action.ACQUIRE
    assert d.write == LeaseRecord("me", 15, STAMP, STAMP, 4)


def test_expiry_uses_the_records_duration_not_ours() -> None:
    assert run_decide(held("other", duration=60), observed_at=0.0, now=59.0).action is Action.WAIT
    assert run_decide(held("other", duration=5), observed_at=0.0, now=5.5).action is Action.ACQUIRE


def test_remote_renew_time_is_never_compared_with_the_local_clock() -> None:
    """A renewTime far in the past (skewed clock) means nothing; only our observation counts."""
    ancient = LeaseRecord("other", 15, "2001-01-01T00:00:00.000000Z", "2001-01-01T00:00:00.000000Z", 1)
    assert run_decide(ancient, observed_at=100.0, now=101.0).action is Action.WAIT
    future = LeaseRecord("other", 15, "2099-01-01T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z", 1)
    assert run_decide(future, observed_at=100.0, now=116.0).action is Action.ACQUIRE


def test_released_lease_is_taken_at_once() -> None:
    released = LeaseRecord("", 1, OLD, OLD, 3)
    d = run_decide(released, observed_at=100.0, now=100.0)
    assert d.action is Action.ACQUIRE
    assert d.write == LeaseRecord("me", 15, STAMP, STAMP, 4)


def test_a_leader_that_sees_another_holder_steps_down() -> None:
    assert run_decide(held("other"), leading=True).action is Action.STEP_DOWN
    assert run_decide(LeaseRecord("", 1, OLD, OLD, 3), leading=True).action is Action.STEP_DOWN
    assert run_decide(held("me"), leading=True).action is Action.RENEW


def test_observation_time_moves_only_when_the_record_changes() -> None:
    first = observe(None, held("other"), 10.0)
    assert first.time == 10.0
    assert observe(first, held("other"), 20.0) is first  # not renewed: keeps ageing
    renewed = replace_renew(held("other"), "2026-12-02T18:00:02.000000Z")
    assert observe(first, renewed, 20.0) == Observation(renewed, 20.0)
    assert observe(first, held("other", transitions=4), 21.0).time == 21.0
    assert observe(first, held("someone"), 22.0).time == 22.0


def replace_renew(record: LeaseRecord, renew_time: str) -> LeaseRecord:
    return LeaseRecord(
        record.holder, record.lease_duration_seconds, record.acquire_time, renew_time, record.transitions
    )


def test_micro_time_format_and_jitter() -> None:
    assert micro_time(WALL) == STAMP
    assert micro_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    assert jittered(2.0, 0.0) == 2.0
    assert jittered(2.0, 1.0) == pytest.approx(4.4)


def test_record_from_spec_treats_missing_fields_safely() -> None:
    assert LeaseRecord.from_spec(None, 15) == LeaseRecord("", 15)
    assert LeaseRecord.from_spec({"holderIdentity": "a", "leaseTransitions": 2}, 15) == LeaseRecord(
        "a", 15, None, None, 2
    )


def test_unsafe_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="lease_duration"):
        LeaderElector(FakeLeaseApi(), "l", "ns", "a", lease_duration=5, renew_deadline=5)
    with pytest.raises(ValueError, match="retry_period"):
        LeaderElector(FakeLeaseApi(), "l", "ns", "a", renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(FakeLeaseApi(), "l", "ns", "")


# -- the elector against an in-memory Lease API ------------------------------------------


class FakeLeaseApi:
    """Leases by path, with resourceVersion conflicts; ``failing`` makes every call 503."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.failing = False
        self.writes: list[tuple[str, dict[str, Any]]] = []

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        await asyncio.sleep(0)
        if self.failing:
            raise KubernetesError(f"{method} {path}: 503 unavailable", status=503)
        if method == "GET":
            if path not in self.leases:
                raise KubernetesError(f"GET {path}: 404", status=404)
            return copy.deepcopy(self.leases[path])
        if method == "POST":
            path = f"{path}/{body['metadata']['name']}"
            if path in self.leases:
                raise KubernetesError(f"POST {path}: 409 already exists", status=409)
        elif method == "PUT":
            stored = self.leases.get(path)
            if stored is None:
                raise KubernetesError(f"PUT {path}: 404", status=404)
            if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
                raise KubernetesError(f"PUT {path}: 409 conflict", status=409)
        else:
            raise AssertionError(method)
        self.version += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.leases[path] = obj
        self.writes.append((method, copy.deepcopy(obj["spec"])))
        return copy.deepcopy(obj)

    def spec(self) -> dict[str, Any]:
        (lease,) = self.leases.values()
        return dict(lease["spec"])


def fast(api: FakeLeaseApi, identity: str, **callbacks: Callable[[], None]) -> LeaderElector:
    """Lease 1 s, renew deadline 0.6 s, retry 0.1 s."""
    return LeaderElector(
        api, "l", "ns", identity, lease_duration=1.0, renew_deadline=0.6, retry_period=0.1, **callbacks
    )


async def until(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_one_of_two_leads_then_release_hands_over_and_a_crash_waits_for_expiry() -> None:
    api = FakeLeaseApi()
    events: list[str] = []

    def elector(identity: str) -> LeaderElector:
        return fast(
            api,
            identity,
            on_started_leading=lambda: events.append(f"{identity}+"),
            on_stopped_leading=lambda: events.append(f"{identity}-"),
        )

    a, b = elector("a"), elector("b")
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    task_b = asyncio.create_task(b.run(stop_b))
    await until(lambda: a.is_leader or b.is_leader, 2)
    for _ in range(50):  # renewing keeps exactly one leader
        assert a.is_leader != b.is_leader
        await asyncio.sleep(0.02)
    leader, follower, stop_leader, leader_task = (
        (a, b, stop_a, task_a) if a.is_leader else (b, a, stop_b, task_b)
    )
    assert api.spec()["holderIdentity"] == leader.identity
    assert api.spec()["leaseDurationSeconds"] == 1
    transitions = api.spec()["leaseTransitions"]

    before = len(api.writes)
    stop_leader.set()  # graceful: released, so the follower need not wait out the lease
    await leader_task
    assert not leader.is_leader
    releases = [spec for _, spec in api.writes[before:] if spec["holderIdentity"] == ""]
    assert [r["leaseDurationSeconds"] for r in releases] == [1]
    took = await until(lambda: follower.is_leader, 1.0)
    assert took < 0.5
    assert api.spec()["holderIdentity"] == follower.identity
    assert api.spec()["leaseTransitions"] == transitions + 1

    # a leader that crashes (cancelled, no release) is waited out for the lease duration
    other_task = task_b if follower is b else task_a
    renewed_at = follower.renewed_at
    assert renewed_at is not None
    other_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other_task
    assert api.spec()["holderIdentity"] == follower.identity  # not released
    stop_new = asyncio.Event()
    newcomer = fast(api, "c")
    new_task = asyncio.create_task(newcomer.run(stop_new))
    started = time.monotonic()
    await until(lambda: newcomer.is_leader, 3)
    assert time.monotonic() - started >= 1.0  # it observed the lease first, then waited it out
    stop_new.set()
    await new_task
    first, second = leader.identity, follower.identity
    assert events == [f"{first}+", f"{first}-", f"{second}+", f"{second}-"]


async def test_a_leader_whose_renewals_fail_steps_down_before_the_lease_expires() -> None:
    api = FakeLeaseApi()
    stopped: list[float] = []
    a = fast(api, "a", on_stopped_leading=lambda: stopped.append(time.monotonic()))
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop))
    await until(lambda: a.is_leader, 1)
    await asyncio.sleep(0.25)
    api.failing = True
    last_renew = a.renewed_at
    assert last_renew is not None
    await until(lambda: not a.is_leader, 2)
    assert stopped
    assert stopped[0] - last_renew == pytest.approx(0.6, abs=0.15)  # renew_deadline, < lease 1 s
    api.failing = False  # the API is back and the lease is still ours: it leads again
    await until(lambda: a.is_leader, 2)
    stop.set()
    await task
    assert api.spec()["holderIdentity"] == ""
    assert api.spec()["leaseDurationSeconds"] == 1


async def test_api_errors_never_end_the_loop_and_a_lost_race_is_retried() -> None:
    api = FakeLeaseApi()
    api.failing = True
    a = fast(api, "a")
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop))
    await asyncio.sleep(0.3)
    assert not task.done() and not a.is_leader
    # someone else creates the lease while we cannot reach the API: we wait it out
    api.failing = False
    api.leases["/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"] = {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "0"},
        "spec": {"holderIdentity": "z", "leaseDurationSeconds": 1, "leaseTransitions": 0},
    }
    await asyncio.sleep(0.5)
    assert not a.is_leader
    await until(lambda: a.is_leader, 2)
    assert api.spec()["leaseTransitions"] == 1
    stop.set()
    await task


async def test_cancelled_follower_writes_nothing() -> None:
    api = FakeLeaseApi()
    api.leases["/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"] = {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "0"},
        "spec": {"holderIdentity": "z", "leaseDurationSeconds": 30},
    }
    a = fast(api, "a")
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert api.writes == []
