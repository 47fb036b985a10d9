"""llama.cpp: llama-cpp-python's OpenAI server locally, ``llama-server`` in containers.

Locally we run llama-cpp-python's server because its wheel is the one thing we build
(with GGML_NATIVE=OFF); in containers the upstream ``llama-server`` image, which has
``/health`` and Prometheus ``/metrics`` (with ``--metrics``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from aiplane.api.model import Model
from aiplane.engines.base import (
    CHAT,
    ContainerLaunch,
    LocalLaunch,
    MetricNames,
    Probes,
)

DEFAULT_CONTEXT = 2048


@dataclass(frozen=True)
class LlamaCpp:
    name: str = "llamacpp"
    metrics: MetricNames = MetricNames(
        running="llamacpp:requests_processing",
        waiting="llamacpp:requests_deferred",
        kv_cache_usage="llamacpp:kv_cache_usage_ratio",
    )
    # Embeddings need llama.cpp's separate embedding mode; a chat model does not serve them.
    endpoints: frozenset[str] = CHAT
    image: str = "ghcr.io/ggml-org/llama.cpp:server"

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        ctx = model.spec.context_length or DEFAULT_CONTEXT
        argv = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", model_path,
            "--model_alias", model.served_name,
            "--host", host,
            "--port", str(port),
            "--n_ctx", str(ctx),
            *model.spec.args,
        ]  # fmt: skip
        # llama-cpp-python's server has no /health; /v1/models answers once loaded.
        return LocalLaunch(argv=argv, env=dict(model.spec.env), probes=Probes("/v1/models", "/v1/models"))

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        ctx = model.spec.context_length or DEFAULT_CONTEXT
        args = [
            "--model", model_path,
            "--alias", model.served_name,
            "--host", "0.0.0.0",
            "--port", "8080",
            "--ctx-size", str(ctx),
            "--metrics",
            *model.spec.args,
        ]  # fmt: skip
        return ContainerLaunch(
            image=model.spec.image or self.image,
            args=args,
            port=8080,
            probes=Probes("/health", "/health", "/metrics"),
            env=dict(model.spec.env),
        )
