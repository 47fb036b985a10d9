"""Routing policies and their registry."""

from aiplane.policies.routing.base import ReplicaLoad, Route, Router, RouteRequest
from aiplane.policies.routing.strategies import LeastLoad, PowerOfTwo, PrefixHash


def router_for(name: str) -> Router:
    """The router a Model's ``routing.strategy`` names."""
    table: dict[str, Router] = {
        "least-load": LeastLoad(),
        "power-of-two": PowerOfTwo(),
        "prefix-hash": PrefixHash(),
    }
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r} (known: {sorted(table)})") from None


__all__ = [
    "LeastLoad",
    "PowerOfTwo",
    "PrefixHash",
    "ReplicaLoad",
    "Route",
    "RouteRequest",
    "Router",
    "router_for",
]
