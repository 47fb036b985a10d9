"""The OpenAI-compatible gateway. It depends on a :class:`Discovery`, never on a runtime."""

from aiplane.gateway.app import Gateway, GatewayConfig
from aiplane.gateway.discovery import Discovery, ModelRoute, Upstream
from aiplane.gateway.load import LoadTracker
from aiplane.gateway.metrics import GatewayMetrics

__all__ = ["Discovery", "Gateway", "GatewayConfig", "GatewayMetrics", "LoadTracker", "ModelRoute", "Upstream"]
