"""The gateway's view of the local plane: served names, ready replicas, cold-start waits."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiplane.api import Model
from aiplane.engines import EngineRegistry
from aiplane.gateway.discovery import ModelRoute, Upstream
from aiplane.runtime.local.supervisor import Supervisor
from aiplane.runtime.model_route import model_route


class LocalDiscovery:
    def __init__(self, supervisor: Supervisor, engines: EngineRegistry) -> None:
        self._supervisor = supervisor
        self._engines = engines
        self._routes: dict[str, ModelRoute] = {}
        self._blocked: dict[str, str] = {}  # model name -> why it cannot start
        self._changed = asyncio.Event()
        self.demand = asyncio.Event()  # set when a request waits: wakes the controller

    def set_models(self, models: list[tuple[Model, float]]) -> None:
        routes = {}
        for model, created in models:
            routes[model.served_name] = model_route(model, model.name, created, self._engines)
        self._routes = routes

    def models(self) -> list[ModelRoute]:
        return sorted(self._routes.values(), key=lambda r: r.served_name)

    def lookup(self, served_name: str) -> ModelRoute | None:
        return self._routes.get(served_name)

    def upstreams(self, served_name: str) -> list[Upstream]:
        route = self._routes.get(served_name)
        if route is None:
            return []
        return [
            Upstream(r.id, r.base_url)
            for r in self._supervisor.replicas.values()
            if r.model == route.owner and r.routable
        ]

    async def wait_for_upstreams(self, served_name: str, timeout: float) -> list[Upstream]:
        deadline = time.monotonic() + timeout
        while not (ready := self.upstreams(served_name)):
            self.demand.set()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.unavailable(served_name):
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self._changed.wait()
        return ready

    def report_failure(self, upstream: Upstream, error: str) -> None:
        self._supervisor.report_failure(upstream.replica_id, error)

    def unavailable(self, served_name: str) -> str | None:
        route = self._routes.get(served_name)
        return self._blocked.get(route.owner) if route else None

    def set_unavailable(self, model: str, reason: str | None) -> None:
        """The controller's verdict for a model, each reconcile; waiters hear of a change."""
        if self._blocked.get(model) == reason:
            return
        if reason is None:
            self._blocked.pop(model, None)
        else:
            self._blocked[model] = reason
        self.notify()

    def notify(self) -> None:
        """Wake every waiter: replica states changed. A fresh Event per change, no lock."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
