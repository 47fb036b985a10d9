"""The gateway's view of a cluster: Models for routes, EndpointSlices for ready pods.

:class:`KubernetesDiscovery` implements :class:`aiplane.gateway.discovery.Discovery`
from an in-memory view that a background task refreshes about once a second. What the
objects mean is in :mod:`aiplane.runtime.kubernetes.routes` (pure); this module does
the I/O, the timing and the bookkeeping.

**Polling, not watching.** Each refresh is two LISTs: the Models (all namespaces, or
one) and the EndpointSlices of every Model Service (one call, selected by the
``aiplane.dev/model`` label the EndpointSlice controller copies from the Service, then
matched to Models by ``kubernetes.io/service-name``). Why not a watch:

* a watch needs a streamed response; ``Kube.request`` reads whole bodies, so a watch
  would go around the client and re-implement an informer (resourceVersions, 410
  Gone and relist, bookmarks, reconnects) whose every bug is a stale route;
* polling is level-triggered: each refresh is the whole truth, so a missed event, a
  restarted API server or a dropped connection heals on the next tick;
* a second of latency is nothing next to a cold start (tens of seconds to minutes),
  and a scaled-down pod keeps serving through its 10 s ``preStop`` sleep, longer than
  the gateway takes to notice it left the slice;
* the cost is two label-selected LISTs per second per gateway replica, which the API
  server answers from its watch cache (consistent reads from cache, Kubernetes 1.31+).

When a refresh fails, the last view is kept (pods keep serving while the API server
restarts); a replica that really went away is caught by :meth:`report_failure`.

**Served-name conflicts.** Two Models (in different namespaces, or under different
names) with the same served name: the one created first gets the name, on every
gateway replica alike; the other is not routed to and a warning is logged once.

**Cold starts.** :meth:`wait_for_upstreams` waits for the next refresh that brings a
ready pod, and counts the waiter in :meth:`demand` (the gateway's
``aiplane_gateway_requests_held`` gauge reports the same, for the operator's
autoscaler). A Model at zero replicas is scaled to one through its ``/scale`` at once
(``_scale_from_zero``), so nothing waits for the autoscaler's next look; a request
still without a replica after its ``coldStart`` timeout gets 503 with ``Retry-After``.

**Engine hints.** The routers weigh each replica's own engine queue and KV-cache use
(:meth:`engine_hint`), which only the engine knows. A second background task scrapes
every routed ready pod's ``/metrics`` (the engine adapter's ``metrics_path``, on the
slice's ``http`` port, named by its ``MetricNames``) every ``SCRAPE_EVERY`` seconds,
as the local plane does: all pods at once, each cut off after ``SCRAPE_TIMEOUT_S``,
so a slow pod answers "unknown" instead of delaying routing, which never waits on a
scrape. The cost is one GET per ready pod per 2 s per gateway replica, on kept-alive
connections; engines whose adapter names neither a queue nor a KV gauge are not
scraped. A hint is at most one round (``SCRAPE_EVERY + SCRAPE_TIMEOUT_S``) old, and a
pod that leaves the slice is forgotten at the next refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple, Protocol

import aiohttp

from aiplane.engines import EngineRegistry, MetricNames, default_registry
from aiplane.errors import AiplaneError, KubernetesError
from aiplane.gateway.discovery import ModelRoute, Upstream
from aiplane.runtime.engine_metrics import EngineSample, scrape
from aiplane.runtime.kubernetes.client import Manifest
from aiplane.runtime.kubernetes.constants import LABEL_MODEL
from aiplane.runtime.kubernetes.objects import API
from aiplane.runtime.kubernetes.routes import (
    MetricsTarget,
    ModelKey,
    elect,
    key_of,
    metrics_target,
    model_of,
    replica_count,
    route_of,
    upstreams_by_model,
)

log = logging.getLogger(__name__)

SLICE_API = "discovery.k8s.io/v1"
SLICE_SELECTOR = LABEL_MODEL
"""Slices of Model Services: the EndpointSlice controller copies the Service's labels."""

POLL_INTERVAL_S = 1.0
SUSPECT_FOR_S = 5.0
REFRESH_TIMEOUT_S = 10.0  # a hung LIST must not freeze the view forever
MAX_BACKOFF_S = 10.0
WAIT_SLICE_S = 1.0  # a waiter re-checks at least this often (suspects expire between refreshes)
WAKE_EVERY_S = 5.0  # a held request asks /scale again if the last ask did not take
SCRAPE_EVERY = 2.0  # engine metrics, as often as the local plane scrapes them
SCRAPE_TIMEOUT_S = 1.0  # a pod slower than this reports nothing this round
SCRAPE_KEEPALIVE_S = 4.0  # under the engines' 5 s idle close, over SCRAPE_EVERY: connections are reused


class _Parsed(NamedTuple):
    route: ModelRoute
    target: MetricsTarget | None


class Lister(Protocol):
    """The client calls discovery makes; :class:`~aiplane.runtime.kubernetes.client.Kube` has them."""

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[Manifest]: ...

    async def patch_merge(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: Manifest, sub: str = ""
    ) -> Manifest: ...


class KubernetesDiscovery:
    def __init__(
        self,
        kube: Lister,
        namespace: str | None = None,
        *,
        engines: EngineRegistry | None = None,
        interval: float = POLL_INTERVAL_S,
        suspect_for: float = SUSPECT_FOR_S,
        scrape_every: float = SCRAPE_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._engines = engines or default_registry()
        self._interval = interval
        self._suspect_for = suspect_for
        self._scrape_every = scrape_every
        self._clock = clock
        self._routes: dict[str, ModelRoute] = {}
        self._owners: dict[str, ModelKey] = {}
        self._ready: dict[ModelKey, list[Upstream]] = {}
        self._suspects: dict[Upstream, float] = {}
        self._parsed: dict[tuple[str, str], _Parsed | None] = {}  # (uid, generation) -> route
        self._targets: dict[ModelKey, MetricsTarget | None] = {}
        self._engine: dict[str, tuple[Upstream, EngineSample]] = {}  # replica id -> last sample
        self._conflicts: set[str] = set()
        self._waiting: Counter[str] = Counter()
        self._replicas: dict[ModelKey, int] = {}  # each Model's spec.replicas.count()
        self._woken: dict[ModelKey, float] = {}  # when this gateway last scaled it from zero
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._scraper: asyncio.Task[None] | None = None

    # -- the Discovery protocol ---------------------------------------------------
    def models(self) -> list[ModelRoute]:
        return sorted(self._routes.values(), key=lambda r: r.served_name)

    def lookup(self, served_name: str) -> ModelRoute | None:
        return self._routes.get(served_name)

    def upstreams(self, served_name: str) -> list[Upstream]:
        owner = self._owners.get(served_name)
        if owner is None:
            return []
        now = self._clock()
        return [u for u in self._ready.get(owner, []) if self._suspects.get(u, 0.0) <= now]

    async def wait_for_upstreams(self, served_name: str, timeout: float) -> list[Upstream]:
        deadline = self._clock() + timeout
        self._waiting[served_name] += 1
        try:
            while not (ready := self.upstreams(served_name)):
                await self._scale_from_zero(served_name)
                remaining = deadline - self._clock()
                if remaining <= 0 or self.lookup(served_name) is None:  # a deleted Model stops the wait
                    return []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, WAIT_SLICE_S)):
                        await self._changed.wait()
            return ready
        finally:
            self._waiting[served_name] -= 1
            if self._waiting[served_name] <= 0:
                del self._waiting[served_name]

    def report_failure(self, upstream: Upstream, error: str) -> None:
        """Keep the pod out of routing for a few seconds; the slice is the truth after that.

        A pod its slice already dropped needs no mark. The window is short because the
        gateway cannot probe a pod itself: if it is still failing, the next request
        reports it again.
        """
        if not any(upstream in ups for ups in self._ready.values()):
            return
        log.warning("upstream %s (%s) failed: %s; not routing to it for %gs",
                    upstream.replica_id, upstream.base_url, error, self._suspect_for)  # fmt: skip
        self._suspects[upstream] = self._clock() + self._suspect_for

    def unavailable(self, served_name: str) -> str | None:
        """Never: pods that crash-loop are the Deployment's to restart, so a held request
        waits out its cold-start timeout (the Model's status shows why)."""
        return None

    async def _scale_from_zero(self, served_name: str) -> None:
        """A request is held for a Model that runs no replica: ask its ``/scale`` for one,
        as KubeAI's proxy does, so the cold start begins now rather than at the
        autoscaler's next look. At most once per ``WAKE_EVERY_S`` per Model; the
        autoscaler sees the held request and keeps the replica."""
        owner = self._owners.get(served_name)
        if owner is None or self._replicas.get(owner, 1) > 0:
            return
        now = self._clock()
        if now - self._woken.get(owner, -WAKE_EVERY_S) < WAKE_EVERY_S:
            return
        self._woken[owner] = now
        try:
            await self._kube.patch_merge(
                API, "Model", owner.name, owner.namespace, {"spec": {"replicas": 1}}, "scale"
            )
        except (AiplaneError, aiohttp.ClientError, OSError) as exc:
            log.warning("cannot scale %s from zero for a held request: %s", owner, exc)
            return
        log.info("scaled %s from zero: a request for %s is held", owner, served_name)
        self._replicas[owner] = 1

    # -- what the Kubernetes gateway adds -------------------------------------------
    def engine_hint(self, replica_id: str) -> tuple[float | None, float | None]:
        """A pod's last engine report (waiting, KV use) by its replica id, for the
        gateway's routers; (None, None) for a pod not scraped (yet) or not reporting."""
        got = self._engine.get(replica_id)
        return (got[1].waiting, got[1].kv_cache) if got else (None, None)

    def demand(self) -> dict[str, int]:
        """Requests waiting for a first ready replica, by served name (for scale-from-zero)."""
        return {name: n for name, n in self._waiting.items() if n > 0}

    async def refresh(self) -> None:
        """One poll: the whole truth replaces the view, then every waiter re-checks."""
        models = await self._kube.list(API, "Model", self._namespace)
        slices = await self._kube.list(SLICE_API, "EndpointSlice", self._namespace, SLICE_SELECTOR)
        self.update(models, slices)

    def update(self, models: list[Manifest], slices: list[Manifest]) -> None:
        """Replace the view with what was just listed (public: fed directly by unit tests)."""
        elected = elect(self._candidates(models))
        for conflict in sorted(set(elected.conflicts) - self._conflicts):
            log.warning("%s", conflict)
        self._conflicts = set(elected.conflicts)
        self._routes, self._owners = elected.routes, elected.owners
        self._replicas = {key_of(m): replica_count(m) for m in models}
        self._ready = upstreams_by_model(slices)
        now = self._clock()
        self._suspects = {u: until for u, until in self._suspects.items() if until > now}
        scraped = {u for u, _, _ in self._scrape_jobs()}
        self._engine = {rid: got for rid, got in self._engine.items() if got[0] in scraped}
        self._notify()

    def _candidates(self, models: list[Manifest]) -> list[tuple[ModelKey, ModelRoute]]:
        """Routes of the listed Models, parsed once per spec generation; bad ones skipped.
        Each Model's metrics target is kept alongside, for the scraper."""
        parsed: dict[tuple[str, str], _Parsed | None] = {}
        targets: dict[ModelKey, MetricsTarget | None] = {}
        out = []
        for body in models:
            meta = body.get("metadata") or {}
            cache_key = (str(meta.get("uid") or key_of(body)), str(meta.get("generation", "")))
            entry = self._parsed[cache_key] if cache_key in self._parsed else self._parse(body)
            parsed[cache_key] = entry
            if entry is not None:
                out.append((key_of(body), entry.route))
                targets[key_of(body)] = entry.target
        self._parsed = parsed  # forget deleted Models and old generations
        self._targets = targets
        return out

    def _parse(self, body: Manifest) -> _Parsed | None:
        try:
            model = model_of(body)
            route = route_of(model, body, self._engines)
        except (AiplaneError, ValueError, TypeError) as exc:
            log.warning("Model %s is not routed: %s", key_of(body), exc)
            return None
        try:
            target = metrics_target(model, self._engines)
        except (AiplaneError, ValueError, TypeError) as exc:  # routed all the same, without hints
            log.warning("Model %s: not scraping its engine metrics: %s", key_of(body), exc)
            target = None
        return _Parsed(route, target)

    def _notify(self) -> None:
        """Wake every waiter: a fresh Event per refresh, so no waiter misses one."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- the engine scraper -------------------------------------------------------------
    def _scrape_jobs(self) -> list[tuple[Upstream, str, MetricNames]]:
        """(pod, metrics URL, names) for every ready pod of a routed Model that reports load."""
        jobs = []
        for key in dict.fromkeys(self._owners.values()):
            if target := self._targets.get(key):
                jobs += [(u, u.base_url + target.path, target.names) for u in self._ready.get(key, [])]
        return jobs

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        """One round: every pod at once, the slowest cut off at ``SCRAPE_TIMEOUT_S``; a pod
        that left the view while its answer was on the way is not kept."""
        jobs = self._scrape_jobs()
        samples = await asyncio.gather(
            *(scrape(session, url, names, SCRAPE_TIMEOUT_S) for _, url, names in jobs)
        )
        still = {u for u, _, _ in self._scrape_jobs()}
        self._engine = {
            u.replica_id: (u, sample) for (u, _, _), sample in zip(jobs, samples, strict=True) if u in still
        }

    async def _scrape(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=SCRAPE_KEEPALIVE_S)
        async with aiohttp.ClientSession(connector=connector) as session:
            failing = False
            while True:
                try:
                    await self.scrape_once(session)
                except Exception:  # the scraper must outlive any one bad round
                    if not failing:  # once per streak: a bug, not a slow pod (that reads as unknown)
                        log.exception("scraping engine metrics failed")
                    failing = True
                else:
                    failing = False
                await asyncio.sleep(self._scrape_every)

    # -- the poller --------------------------------------------------------------------
    async def start(self) -> None:
        """First refresh in the foreground: a gateway that cannot read the cluster says so
        at start-up (bad credentials, missing RBAC, no CRD) instead of answering 404s."""
        if self._task is not None:
            return
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                await self.refresh()
        except TimeoutError:
            raise KubernetesError(f"listing Models took over {REFRESH_TIMEOUT_S:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise KubernetesError(f"cannot reach the Kubernetes API server: {exc}") from exc
        self._task = asyncio.create_task(self._poll(), name="kubernetes-discovery")
        self._scraper = asyncio.create_task(self._scrape(), name="kubernetes-engine-scrape")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._scraper) if t is not None]
        self._task = self._scraper = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._engine = {}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[KubernetesDiscovery]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def _poll(self) -> None:
        failures = 0
        while True:
            delay = self._interval
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT_S):
                    await self.refresh()
            except Exception as exc:  # the poller must outlive any one failed refresh
                failures += 1
                delay = min(self._interval * 2 ** min(failures, 8), MAX_BACKOFF_S)
                if failures % 30 == 1:  # the first of a streak, then every few minutes
                    log.warning("refreshing routes failed (%d in a row), keeping the last view: %s: %s",
                                failures, type(exc).__name__, exc)  # fmt: skip
            else:
                if failures:
                    log.info("refreshing routes works again after %d failures", failures)
                failures = 0
            await asyncio.sleep(delay)
