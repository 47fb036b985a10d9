"""Leader election on a real API server: one leader, release on stop, expiry after a crash.

Two electors share one event loop and one Lease with short timings (lease 3 s, renew
deadline 2 s, retry 0.5 s). A sampler checks ``is_leader`` of both every 20 ms for the
whole test: never may both lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.leader import LeaderElector
from tests.k8s.conftest import K8sCluster

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(60)]

LEASE = 3.0
RENEW = 2.0
RETRY = 0.5
NAME = "aiplane-scheduler"


@pytest.fixture
async def kube(k8s_cluster: K8sCluster, k8s_namespace: str) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as client:
        yield client


@dataclass
class Candidate:
    elector: LeaderElector
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self.stop))

    @property
    def leads(self) -> bool:
        return self.elector.is_leader


@dataclass
class Sampler:
    """Samples who leads; ``both`` counts instants at which two did."""

    candidates: list[Candidate]
    samples: int = 0
    both: int = 0
    leaders: list[str] = field(default_factory=list)  # who led at each sample ("" nobody)

    async def run(self) -> None:
        while True:
            leading = [c.elector.identity for c in self.candidates if c.leads]
            self.samples += 1
            self.both += len(leading) > 1
            self.leaders.append(leading[0] if leading else "")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def election(kube: Kube, namespace: str) -> AsyncIterator[tuple[list[Candidate], Sampler]]:
    candidates = [
        Candidate(
            LeaderElector(
                kube, NAME, namespace, who, lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY
            )
        )
        for who in ("a", "b")
    ]
    sampler = Sampler(candidates)
    sampling = asyncio.create_task(sampler.run())
    for c in candidates:
        c.start()
    try:
        yield candidates, sampler
    finally:
        for c in candidates:
            c.stop.set()
        await asyncio.gather(*(c.task for c in candidates if c.task), return_exceptions=True)
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    assert sampler.both == 0, f"two leaders at {sampler.both} of {sampler.samples} samples"


async def wait_for_leader(candidates: list[Candidate], timeout: float) -> Candidate:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leading = [c for c in candidates if c.leads]
        if leading:
            return leading[0]
        await asyncio.sleep(0.02)
    pytest.fail(f"nobody leads after {timeout}s")


async def lease(kube: Kube, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = (
        await kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{NAME}")
    )["spec"]
    return spec


async def test_exactly_one_leads_and_a_release_hands_over_at_once(kube: Kube, k8s_namespace: str) -> None:
    async with election(kube, k8s_namespace) as (candidates, sampler):
        leader = await wait_for_leader(candidates, LEASE)
        (follower,) = [c for c in candidates if c is not leader]
        start = sampler.samples
        await asyncio.sleep(4 * LEASE / 3)  # several renewals
        held = sampler.leaders[start:]
        assert set(held) == {leader.elector.identity}, "leadership must stay put while renewed"
        spec = await lease(kube, k8s_namespace)
        assert spec["holderIdentity"] == leader.elector.identity
        assert spec["leaseDurationSeconds"] == 3
        assert spec["renewTime"].endswith("Z") and len(spec["renewTime"]) == len(
            "2006-01-02T15:04:05.000000Z"
        )
        transitions = spec.get("leaseTransitions", 0)

        stopped = time.monotonic()
        leader.stop.set()
        assert leader.task is not None
        await leader.task
        assert not leader.leads
        await wait_for_leader([follower], 2.0)
        took = time.monotonic() - stopped
        assert took < 2 * RETRY * 2.2, f"took {took:.2f}s to take over a released lease"
        spec = await lease(kube, k8s_namespace)
        assert spec["holderIdentity"] == follower.elector.identity
        assert spec["leaseTransitions"] == transitions + 1


async def test_a_crashed_leader_is_taken_over_only_after_the_lease_expires(
    kube: Kube, k8s_namespace: str
) -> None:
    async with election(kube, k8s_namespace) as (candidates, _):
        leader = await wait_for_leader(candidates, LEASE)
        (follower,) = [c for c in candidates if c is not leader]
        await asyncio.sleep(2 * RETRY)  # let it renew, and the follower observe that
        assert leader.task is not None
        leader.task.cancel()  # a crash: no release, the lease is left to expire
        crashed = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            await leader.task
        last_renewal = leader.elector.renewed_at
        assert last_renewal is not None
        assert (await lease(kube, k8s_namespace))["holderIdentity"] == leader.elector.identity

        await wait_for_leader([follower], LEASE + 8 * RETRY)
        took_over = time.monotonic()
        # The follower saw the last renewal no earlier than it was sent, and must then
        # have waited a full lease duration on its own clock.
        assert took_over - last_renewal >= LEASE, f"took over {took_over - last_renewal:.2f}s after renewal"
        assert took_over - crashed >= LEASE - RETRY - 0.2, "took over before the lease could expire"
        assert took_over - crashed <= LEASE + 7 * RETRY, f"took {took_over - crashed:.2f}s after the crash"
        assert (await lease(kube, k8s_namespace))["holderIdentity"] == follower.elector.identity
