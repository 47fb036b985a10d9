"""How a Model is routed and autoscaled: the one definition both runtimes use."""

from __future__ import annotations

from aiplane.api import Model, parse_duration
from aiplane.engines import EngineRegistry
from aiplane.gateway.discovery import ModelRoute
from aiplane.policies.autoscaling import AutoscalingConfig
from aiplane.policies.routing import Router, SessionAffinity, router_for


def model_route(model: Model, owner: str, created: float, engines: EngineRegistry) -> ModelRoute:
    """Served name, engine endpoints, routing policy, limits and timeouts of one Model."""
    engine = engines.get(model.spec.engine)
    return ModelRoute(
        served_name=model.served_name,
        owner=owner,
        endpoints=engine.endpoints,
        router=gateway_router(model, engine.default_concurrency, engine.default_context),
        cold_start_timeout=parse_duration(model.spec.timeouts.cold_start),
        request_timeout=parse_duration(model.spec.timeouts.request),
        created=created,
        concurrency=model.spec.concurrency or engine.default_concurrency,
        context_length=model.spec.context_length or engine.default_context,
        default_max_tokens=model.spec.default_max_tokens,
        multiple_choices=engine.multiple_choices,
        session_header=model.spec.routing.session_header,
    )


TOKENS_PER_BLOCK = 128  # the gateway's prompt blocks are 512 characters, about 128 tokens


def gateway_router(model: Model, default_slots: int | None, default_context: int | None) -> Router:
    """The Model's routing strategy; with a session header, sticky sessions around it.

    aiplane's prefix-aware router estimates each replica's cache in the gateway's prompt
    blocks: sized to what the replica's KV cache holds (context x slots) when known."""
    spec = model.spec
    params: dict[str, int] = {}
    if spec.routing.strategy in ("aiplane", "prefix-aware"):
        context = spec.context_length or default_context
        slots = spec.concurrency or default_slots
        params["cache_blocks"] = max(64, context * slots // TOKENS_PER_BLOCK) if context and slots else 2048
    router = router_for(spec.routing.strategy, **params)
    return SessionAffinity(router) if spec.routing.session_header else router


def autoscaling_config(model: Model, engines: EngineRegistry) -> AutoscalingConfig:
    """A Model's autoscaling spec in the policies' terms (seconds, counts, the target in effect)."""
    spec = model.spec
    concurrency = spec.concurrency or engines.get(spec.engine).default_concurrency
    return AutoscalingConfig(
        metric=spec.autoscaling.metric,
        target=spec.autoscaling.target_for(concurrency),
        min_replicas=spec.replicas.min,
        max_replicas=spec.replicas.max,
        scale_to_zero_after=parse_duration(spec.autoscaling.scale_to_zero_after),
        scale_down_delay=parse_duration(spec.autoscaling.scale_down_delay),
        stable_window=parse_duration(spec.autoscaling.stable_window),
        panic_window=parse_duration(spec.autoscaling.panic_window),
        look_ahead=spec.autoscaling.look_ahead,
        headroom=spec.autoscaling.headroom,
        replica_concurrency=concurrency,
    )
