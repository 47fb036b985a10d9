"""Pure functions from API objects to the gateway's routing view: no client, no clock.

:mod:`aiplane.runtime.kubernetes.discovery` fetches Models and EndpointSlices and hands
the plain dicts to these functions, so what a slice or a Model *means* for routing is
tested with dict fixtures, without a cluster.

* A Model becomes one :class:`ModelRoute` (served name, engine endpoints, router,
  timeouts). Two Models claiming the same served name (in different namespaces, or
  under different names in one) are a conflict: the **oldest by creation** wins (ties
  broken by ``namespace/name``, so every gateway replica picks the same one) and the
  loser is reported, never routed to.
* An EndpointSlice becomes upstreams: every endpoint whose ``ready`` condition holds,
  addressed as ``http://<ip>:<port>`` with the slice's port named ``http`` (the pod
  port, not the Service's 80), so least-load routing balances per pod instead of
  through kube-proxy. A terminating pod has ``ready: false`` and drops out while its
  ``preStop`` sleep keeps it serving the requests it already has.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from aiplane.api import Model
from aiplane.engines import EngineRegistry, MetricNames
from aiplane.gateway.discovery import ModelRoute, Upstream
from aiplane.runtime.kubernetes.objects import from_body
from aiplane.runtime.model_route import model_route

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""Set by the EndpointSlice controller on every slice it manages for a Service."""

PORT_NAME = "http"
"""The container port the Model's Service targets (see lowering/model.py)."""

Body = Mapping[str, Any]


@dataclass(frozen=True, order=True)
class ModelKey:
    """A Model's identity in the cluster; its Service (and so its slices) share the name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def key_of(body: Body) -> ModelKey:
    meta = body.get("metadata") or {}
    return ModelKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def created_at(body: Body) -> float:
    """``creationTimestamp`` as epoch seconds (0 when absent: only dict fixtures lack it)."""
    stamp = (body.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return 0.0
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def model_of(body: Body) -> Model:
    """The Model a custom resource's body stands for; TypeError for any other kind."""
    model = from_body(body)
    if not isinstance(model, Model):
        raise TypeError(f"{key_of(body)} is a {type(model).__name__}, not a Model")
    return model


def route_of(model: Model, body: Body, engines: EngineRegistry) -> ModelRoute:
    """The route of ``model`` (parsed from ``body``, whose key and age it carries)."""
    return model_route(model, str(key_of(body)), created_at(body), engines)


def route_from_body(body: Body, engines: EngineRegistry) -> ModelRoute:
    """The route a Model custom resource stands for.

    Raises :class:`aiplane.errors.ValidationError` (a spec the API rejects) or
    :class:`aiplane.errors.EngineError` (an engine this gateway does not know): the
    caller skips that Model and says why, instead of dropping every route.
    """
    return route_of(model_of(body), body, engines)


class MetricsTarget(NamedTuple):
    """Where a Model's pods export their engine's load, and under which names."""

    path: str
    names: MetricNames


def metrics_target(model: Model, engines: EngineRegistry) -> MetricsTarget | None:
    """The engine's metrics path (the one the lowering annotates its pods with, served on
    the API port) and names; None if it exports no queue or KV gauge the routers use."""
    engine = engines.get(model.spec.engine)
    if not (engine.metrics.waiting or engine.metrics.kv_cache_usage):
        return None
    path = engine.container(model, "").probes.metrics_path  # probes do not depend on the path
    return MetricsTarget(path, engine.metrics) if path else None


@dataclass(frozen=True)
class Elected:
    """Routes by served name, which Model each came from, and the conflicts to report."""

    routes: dict[str, ModelRoute]
    owners: dict[str, ModelKey]
    conflicts: list[str]


def elect(candidates: Iterable[tuple[ModelKey, ModelRoute]]) -> Elected:
    """One route per served name: the oldest Model wins, deterministically on every replica."""
    ordered = sorted(candidates, key=lambda c: (c[1].created, c[0]))
    routes: dict[str, ModelRoute] = {}
    owners: dict[str, ModelKey] = {}
    conflicts: list[str] = []
    for key, route in ordered:
        name = route.served_name
        if name in routes:
            conflicts.append(
                f"served model name {name!r} is claimed by Model {owners[name]} and Model {key}; "
                f"routing to {owners[name]} (created first), ignoring {key}"
            )
            continue
        routes[name] = route
        owners[name] = key
    return Elected(routes, owners, conflicts)


def _port(slice_: Body) -> int | None:
    for port in slice_.get("ports") or []:
        if port.get("name") == PORT_NAME and port.get("port"):
            return int(port["port"])
    return None


def _url(address: str, port: int) -> str | None:
    """``http://10.0.0.5:8000``, ``http://[fd00::5]:8000`` for IPv6; None for a non-IP."""
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        return None
    return f"http://[{address}]:{port}" if version == 6 else f"http://{address}:{port}"


def is_ready(endpoint: Body) -> bool:
    """``ready`` unset means unknown, which the API says consumers should treat as ready."""
    ready = (endpoint.get("conditions") or {}).get("ready")
    return ready is None or bool(ready)


def _slice_order(slice_: Body) -> tuple[bool, str]:
    return slice_.get("addressType") != "IPv4", str((slice_.get("metadata") or {}).get("name"))


def slice_upstreams(slices: Iterable[Body]) -> list[Upstream]:
    """Ready endpoints of one Service's slices, one upstream per pod, sorted by replica id.

    A pod appears once even when it is in two slices (dual-stack, or briefly during a
    slice split): the first address seen wins, IPv4 slices before IPv6.
    """
    found: dict[str, Upstream] = {}
    ordered = sorted(slices, key=_slice_order)
    for slice_ in ordered:
        port = _port(slice_)
        if port is None or slice_.get("addressType") not in ("IPv4", "IPv6"):
            continue
        for endpoint in slice_.get("endpoints") or []:
            addresses = endpoint.get("addresses") or []
            url = _url(str(addresses[0]), port) if addresses else None
            if url is None or not is_ready(endpoint):
                continue
            ref = endpoint.get("targetRef") or {}
            replica_id = str(ref["name"]) if ref.get("kind") == "Pod" and ref.get("name") else addresses[0]
            found.setdefault(replica_id, Upstream(replica_id, url))
    return sorted(found.values(), key=lambda u: u.replica_id)


def group_slices(slices: Iterable[Body]) -> dict[ModelKey, list[Body]]:
    """Slices by the Service they belong to, which is named after its Model."""
    groups: dict[ModelKey, list[Body]] = {}
    for slice_ in slices:
        meta = slice_.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            groups.setdefault(ModelKey(str(meta.get("namespace") or ""), str(service)), []).append(slice_)
    return groups


def upstreams_by_model(slices: Iterable[Body]) -> dict[ModelKey, list[Upstream]]:
    return {
        key: [replace(u, namespace=key.namespace) for u in slice_upstreams(group)]
        for key, group in group_slices(slices).items()
    }


def replica_count(body: Body) -> int:
    """The replicas a Model body asks for: ``spec.replicas.desired`` within its bounds,
    else ``min`` (read from the raw body: a Model the API rejects still has a count)."""
    replicas = (body.get("spec") or {}).get("replicas") or {}
    low, high = int(replicas.get("min", 1)), int(replicas.get("max", max(1, int(replicas.get("min", 1)))))
    desired = replicas.get("desired")
    return low if desired is None else min(max(int(desired), low), high)
