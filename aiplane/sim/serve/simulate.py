"""The discrete-event replay: a trace through a gateway, a router, replicas and an autoscaler.

Events, in virtual time: a request arrives; a replica's next prefill or finish falls due
(each replica says when, ``Replica.next_event``; a stale event is skipped by version); a
replica becomes ready after its cold start; a held or queued request reaches the
cold-start timeout; the autoscaler's next decision.

The gateway is modelled on aiplane's (``aiplane/gateway/slots.py``):

* no ready replica: the request is *held*, up to ``timeout`` (the Model's
  ``timeouts.coldStart``, 120 s by default), then dropped (a 503). A request held while
  no replica exists at all wakes the autoscaler at once (the gateway's demand signal);
* ready replicas but each at its slots (engines with slots, llama.cpp): the request is
  *queued* in the gateway, FIFO, the head taking the first slot to free, with the same
  timeout. Engines that batch inside (vLLM: ``slots`` None) get every request at once
  and queue it themselves (``engine_waiting``), as the gateway sends them;
* otherwise the router picks among the ready replicas with a free slot.

Scale-down drains, as aiplane's controller does: replicas still starting go first, then
the least loaded; a draining replica takes no new request and is gone once it has none.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiplane.gateway.load import LoadTracker
from aiplane.policies.routing import ReplicaLoad, Router, RouteRequest
from aiplane.sim.serve.autoscalers import SimAutoscaler, View
from aiplane.sim.serve.fleet import Fleet
from aiplane.sim.serve.profiles import Profile
from aiplane.sim.serve.replica import Replica
from aiplane.sim.serve.request import SimRequest
from aiplane.sim.serve.signals import SimSignals
from aiplane.sim.serve.traces import Trace

MODEL = "model"
COLD_START_TIMEOUT = 120.0  # the Model's timeouts.coldStart default

# Event kinds, in the order they run at one instant.
READY, REPLICA, ARRIVAL, TIMEOUT, TICK = range(5)

RouterFactory = Callable[[Fleet], Router]  # the oracle needs the fleet's true caches


@dataclass(frozen=True)
class Replay:
    """What a replay leaves: every request's fate, the fleet, and when it ended."""

    requests: list[SimRequest]
    fleet: Fleet
    end: float


def to_requests(trace: Trace, profile: Profile) -> list[SimRequest]:
    """The trace's requests, prompts cut to fit the profile's context."""
    out = []
    for i, r in enumerate(trace.requests):
        output = max(1, min(r.output_tokens, profile.max_context // 2))
        prompt = max(1, min(r.prompt_tokens, profile.max_context - output))
        out.append(SimRequest(i, r.arrival, prompt, output, r.blocks))
    return out


class Simulation:
    def __init__(
        self,
        trace: Trace,
        profile: Profile,
        router: RouterFactory,
        autoscaler: SimAutoscaler | None = None,
        *,
        replicas: int = 1,
        timeout: float = COLD_START_TIMEOUT,
    ) -> None:
        self.profile = profile
        self.requests = to_requests(trace, profile)
        self.fleet = Fleet(profile)
        self.router = router(self.fleet)
        self.router_state = self.router.new_state()
        self.autoscaler = autoscaler
        self.scaler_state: Any = autoscaler.initial() if autoscaler else None
        self.timeout = timeout
        self.now = 0.0
        self.load = LoadTracker(clock=lambda: self.now)
        self.signals = SimSignals(self.load, self.fleet)
        self.held: deque[SimRequest] = deque()
        self.queued: deque[SimRequest] = deque()
        self._events: list[tuple[float, int, int, Any]] = []
        self._order = 0
        self._resolved = 0
        self._tick = 0  # the current tick's number: an older TICK event is stale
        self._idle_tick = False  # the next tick is an idle one (Aiplane.settled)
        for _ in range(replicas):
            self.fleet.start(0.0, warm=True)

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> Replay:
        total = len(self.requests)
        arrivals = iter(self.requests)
        upcoming = next(arrivals, None)
        if self.autoscaler is not None:
            self._push(0.0, TICK, self._tick)
        while self._resolved < total:
            if upcoming is not None and (not self._events or upcoming.arrival <= self._events[0][0]):
                self.now = max(self.now, upcoming.arrival)
                self._arrive(upcoming)
                upcoming = next(arrivals, None)
                continue
            if not self._events:
                break  # nothing left can happen (no replica and no autoscaler)
            at, kind, _, payload = heapq.heappop(self._events)
            self.now = max(self.now, at)
            if kind == REPLICA:
                replica, version = payload
                if replica.version == version and replica.state != "gone":
                    self._finished(replica, replica.on_event(self.now))
            elif kind == READY:
                if payload.state == "starting":
                    self.fleet.mark_ready(payload, self.now)
                    self._flush()
            elif kind == TIMEOUT:
                self._timeout(payload)
            elif kind == TICK and payload == self._tick:
                self._on_tick()
        return Replay(self.requests, self.fleet, self.now)

    def _on_tick(self) -> None:
        assert self.autoscaler is not None
        changed = self._decide(wake=False)
        settled = getattr(self.autoscaler, "settled", None)
        quiet = not (changed or self.held or self.queued or any(r.outstanding for r in self.fleet.alive()))
        self._idle_tick = bool(quiet and settled is not None and settled(self.scaler_state))
        every = (
            getattr(self.autoscaler, "idle_interval", 0.0) if self._idle_tick else self.autoscaler.interval
        )
        self._tick += 1
        self._push(self.now + every, TICK, self._tick)

    def _push(self, at: float, kind: int, payload: Any) -> None:
        self._order += 1
        heapq.heappush(self._events, (at, kind, self._order, payload))

    def _schedule(self, replica: Replica) -> None:
        at = replica.next_event()
        if at is not None:
            self._push(max(at, self.now), REPLICA, (replica, replica.version))

    # --- the gateway -------------------------------------------------------------------
    def _arrive(self, r: SimRequest) -> None:
        if self._idle_tick and self.autoscaler is not None:  # back to deciding every interval
            self._idle_tick = False
            self._tick += 1
            self._push(self.now + self.autoscaler.interval, TICK, self._tick)
        self.load.arrived(MODEL)
        self._dispatch(r, fresh=True)
        if r.where in ("held", "queued"):
            self._push(r.arrival + self.timeout, TIMEOUT, r)

    def _candidates(self) -> tuple[list[Replica], list[Replica]]:
        ready = self.fleet.ready()
        slots = self.profile.slots
        free = ready if slots is None else [x for x in ready if x.outstanding < slots]
        return ready, free

    def _dispatch(self, r: SimRequest, *, fresh: bool) -> None:
        ready, free = self._candidates()
        if not ready:
            r.where = "held"
            self.held.append(r)
            self.load.held[MODEL] += 1
            if fresh and not self.fleet.current():
                self._decide(wake=True)
            return
        if not free:
            r.where = "queued"
            self.queued.append(r)
            self.load.queued[MODEL] += 1
            return
        self._send(r, free)

    def _send(self, r: SimRequest, free: list[Replica]) -> None:
        loads = [
            ReplicaLoad(
                x.id,
                x.outstanding,
                waiting=float(len(x.waiting)),
                kv_cache=x.kv_use,
                slots=self.profile.slots,
            )
            for x in free
        ]
        prefix = "-".join(str(b) for b in r.blocks[:2])  # what a prompt's first characters stand for
        request = RouteRequest(
            seq=r.seq, prefix=prefix, blocks=r.blocks, session=None, prompt_tokens=r.prompt, now=self.now
        )
        route = self.router.choose(loads, request, self.router_state)
        replica = self.fleet.replicas[route.replica_id] if route is not None else free[0]
        self.load.start(MODEL, replica.id)
        self._finished(replica, replica.submit(r, self.now))

    def _finished(self, replica: Replica, done: list[SimRequest]) -> None:
        for r in done:
            self.load.finish(MODEL, replica.id)
            assert r.finished_at is not None
            self.load.completed(MODEL, ttft=r.ttft, latency=r.finished_at - r.arrival, tokens=r.output)
            self._resolved += 1
        if replica.state == "draining" and replica.outstanding == 0:
            self.fleet.remove(replica, self.now)
        else:
            self._schedule(replica)
        if done and self.queued:
            self._flush()

    def _flush(self) -> None:
        """Held and queued requests take the replicas and slots there now are, oldest first."""
        for line in (self.held, self.queued):
            while line:
                r = line[0]
                if r.where not in ("held", "queued"):
                    line.popleft()  # dropped meanwhile
                    continue
                ready, free = self._candidates()
                if not ready or (line is self.queued and not free):
                    break
                line.popleft()
                counter = self.load.held if r.where == "held" else self.load.queued
                counter[MODEL] -= 1
                self._dispatch(r, fresh=False)

    def _timeout(self, r: SimRequest) -> None:
        if r.where not in ("held", "queued"):
            return
        counter = self.load.held if r.where == "held" else self.load.queued
        counter[MODEL] -= 1
        r.where = "dropped"
        r.dropped_at = self.now
        self._resolved += 1

    # --- the autoscaler ----------------------------------------------------------------
    def _decide(self, *, wake: bool) -> bool:
        """Ask the autoscaler and apply its answer; whether the replicas changed."""
        if self.autoscaler is None:
            return False
        current = self.fleet.current()
        view = View(
            now=self.now,
            signals=self.signals.read(MODEL, self.now),
            current=len(current),
            ready=sum(1 for x in current if x.state == "ready"),
        )
        if wake:
            decision, self.scaler_state = self.autoscaler.wake(view, self.scaler_state)
            if decision is None:
                return False
        else:
            decision, self.scaler_state = self.autoscaler.decide(view, self.scaler_state)
        self._scale(current, decision.replicas)
        return decision.replicas != len(current)

    def _scale(self, current: list[Replica], wanted: int) -> None:
        if wanted > len(current):
            for _ in range(wanted - len(current)):
                replica = self.fleet.start(self.now)
                self._push(self.now + self.profile.cold_start_s, READY, replica)
            return
        victims = sorted(current, key=lambda x: (x.state == "ready", x.outstanding, -x.started_at))
        for replica in victims[: len(current) - wanted]:
            if replica.state == "ready":
                self.router.forget(replica.id, self.router_state)
            if replica.outstanding == 0:
                self.fleet.remove(replica, self.now)
            else:
                replica.state = "draining"
