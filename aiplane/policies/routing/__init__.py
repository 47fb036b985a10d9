"""Routing policies and their registry.

Every router follows ``base.Router``: ``new_state()`` once per model, then
``choose(replicas, request, state)`` per request (it may update ``state`` in place) and
``forget(replica_id, state)`` when a replica leaves. Reasons read ``what: detail``.

* ``least-load``, ``power-of-two`` (``strategies``): load only, stateless.
* ``round-robin``, ``random`` (``baselines``): load-blind baselines, deterministic.
* ``chwbl`` (``chwbl``), alias ``prefix-hash``: KubeAI's consistent hashing with bounded
  loads on the prompt prefix.
* ``aiplane`` (``prefix_aware``), alias ``prefix-aware``: estimated prefix cache per
  replica, longest cached prefix minus load, within a load bound.
* ``SessionAffinity(inner)`` (``session``) wraps any of them with sticky sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from aiplane.policies.routing.base import RecordsRoutes, ReplicaLoad, Route, Router, RouteRequest
from aiplane.policies.routing.baselines import Random, RoundRobin
from aiplane.policies.routing.chwbl import CHWBL
from aiplane.policies.routing.prefix_aware import PrefixAware
from aiplane.policies.routing.session import SessionAffinity
from aiplane.policies.routing.strategies import LeastLoad, PowerOfTwo

# The names a Model's ``routing.strategy`` may take, in the order the docs list them.
ROUTING_STRATEGIES: tuple[str, ...] = (
    "least-load",
    "power-of-two",
    "round-robin",
    "random",
    "chwbl",
    "prefix-hash",
    "aiplane",
    "prefix-aware",
)


def routers() -> dict[str, Callable[..., Router]]:
    """A fresh name -> router class table; aliases map to the same class."""
    return {
        "least-load": LeastLoad,
        "power-of-two": PowerOfTwo,
        "round-robin": RoundRobin,
        "random": Random,
        "chwbl": CHWBL,
        "prefix-hash": CHWBL,  # its name before CHWBL replaced rendezvous hashing
        "aiplane": PrefixAware,
        "prefix-aware": PrefixAware,
    }


def router_for(name: str, **params: Any) -> Router:
    """The router a Model's ``routing.strategy`` names, with its parameters (dataclass fields).

    An unknown name or parameter is a ``ValueError`` that lists the known ones.
    """
    table = routers()
    try:
        kind = table[name]
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r} (known: {', '.join(table)})") from None
    accepted = [f.name for f in fields(kind) if f.name != "name"]  # type: ignore[arg-type]
    if unknown := sorted(set(params) - set(accepted)):
        takes = ", ".join(accepted) or "no parameters"
        raise ValueError(f"routing strategy {name!r} has no parameter {', '.join(unknown)} (takes: {takes})")
    return kind(**params)


__all__ = [
    "CHWBL",
    "ROUTING_STRATEGIES",
    "LeastLoad",
    "PowerOfTwo",
    "PrefixAware",
    "Random",
    "RecordsRoutes",
    "ReplicaLoad",
    "RoundRobin",
    "Route",
    "RouteRequest",
    "Router",
    "SessionAffinity",
    "router_for",
    "routers",
]
