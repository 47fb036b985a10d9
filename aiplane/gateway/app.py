"""The OpenAI-compatible gateway: one aiohttp app in front of every model's replicas.

Routes by the ``model`` field, holds requests through a cold start, balances with the
model's routing policy, and answers every error in OpenAI's JSON shape.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aiplane.gateway.auth import authorized
from aiplane.gateway.discovery import Discovery, ModelRoute, Upstream
from aiplane.gateway.load import LoadTracker
from aiplane.gateway.metrics import GatewayMetrics, ReplicaInfo
from aiplane.gateway.proxy import CLIENT_CLOSED, Outcome, UpstreamUnavailable, forward
from aiplane.gateway.requests import InferenceRequest, parse_body, shape_for
from aiplane.gateway.slots import SlotQueue
from aiplane.openai_errors import OpenAIError, error_response
from aiplane.policies.routing import ReplicaLoad, RouteRequest

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024 * 1024
ATTEMPTS = 2
UPSTREAM_KEEPALIVE_S = 4.0
COLD_START_RETRY_AFTER = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class GatewayConfig:
    api_keys: frozenset[str] = frozenset()
    max_body_bytes: int = MAX_BODY


@dataclass
class Gateway:
    discovery: Discovery
    load: LoadTracker = field(default_factory=LoadTracker)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    slots: SlotQueue = field(default_factory=SlotQueue)
    config: GatewayConfig = field(default_factory=GatewayConfig)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _session: aiohttp.ClientSession | None = None
    # Each model's router memory (prefix-cache estimates, sessions), keyed by the router's
    # name too, so a changed strategy starts fresh; and the replicas it has seen.
    _routing: dict[tuple[str, str], tuple[Any, set[str]]] = field(default_factory=dict)
    # What a replica's engine last reported (waiting requests, KV use), if the runtime
    # scrapes it: the routers weigh an engine's own queue, not only the gateway's count.
    engine_hint: Callable[[str], tuple[float | None, float | None]] | None = None

    def __post_init__(self) -> None:
        self.metrics.registry.register(ReplicaInfo(self.discovery))

    # -- wiring ------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._errors, self._auth]
        )
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        for endpoint in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(endpoint, self.inference)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        # Idle upstream connections are dropped after 4 s: engines close theirs after 5 s
        # (llama-server's cpp-httplib, vLLM's uvicorn), and a request sent on a connection
        # the engine is closing dies before any answer.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=UPSTREAM_KEEPALIVE_S)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def _stop(self, _: web.Application) -> None:
        if self._session:
            await self._session.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except OpenAIError as exc:
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.max_body_bytes
            return error_response(413, f"request body exceeds {limit} bytes", code="request_too_large")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, f"{request.method} {request.path}: {exc.reason}")
        except ConnectionResetError:  # the client left; nobody is there to read an answer
            return web.Response(status=CLIENT_CLOSED)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal gateway error; see the gateway log")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/") and not authorized(
            request.headers.get("Authorization"), self.config.api_keys
        ):
            raise OpenAIError(401, "invalid or missing API key", code="invalid_api_key")
        return await handler(request)

    # -- plain endpoints ---------------------------------------------------------
    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def prometheus(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _model_json(route: ModelRoute) -> dict[str, object]:
        return {
            "id": route.served_name,
            "object": "model",
            "created": int(route.created),
            "owned_by": "aiplane",
        }

    async def list_models(self, _: web.Request) -> web.Response:
        data = [self._model_json(r) for r in self.discovery.models()]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        route = self.discovery.lookup(name)
        if route is None:
            raise OpenAIError(
                404, f"The model '{name}' does not exist", param="model", code="model_not_found"
            )
        return web.json_response(self._model_json(route))

    # -- inference ---------------------------------------------------------------
    async def inference(self, request: web.Request) -> web.StreamResponse:
        """Every answer is counted, rejected ones too (model ``<invalid>`` or ``<unknown>``)."""
        started = time.monotonic()
        endpoint = request.path
        label, status = "<invalid>", "500"
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                limit = self.config.max_body_bytes
                raise OpenAIError(
                    413, f"request body exceeds {limit} bytes", code="request_too_large"
                ) from None
            inference = parse_body(raw, endpoint)
            route = self.discovery.lookup(inference.model)
            if route is None:
                label = "<unknown>"
                raise OpenAIError(
                    404,
                    f"The model '{inference.model}' does not exist",
                    param="model",
                    code="model_not_found",
                )
            label = route.served_name
            self.load.arrived(label)
            if endpoint not in route.endpoints:
                raise OpenAIError(400, f"model '{inference.model}' does not serve {endpoint}", param="model")
            raw = shape_for(inference, route)
            await self._ready_upstreams(route)
            session = request.headers.get(route.session_header) if route.session_header else None
            response, outcome = await self._proxy(request, route, inference, raw, started, session)
            status = str(outcome.status)
            self._observe(label, endpoint, outcome, started)
            return response
        except OpenAIError as exc:
            status = str(exc.status)
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            # A client that hangs up while held (cold start, every slot busy) cancels its
            # handler: a 499 in the metrics, and its place in line is given up.
            status = str(CLIENT_CLOSED)
            raise
        finally:
            self.metrics.requests.labels(label, endpoint, status).inc()

    async def _ready_upstreams(self, route: ModelRoute) -> None:
        """Return once the model has a ready replica, holding the request through a cold start."""
        name = route.served_name
        if self.discovery.upstreams(name):
            self.metrics.queue_wait.labels(name).observe(0.0)
            return
        self.metrics.cold_starts.labels(name).inc()
        self.load.held[name] += 1
        self.metrics.held.labels(name).inc()
        waited = time.monotonic()
        try:
            upstreams = await self.discovery.wait_for_upstreams(name, route.cold_start_timeout)
        finally:
            self.load.held[name] -= 1
            self.metrics.held.labels(name).dec()
            self.metrics.queue_wait.labels(name).observe(time.monotonic() - waited)
        if not upstreams:
            if why := self.discovery.unavailable(name):
                raise OpenAIError(503, f"model '{name}' cannot start: {why}", code="model_unavailable")
            raise OpenAIError(
                503,
                f"no replica of '{name}' became ready within {route.cold_start_timeout:g}s",
                code="model_unavailable",
                retry_after=COLD_START_RETRY_AFTER,
            )

    def _pick(
        self, route: ModelRoute, upstreams: list[Upstream], inference: InferenceRequest, session: str | None
    ) -> Upstream:
        name, router = route.served_name, route.router
        key = (name, router.name)
        if key not in self._routing:
            self._routing[key] = (router.new_state(), set())
        state, seen = self._routing[key]
        present = {u.replica_id for u in self.discovery.upstreams(name)} | {u.replica_id for u in upstreams}
        for gone in seen - present:  # scaled down or failed: its cache estimate is stale
            router.forget(gone, state)
        seen.intersection_update(present)
        hint = self.engine_hint or (lambda _: (None, None))
        loads = [
            ReplicaLoad(
                u.replica_id, self.load.replica_load(u.replica_id), *hint(u.replica_id), route.concurrency
            )
            for u in upstreams
        ]
        ask = RouteRequest(next(self._seq), inference.prefix, inference.blocks, session, now=time.monotonic())
        choice = router.choose(loads, ask, state)
        assert choice is not None
        seen.add(choice.replica_id)
        return next(u for u in upstreams if u.replica_id == choice.replica_id)

    def _take_now(
        self, route: ModelRoute, inference: InferenceRequest, tried: set[str], session: str | None
    ) -> Callable[[], Upstream | None]:
        """A picker over the replicas with a free slot; it claims the slot it picks."""
        name, limit = route.served_name, route.concurrency

        def pick() -> Upstream | None:
            free = [
                u
                for u in self.discovery.upstreams(name)
                if u.replica_id not in tried
                and (limit is None or self.load.replica_load(u.replica_id) < limit)
            ]
            if not free:
                return None
            upstream = self._pick(route, free, inference, session)
            self.load.start(name, upstream.replica_id)
            self.metrics.in_flight.labels(name).inc()
            return upstream

        return pick

    async def _take_slot(
        self, route: ModelRoute, inference: InferenceRequest, tried: set[str], session: str | None
    ) -> Upstream | None:
        """A replica with a free slot, queueing first come, first served while all are busy.

        None when no untried replica is left (a retry after the only one failed).
        """
        name = route.served_name
        pick = self._take_now(route, inference, tried, session)
        if not self.slots.waiting(name) and (upstream := pick()) is not None:
            return upstream
        if not [u for u in self.discovery.upstreams(name) if u.replica_id not in tried]:
            return None
        self.load.queued[name] += 1
        self.metrics.queued.labels(name).inc()
        waited = time.monotonic()
        try:
            upstream = await self.slots.take(name, pick, route.cold_start_timeout)
        finally:
            self.load.queued[name] -= 1
            self.metrics.queued.labels(name).dec()
            self.metrics.queue_wait.labels(name).observe(time.monotonic() - waited)
        if upstream is None:
            raise OpenAIError(
                503,
                f"every replica of '{name}' is busy ({route.concurrency} requests each) and none "
                f"freed up within {route.cold_start_timeout:g}s",
                code="model_overloaded",
                retry_after=COLD_START_RETRY_AFTER,
            )
        return upstream

    async def _proxy(
        self,
        request: web.Request,
        route: ModelRoute,
        inference: InferenceRequest,
        raw: bytes,
        started: float,
        session: str | None,
    ) -> tuple[web.StreamResponse, Outcome]:
        assert self._session is not None
        name = route.served_name
        tried: set[str] = set()
        last_error, fresh_retry = "", False
        for _ in range(ATTEMPTS):
            upstream = await self._take_slot(route, inference, tried, session)
            if upstream is None:
                break
            tried.add(upstream.replica_id)
            try:
                response, outcome = await forward(
                    self._session, request, inference, raw, upstream, route.request_timeout, started
                )
            except UpstreamUnavailable as exc:
                last_error = str(exc)
                self.metrics.upstream_errors.labels(name).inc()
                others = [u for u in self.discovery.upstreams(name) if u.replica_id not in tried]
                if exc.fresh_connection_may_help and not others and not fresh_retry:
                    # Most likely an idle connection the engine closed as it was reused: the
                    # only replica again, on a new connection, and reported if that fails too.
                    tried.discard(upstream.replica_id)
                    fresh_retry = True
                else:
                    self.discovery.report_failure(upstream, last_error)
                continue
            finally:
                self.load.finish(name, upstream.replica_id)
                self.metrics.in_flight.labels(name).dec()
                self.slots.released(name)
            if outcome.failure:
                self.metrics.upstream_errors.labels(name).inc()
                self.discovery.report_failure(upstream, outcome.failure)
            return response, outcome
        raise OpenAIError(
            502, f"no replica of '{name}' could serve the request: {last_error}", code="upstream_error"
        )

    def _observe(self, name: str, endpoint: str, outcome: Outcome, started: float) -> None:
        latency = time.monotonic() - started
        self.metrics.latency.labels(name, endpoint).observe(latency)
        if outcome.status < 400:
            self.load.completed(name, ttft=outcome.ttft, latency=latency, tokens=outcome.completion_tokens)
        if outcome.ttft is not None:
            self.metrics.ttft.labels(name).observe(outcome.ttft)
            if outcome.completion_tokens > 1:
                gaps = outcome.completion_tokens - 1
                self.metrics.inter_token.labels(name).observe((latency - outcome.ttft) / gaps)
        if outcome.prompt_tokens:
            self.metrics.tokens.labels(name, "prompt").inc(outcome.prompt_tokens)
        if outcome.completion_tokens:
            self.metrics.tokens.labels(name, "completion").inc(outcome.completion_tokens)
