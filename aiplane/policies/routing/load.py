"""Load measures the routers share: a replica's load, the least loaded, the load bound, and
(for ``PrefixAware``) how much prefill work waits at a replica and how fast replicas work it off."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from aiplane.policies.routing.base import ReplicaLoad


def load_of(replica: ReplicaLoad) -> float:
    """Requests at a replica: the gateway's in flight plus the engine's own queue, if reported."""
    return replica.in_flight + (replica.waiting or 0.0)


def least_loaded(replicas: Sequence[ReplicaLoad], seq: int) -> ReplicaLoad:
    """The least loaded replica; ties rotate over ``seq`` so equal replicas share evenly.

    ``replicas`` must not be empty. One pass for the minimum, one for the tied.
    """
    least = min(load_of(r) for r in replicas)
    tied = [r for r in replicas if load_of(r) == least]
    return tied[seq % len(tied)]


def load_bound(total: float, replicas: int, load_factor: float, slack: int = 0) -> int:
    """The most requests a replica may hold, this one included, under a bounded-load rule.

    ``ceil(load_factor * (total + 1) / replicas) + slack``: consistent hashing with bounded
    loads (Mirrokni, Thorup and Zadimoghaddam, SODA 2018) caps every bin at ``(1 + eps)``
    times the mean, rounded up, counting the ball being placed. ``slack`` lets a replica
    hold a few more than that at low load, where the rounding alone would move a prefix
    off its owner at the second concurrent request.
    """
    return math.ceil(load_factor * (total + 1) / replicas) + slack


class PrefillRate:
    """The prefill work one replica gets through a second, learned from the engines' queues.

    Work is whatever unit the caller counts a prompt's prefill in (``PrefixAware``:
    equivalent tokens, its own estimate of each request's uncached work, so the rate is
    in the same terms as the estimates it drains). An engine with requests waiting is
    prefilling flat out (vLLM takes waiting requests as the running prefills leave room
    in the iteration's token budget), so the work that leaves the queue over a stretch
    that starts with one, over the stretch's length, is the rate. Such a stretch counts
    whole, even when the queue empties in it: with vLLM the last ones to leave are
    prefilled after it, and dropping those stretches (counting only stretches with a
    queue at both ends) read a sixth to a half of the true rate on the Mooncake replays,
    since they are where a long prefill's queue finally moves. A stretch that starts with
    no queue does not count: the prefill that made the queue form started before it.
    Nor does one whose engine reported its KV cache full (``kv_ok`` false): requests then
    wait for memory, not compute.

    Measured on the simulator's H100 profile (27k equivalent tokens/s while prefilling)
    replaying Mooncake: a median of 1.15x that at 4x the trace's rate, 0.8x at 8x. It
    reads low when prefills are short against the gaps between looks (the engine may
    idle in a stretch counted whole); a low rate makes the router count backlogs longer
    than they are, so it spreads more; a high one leans on the engine's queue count.

    The sums decay with ``exp(-seconds / horizon)``, ``horizon`` in replica-seconds of
    queue observed (all replicas pool into one rate: replicas of a model are alike).
    """

    __slots__ = ("horizon", "seconds", "work")

    def __init__(self, horizon: float = 60.0) -> None:
        if horizon <= 0:
            raise ValueError(f"horizon must be positive (got {horizon})")
        self.horizon = horizon
        self.work = 0.0
        self.seconds = 0.0

    def sample(self, work: float, seconds: float) -> None:
        """``work`` started at a replica over ``seconds`` during which it had a queue."""
        keep = math.exp(-seconds / self.horizon)
        self.work = self.work * keep + work
        self.seconds = self.seconds * keep + seconds

    @property
    def per_second(self) -> float | None:
        """The learned rate, or None before any work was seen starting from a queue."""
        return self.work / self.seconds if self.work > 0 and self.seconds > 0 else None


class EngineQueue:
    """One replica's prefill backlog as the router can know it: what it sent there, in order.

    * ``queued``: the estimated work of requests sent here that the engine still reports as
      waiting. The engine's queue is first come, first served (vLLM's scheduler takes its
      waiting queue in order), so when it reports ``w`` waiting, they are the last ``w``
      this router sent; older ones have started (``observe``). Their sum is a floor on the
      backlog that needs no rate: work the engine has not begun.
    * ``backlog`` at ``backlog_at``: every request's work added as it is sent, drained at the
      learned rate since (a fluid queue): this also counts prefills that have started and
      not finished, which the engine's queue does not show. Empty once nothing is in flight.
    """

    __slots__ = ("backlog", "backlog_at", "counts", "queued", "queued_work", "seen_at", "waiting")

    def __init__(self) -> None:
        self.queued: deque[float] = deque()
        self.queued_work = 0.0
        self.backlog = 0.0
        self.backlog_at = 0.0
        self.waiting: int | None = None  # the engine's queue at the last observation
        self.seen_at = 0.0
        self.counts = False  # the stretch since the last observation counts toward the rate

    def observe(self, waiting: float, kv_ok: bool, now: float, rate: PrefillRate) -> None:
        """The engine reports ``waiting`` requests at ``now``: those before them have started."""
        w = int(waiting + 0.5) if waiting > 0 else 0
        queued = self.queued
        started = 0.0
        if len(queued) > w:
            while len(queued) > w:
                started += queued.popleft()
            self.queued_work = self.queued_work - started if queued else 0.0
        if self.counts and now > self.seen_at:
            rate.sample(started, now - self.seen_at)
        self.counts = w > 0 and kv_ok
        self.waiting = w
        self.seen_at = now

    def wait(self, now: float, rate: float | None, in_flight: int) -> float:
        """Estimated prefill work ahead of a request sent now: at least what is queued."""
        floor = self.queued_work if self.waiting else 0.0
        if rate is None or not in_flight:
            return floor
        fluid = self.backlog - rate * (now - self.backlog_at)
        return fluid if fluid > floor else floor

    def sent(self, work: float, now: float, rate: float | None, in_flight: int, *, queues: bool) -> None:
        """A request with ``work`` to prefill was sent here at ``now``, ``in_flight`` already
        here; ``queues``: the engine reports its queue, so the request is tracked in it."""
        if queues:
            self.queued.append(work)
            self.queued_work += work
        if rate is not None:
            left = self.backlog - rate * (now - self.backlog_at) if in_flight else 0.0
            self.backlog = max(0.0, left) + work
            self.backlog_at = now
