"""Routing types: the replicas a request may go to, the request, and the choice.

A router may keep state between requests (an estimate of each replica's prefix cache,
a session table). The caller owns it: ``router.new_state()`` once per model, then every
``choose`` gets it and may update it in place. Mutating in place keeps a decision
O(prefix) rather than a copy of every replica's cache estimate; the policy still does no
I/O and reads no clock (``request.now`` is an input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ReplicaLoad:
    replica_id: str
    in_flight: int  # requests the gateway has at this replica
    waiting: float | None = None  # the engine's own queue, when it reports one
    kv_cache: float | None = None  # the engine's KV-cache use 0..1, when it reports one
    slots: int | None = None  # requests it takes at once (None: unbounded, batches inside)


@dataclass(frozen=True)
class RouteRequest:
    """What a router may look at.

    ``seq`` numbers requests (fair tie-breaks). ``prefix`` is the start of the prompt
    (what KubeAI's CHWBL hashes). ``blocks`` are chained hashes of the prompt's
    successive fixed-size blocks, as vLLM's prefix cache keys them: equal leading blocks
    mean a shared prefix. ``session`` is the client's session header, if any.
    """

    seq: int
    prefix: str = ""
    blocks: tuple[int, ...] = ()
    session: str | None = None
    prompt_tokens: int = 0
    now: float = 0.0


@dataclass(frozen=True)
class Route:
    replica_id: str
    reason: str


class Router(Protocol):
    @property
    def name(self) -> str: ...

    def new_state(self) -> Any:
        """Fresh memory for one model (None for a stateless router)."""
        ...

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest, state: Any) -> Route | None:
        """The replica for ``request``, or None when there is none; may update ``state``."""
        ...

    def forget(self, replica_id: str, state: Any) -> None:
        """A replica left (scaled down, failed): drop what ``state`` knows of it."""
        ...


@runtime_checkable
class RecordsRoutes(Protocol):
    """Optional, for a router with memory: learn of a request routed by someone else.

    A wrapper that decides itself (``SessionAffinity`` keeping a session on its replica)
    calls it, so the wrapped router's memory (``PrefixAware``'s cache estimate) still
    sees every request that reached the replica.
    """

    def record(self, replica_id: str, request: RouteRequest, state: Any) -> None: ...
