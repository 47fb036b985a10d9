"""Session affinity around any router: a session's requests stay on one replica.

A chat or an agent resends its whole history each turn, so the replica that served the
last turn caches all but the newest message. A request with ``session`` goes to that
replica unless it is gone or over the load bound; then the wrapped router picks, and the
session moves there. The table is an LRU bounded in entries.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiplane.policies.routing.base import RecordsRoutes, ReplicaLoad, Route, Router, RouteRequest
from aiplane.policies.routing.load import load_bound, load_of


@dataclass
class SessionState:
    inner: Any  # the wrapped router's own state
    sessions: OrderedDict[str, str] = field(default_factory=OrderedDict)  # session -> replica, oldest first


@dataclass(frozen=True)
class SessionAffinity:
    """``inner`` with sticky sessions.

    ``max_sessions`` 16,384: far more than the conversations whose history the replicas
    can still cache (a few hundred thousand tokens each, thousands of tokens a
    conversation), so the LRU only drops sessions whose cache is gone anyway; about 2 MB.
    ``load_factor`` 1.25 and ``bound_slack`` 1: the bound ``PrefixAware`` uses (see
    there): a session leaves its replica once that replica is 25% over the mean load.
    """

    inner: Router
    max_sessions: int = 16_384
    load_factor: float = 1.25
    bound_slack: int = 1

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1 (got {self.max_sessions})")

    @property
    def name(self) -> str:
        return f"{self.inner.name}+sessions"

    def new_state(self) -> SessionState:
        return SessionState(self.inner.new_state())

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: SessionState) -> Route | None:
        if not replicas:
            return None
        session = request.session
        if session is None:
            return self.inner.choose(replicas, request, state.inner)
        sessions = state.sessions
        last = sessions.get(session)
        if last is not None:
            replica = next((r for r in replicas if r.replica_id == last), None)
            if replica is not None:
                bound = load_bound(
                    sum(load_of(r) for r in replicas), len(replicas), self.load_factor, self.bound_slack
                )
                if load_of(replica) + 1 <= bound:
                    sessions.move_to_end(session)
                    if isinstance(self.inner, RecordsRoutes):
                        self.inner.record(last, request, state.inner)
                    return Route(last, "session affinity")
        route = self.inner.choose(replicas, request, state.inner)
        if route is not None:
            sessions[session] = route.replica_id
            sessions.move_to_end(session)
            while len(sessions) > self.max_sessions:
                sessions.popitem(last=False)
            if last is not None:
                why = "gone" if all(r.replica_id != last for r in replicas) else "over load bound"
                route = Route(route.replica_id, f"session moved ({why}): {route.reason}")
        return route

    def forget(self, replica_id: str, state: SessionState) -> None:
        self.inner.forget(replica_id, state.inner)
        for session in [s for s, r in state.sessions.items() if r == replica_id]:
            del state.sessions[session]
