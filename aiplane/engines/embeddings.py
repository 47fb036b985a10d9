"""Embeddings: aiplane's own ONNX MiniLM server locally, Text Embeddings Inference in containers."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from aiplane.api.model import Model
from aiplane.engines.base import EMBED, ContainerLaunch, LocalLaunch, MetricNames, Probes


@dataclass(frozen=True)
class Embeddings:
    name: str = "embeddings"
    # Text Embeddings Inference's names (containers); the local server exports
    # aiplane_embeddings_requests_running / _waiting for the same signals.
    metrics: MetricNames = MetricNames(running="te_batch_current_size", waiting="te_queue_size")
    endpoints: frozenset[str] = EMBED
    default_concurrency: int | None = None
    default_context: int | None = None
    multiple_choices: bool = True
    image: str = "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8"

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        argv = [
            sys.executable, "-m", "aiplane.engines.embeddings_server",
            "--model-path", model_path,
            "--served-model-name", model.served_name,
            "--host", host,
            "--port", str(port),
            *model.spec.args,
        ]  # fmt: skip
        return LocalLaunch(argv, dict(model.spec.env), Probes("/health", "/health", "/metrics"))

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        return ContainerLaunch(
            image=model.spec.image or self.image,
            args=["--model-id", model_path, "--port", "8080", *model.spec.args],
            port=8080,
            probes=Probes("/health", "/health", "/metrics"),
            env=dict(model.spec.env),
        )
