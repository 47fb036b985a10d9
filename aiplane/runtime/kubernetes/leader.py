"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Several replicas of a controller (the aiplane scheduler) run; only the one holding the
Lease may act. The rules follow ``k8s.io/client-go/tools/leaderelection`` (LeaseLock):

- **Expiry is judged by local observation time.** A candidate remembers when it last
  saw the lease record change and deems it expired once ``observed + leaseDurationSeconds``
  is past on its own monotonic clock. The holder's ``renewTime`` is never compared with
  the local clock, so clock skew between machines cannot cause two leaders.
- **Writes are optimistic.** Create, take-over and renew carry the ``resourceVersion``
  read, so of two concurrent writers one gets 409 Conflict and loses.
- **The leader steps down before anyone else could take over.** It renews every
  ``retry_period``; if no renewal has succeeded for ``renew_deadline`` (shorter than the
  lease duration) it clears :attr:`LeaderElector.leading` at once, so it stops acting
  while the lease is still valid for its peers.
- **On a graceful stop it releases** (client-go's ``ReleaseOnCancel``): the lease is
  written with no holder and a 1 s duration, so a peer takes over at its next retry
  instead of waiting out the lease. A crashed leader (task cancelled) releases nothing.

What to do given the record read is a pure function, :func:`decide`; the elector only
reads the clock, talks to the API, and applies the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from aiplane.errors import KubernetesError

__all__ = [
    "Action",
    "Decision",
    "LeaderElector",
    "LeaseRecord",
    "Observation",
    "decide",
    "jittered",
    "micro_time",
    "observe",
]

log = logging.getLogger(__name__)

LEASE_API = "/apis/coordination.k8s.io/v1"
JITTER_FACTOR = 1.2  # client-go's JitterFactor for the acquire loop
RELEASED_LEASE_SECONDS = 1  # what client-go writes on release


class Requester(Protocol):
    """The one method of :class:`~aiplane.runtime.kubernetes.client.Kube` the elector needs."""

    async def request(self, method: str, path: str, body: Any = None) -> Any: ...


@dataclass(frozen=True)
class LeaseRecord:
    """The leader-election fields of a Lease spec; ``holder`` is "" when free or released."""

    holder: str
    lease_duration_seconds: int
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, default_duration: int) -> LeaseRecord:
        """A missing duration counts as ours: judging it 0 would make any holder expired."""
        spec = spec or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_seconds=int(duration) if duration else default_duration,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


@dataclass(frozen=True)
class Observation:
    """A record and the local monotonic time it was first seen in that form."""

    record: LeaseRecord
    time: float

    def expires(self) -> float:
        return self.time + self.record.lease_duration_seconds


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """Keep the old observation time while the record is unchanged: a lease that nobody
    renews ages on our clock, whatever its timestamps say."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it holding it
    ACQUIRE = "acquire"  # free, released or expired: take it over (transitions + 1)
    RENEW = "renew"  # ours: extend it
    WAIT = "wait"  # another holder's, still valid: retry later
    STEP_DOWN = "step-down"  # we were leading but someone else holds it now


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    write: LeaseRecord | None = None  # the record to write for CREATE, ACQUIRE and RENEW


def decide(
    current: LeaseRecord | None,
    observation: Observation | None,
    *,
    identity: str,
    leading: bool,
    now: float,
    wall: datetime,
    lease_seconds: int,
) -> Decision:
    """What to do with the lease record just read (``None``: no Lease exists).

    ``observation`` is :func:`observe` applied to ``current``; ``now`` is the monotonic
    clock it is judged with and ``wall`` only stamps the times written.
    """
    stamp = micro_time(wall)
    mine = LeaseRecord(identity, lease_seconds, stamp, stamp, 0)
    if current is None:
        return Decision(Action.CREATE, "no lease exists", mine)
    if current.holder == identity:
        renewed = replace(current, lease_duration_seconds=lease_seconds, renew_time=stamp)
        if current.acquire_time is None:
            renewed = replace(renewed, acquire_time=stamp)
        return Decision(Action.RENEW, "we hold the lease", renewed)
    if leading:
        return Decision(Action.STEP_DOWN, f"lease now held by {current.holder or 'nobody'}")
    taken = replace(mine, transitions=current.transitions + 1)
    if not current.holder:
        return Decision(Action.ACQUIRE, "lease was released", taken)
    if observation is None or observation.record != current:
        raise ValueError("observation must be observe(previous, current, now)")
    if observation.expires() < now:
        return Decision(
            Action.ACQUIRE,
            f"lease of {current.holder} not renewed for "
            f"{now - observation.time:.1f}s > {current.lease_duration_seconds}s",
            taken,
        )
    return Decision(
        Action.WAIT,
        f"held by {current.holder}, expires in {observation.expires() - now:.1f}s unless renewed",
    )


def micro_time(wall: datetime) -> str:
    """Kubernetes MicroTime, ``2006-01-02T15:04:05.000000Z``."""
    return wall.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def jittered(period: float, fraction: float) -> float:
    """client-go's ``wait.Jitter``: spreads retries so candidates do not move in step."""
    return period * (1 + JITTER_FACTOR * fraction)


class _Outcome(enum.Enum):
    LEADING = "leading"
    NOT_LEADING = "not-leading"  # someone else holds a valid lease, or we lost a race
    FAILED = "failed"  # the API failed; nothing is known


# Errors a call to the API server may end in; all are logged and retried.
_API_ERRORS = (KubernetesError, aiohttp.ClientError, OSError, TimeoutError)


class LeaderElector:
    """Campaigns for the Lease ``namespace/name`` as ``identity`` until stopped.

    Act only while :attr:`leading` is set. Callbacks run in the election task and must
    not block; long work should wait on :attr:`leading` instead.
    """

    def __init__(
        self,
        kube: Requester,
        name: str,
        namespace: str,
        identity: str,
        *,
        lease_duration: float = 15,
        renew_deadline: float = 10,
        retry_period: float = 2,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
    ) -> None:
        if not identity:
            raise ValueError("identity must not be empty: an empty holder means a free lease")
        if not lease_duration > renew_deadline:
            raise ValueError("lease_duration must exceed renew_deadline, or two could lead")
        if not renew_deadline > JITTER_FACTOR * retry_period > 0:
            raise ValueError(f"renew_deadline must exceed {JITTER_FACTOR} * retry_period > 0")
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.leading = asyncio.Event()
        self._lease_seconds = math.ceil(lease_duration)  # the field is whole seconds
        self._observation: Observation | None = None
        self._lease: dict[str, Any] | None = None  # the last Lease read or written
        self._renewed_at: float | None = None
        self._rand = random.Random()

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    @property
    def renewed_at(self) -> float | None:
        """Monotonic time the last successful acquire or renew was sent (None: never)."""
        return self._renewed_at

    @property
    def _path(self) -> str:
        return f"{LEASE_API}/namespaces/{quote(self.namespace)}/leases"

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire, lead, and re-campaign after losing the lease, until ``stop`` is set.

        On stop the lease is released if held. If the task is cancelled instead (the
        process dies), leadership is cleared locally and the lease is left to expire.
        """
        try:
            while not stop.is_set():
                if await self._acquire(stop):
                    await self._renew(stop)
        finally:
            released = self.is_leader and stop.is_set()
            self._step_down("stopped" if released else "election task ended")
            if released:
                await self._release()

    async def _acquire(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                async with asyncio.timeout(self.renew_deadline):  # a hung call must not stall
                    outcome = await self._attempt()
            except TimeoutError:
                log.warning("%s: no answer from the API server in %ss", self.identity, self.renew_deadline)
                outcome = _Outcome.FAILED
            if outcome is _Outcome.LEADING:
                self.leading.set()
                log.info("%s: leading %s/%s", self.identity, self.namespace, self.name)
                self._callback(self.on_started_leading)
                return True
            await _sleep(stop, jittered(self.retry_period, self._rand.random()))
        return False

    async def _renew(self, stop: asyncio.Event) -> None:
        """Renew every retry period; step down when the deadline passes without success."""
        while not stop.is_set():
            assert self._renewed_at is not None
            deadline = self._renewed_at + self.renew_deadline
            await _sleep(stop, min(self.retry_period, deadline - time.monotonic()))
            if stop.is_set():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._step_down(f"no renewal succeeded for {self.renew_deadline}s")
                return
            try:
                async with asyncio.timeout(remaining):
                    outcome = await self._attempt()
            except TimeoutError:
                outcome = _Outcome.FAILED
            if outcome is _Outcome.NOT_LEADING:
                self._step_down("the lease is held by another")
                return

    async def _attempt(self) -> _Outcome:
        """One try to acquire or renew (client-go's ``tryAcquireOrRenew``)."""
        if self.is_leader and self._lease is not None and self._observation is not None:
            # fast path: write over what we last wrote; a conflict falls back to a read
            try:
                return await self._apply(self._lease, self._observation.record)
            except _API_ERRORS as exc:
                log.info("%s: optimistic renew failed (%s); reading the lease", self.identity, exc)
        try:
            lease: dict[str, Any] | None = await self.kube.request("GET", f"{self._path}/{self.name}")
        except KubernetesError as exc:
            if exc.status != 404:
                log.warning("%s: cannot read lease: %s", self.identity, exc)
                return _Outcome.FAILED
            lease = None
        except _API_ERRORS as exc:
            log.warning("%s: cannot read lease: %s", self.identity, exc)
            return _Outcome.FAILED
        if lease is None:
            current = None
        else:
            current = LeaseRecord.from_spec(lease.get("spec"), self._lease_seconds)
            self._observation = observe(self._observation, current, time.monotonic())
            self._lease = lease
        try:
            return await self._apply(lease, current)
        except _API_ERRORS as exc:
            if isinstance(exc, KubernetesError) and exc.status == 409:
                log.info("%s: lost a race for the lease: %s", self.identity, exc)
                return _Outcome.NOT_LEADING
            log.warning("%s: cannot write lease: %s", self.identity, exc)
            return _Outcome.FAILED

    async def _apply(self, lease: dict[str, Any] | None, current: LeaseRecord | None) -> _Outcome:
        decision = decide(
            current,
            self._observation,
            identity=self.identity,
            leading=self.is_leader,
            now=time.monotonic(),
            wall=datetime.now(UTC),
            lease_seconds=self._lease_seconds,
        )
        if decision.write is None:
            log.debug("%s: %s", self.identity, decision.reason)
            return _Outcome.NOT_LEADING
        if decision.action is not Action.RENEW:
            log.info("%s: %s: %s", self.identity, decision.action.value, decision.reason)
        sent = time.monotonic()  # the lease runs from no earlier than this, for everyone
        await self._write(lease, decision.write)
        self._renewed_at = sent
        return _Outcome.LEADING

    async def _write(self, lease: dict[str, Any] | None, record: LeaseRecord) -> None:
        """Create when ``lease`` is None, else replace it at its resourceVersion."""
        if lease is None:
            body: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": record.to_spec(),
            }
            written = await self.kube.request("POST", self._path, body)
        else:  # the whole object as read, so its resourceVersion makes the write conditional
            body = {**lease, "spec": {**(lease.get("spec") or {}), **record.to_spec()}}
            body.setdefault("apiVersion", "coordination.k8s.io/v1")
            body.setdefault("kind", "Lease")
            written = await self.kube.request("PUT", f"{self._path}/{self.name}", body)
        self._lease = written
        self._observation = Observation(
            LeaseRecord.from_spec(written.get("spec"), self._lease_seconds), time.monotonic()
        )

    async def _release(self) -> None:
        """Hand the lease back so a peer need not wait for it to expire."""
        if self._lease is None or self._observation is None:
            return
        now = micro_time(datetime.now(UTC))
        record = replace(
            self._observation.record,
            holder="",
            lease_duration_seconds=RELEASED_LEASE_SECONDS,
            acquire_time=now,
            renew_time=now,
        )
        try:
            async with asyncio.timeout(self.renew_deadline):
                await self._write(self._lease, record)
        except _API_ERRORS as exc:  # a conflict means someone else already wrote it
            log.warning("%s: cannot release the lease (it will expire): %s", self.identity, exc)
        else:
            log.info("%s: released %s/%s", self.identity, self.namespace, self.name)

    def _step_down(self, why: str) -> None:
        if not self.is_leader:
            return
        self.leading.clear()
        log.warning("%s: stopped leading %s/%s: %s", self.identity, self.namespace, self.name, why)
        self._callback(self.on_stopped_leading)

    def _callback(self, callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:  # a callback's bug must not end the election
            log.exception("%s: leader-election callback failed", self.identity)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when ``stop`` is set."""
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
