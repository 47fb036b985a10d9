"""What the gateway needs from a runtime: models, ready upstreams, and a cold-start wait.

The local runtime implements it in-process; the Kubernetes runtime implements it from
Endpoints. The gateway never imports a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiplane.policies.routing import Router


@dataclass(frozen=True)
class Upstream:
    replica_id: str
    base_url: str
    # the pod's namespace on Kubernetes: with replica_id, the GPU join (not its identity)
    namespace: str = field(default="local", compare=False)


@dataclass(frozen=True)
class ModelRoute:
    served_name: str
    owner: str
    endpoints: frozenset[str]
    router: Router
    cold_start_timeout: float
    request_timeout: float
    created: float
    concurrency: int | None = None  # requests one replica takes at once; the gateway queues the rest
    context_length: int | None = None  # prompt + completion tokens, when known
    default_max_tokens: int | None = None  # set on requests that give no max_tokens
    multiple_choices: bool = True  # the engine honours n > 1
    session_header: str | None = None  # requests with equal values go to one replica


class Discovery(Protocol):
    def models(self) -> list[ModelRoute]: ...

    def lookup(self, served_name: str) -> ModelRoute | None: ...

    def upstreams(self, served_name: str) -> list[Upstream]: ...

    async def wait_for_upstreams(self, served_name: str, timeout: float) -> list[Upstream]:
        """Ready upstreams, waiting up to ``timeout`` (a cold start); [] when none came."""
        ...

    def report_failure(self, upstream: Upstream, error: str) -> None:
        """The gateway saw this upstream fail. A signal, not a verdict: the runtime checks
        the replica's health and takes it out of routing only if that fails too (the
        Kubernetes runtime skips the pod for a few seconds; its kubelet probes decide)."""
        ...

    def unavailable(self, served_name: str) -> str | None:
        """Why no replica can become ready without a change (the engine cannot launch,
        every replica crash-loops), or None while waiting may still help. A held request
        then fails at once with this reason instead of at its cold-start timeout."""
        ...
