"""What aiplane must know about a model server, as data.

An adapter is a description, not a process manager: how to launch the server on this
machine (:class:`LocalLaunch`) and in a container (:class:`ContainerLaunch`), where
its health, readiness and metrics are, and what its load metrics are called. The
local runtime and the Kubernetes lowering both read the same description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiplane.api.model import Model


@dataclass(frozen=True)
class MetricNames:
    """The engine's own Prometheus names for the signals autoscaling and routing use."""

    running: str | None = None
    waiting: str | None = None
    kv_cache_usage: str | None = None
    time_to_first_token: str | None = None


@dataclass(frozen=True)
class Probes:
    health_path: str
    ready_path: str
    metrics_path: str | None = None


@dataclass(frozen=True)
class LocalLaunch:
    """A server process on this machine, on a loopback port chosen by the runtime."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    probes: Probes = Probes("/health", "/health")


@dataclass(frozen=True)
class ContainerLaunch:
    """A container for the Kubernetes lowering; the model is mounted at ``model_path``."""

    image: str
    args: list[str]
    port: int
    probes: Probes
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)


class EngineAdapter(Protocol):
    """One model server family. ``local`` raises EngineError where it cannot run here."""

    @property
    def name(self) -> str: ...

    @property
    def metrics(self) -> MetricNames: ...

    @property
    def endpoints(self) -> frozenset[str]: ...

    @property
    def default_concurrency(self) -> int | None:
        """Requests one replica serves at once unless the Model says; None: no limit."""
        ...

    @property
    def default_context(self) -> int | None:
        """Context tokens when the Model gives no contextLength; None: the model's own."""
        ...

    @property
    def multiple_choices(self) -> bool:
        """Whether the server honours ``n > 1``; the gateway refuses it with a 400 if not."""
        ...

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch: ...

    def container(self, model: Model, model_path: str) -> ContainerLaunch: ...


CHAT = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})
EMBED = frozenset({"/v1/embeddings", "/v1/models"})
