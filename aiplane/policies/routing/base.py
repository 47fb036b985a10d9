"""Routing types: the replicas a request may go to, and the choice with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ReplicaLoad:
    replica_id: str
    in_flight: int


@dataclass(frozen=True)
class RouteRequest:
    """What a router may look at: a sequence number (for fair tie-breaks) and a prefix."""

    seq: int
    prefix: str = ""


@dataclass(frozen=True)
class Route:
    replica_id: str
    reason: str


class Router(Protocol):
    @property
    def name(self) -> str: ...

    def choose(self, replicas: list[ReplicaLoad], request: RouteRequest) -> Route | None: ...
