"""A server of the user's own: ``args`` is the command, with ``{host}``, ``{port}``, ``{model}``.

It must speak the OpenAI API and answer ``GET /health``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiplane.api.model import Model
from aiplane.engines.base import CHAT, EMBED, ContainerLaunch, LocalLaunch, MetricNames, Probes
from aiplane.errors import EngineError


def _fill(args: list[str], host: str, port: int, model_path: str) -> list[str]:
    return [a.format(host=host, port=port, model=model_path) for a in args]


@dataclass(frozen=True)
class Custom:
    name: str = "custom"
    metrics: MetricNames = MetricNames()
    endpoints: frozenset[str] = CHAT | EMBED
    default_concurrency: int | None = None
    default_context: int | None = None
    multiple_choices: bool = True
    port: int = 8000

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        if not model.spec.args:
            raise EngineError(f"{model.ref}: engine 'custom' needs spec.args (the command to run)")
        return LocalLaunch(_fill(model.spec.args, host, port, model_path), dict(model.spec.env))

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        if not model.spec.image:
            raise EngineError(f"{model.ref}: engine 'custom' needs spec.image on Kubernetes")
        return ContainerLaunch(
            image=model.spec.image,
            args=_fill(model.spec.args, "0.0.0.0", self.port, model_path),
            port=self.port,
            probes=Probes("/health", "/health", "/metrics"),
            env=dict(model.spec.env),
        )
