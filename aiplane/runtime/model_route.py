"""How a Model is routed by the gateway: the one definition both runtimes use."""

from __future__ import annotations

from aiplane.api import Model, parse_duration
from aiplane.engines import EngineRegistry
from aiplane.gateway.discovery import ModelRoute
from aiplane.policies.routing import router_for


def model_route(model: Model, owner: str, created: float, engines: EngineRegistry) -> ModelRoute:
    """Served name, engine endpoints, routing policy, limits and timeouts of one Model."""
    engine = engines.get(model.spec.engine)
    return ModelRoute(
        served_name=model.served_name,
        owner=owner,
        endpoints=engine.endpoints,
        router=router_for(model.spec.routing.strategy),
        cold_start_timeout=parse_duration(model.spec.timeouts.cold_start),
        request_timeout=parse_duration(model.spec.timeouts.request),
        created=created,
        concurrency=model.spec.concurrency or engine.default_concurrency,
        context_length=model.spec.context_length or engine.default_context,
        default_max_tokens=model.spec.default_max_tokens,
        multiple_choices=engine.multiple_choices,
    )
