"""llama.cpp: its own ``llama-server``, locally and in containers; llama-cpp-python as an option.

``llama-server`` serves ``--parallel`` slots with continuous batching, answers
``/health`` while it generates, exports Prometheus ``llamacpp:*`` metrics with
``--metrics``, and keeps each slot's prompt cache. Locally it is built once from the
llama.cpp source that the llama-cpp-python sdist vendors (``scripts/llama-server.sh``,
``GGML_NATIVE=OFF``) and linked next to the venv's Python; in containers it is the
upstream image's entrypoint.

``llamacpp-python`` runs llama-cpp-python's server instead: the baseline of
``bench/engine_concurrency.py``, slower at every concurrency measured, and installed only
with the ``llamacpp-python`` extra. It generates one request at a time, so its replicas
take one request each (the gateway queues the rest), and it runs with
``--interrupt_requests False``: its default cuts the stream in progress whenever a new
request arrives.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from aiplane.api.model import Model
from aiplane.engines.base import (
    CHAT,
    ContainerLaunch,
    LocalLaunch,
    MetricNames,
    Probes,
)
from aiplane.errors import EngineError

DEFAULT_CONTEXT = 2048
DEFAULT_SLOTS = 4
SERVER_ENV = "AIPLANE_LLAMA_SERVER"


def llama_server_binary() -> str:
    """``$AIPLANE_LLAMA_SERVER``, else the one installed beside this Python, else PATH's."""
    if explicit := os.environ.get(SERVER_ENV):
        return explicit
    beside = Path(sys.executable).parent / "llama-server"
    if beside.exists():
        return str(beside)
    if found := shutil.which("llama-server"):
        return found
    raise EngineError(
        "engine 'llamacpp' cannot run locally: llama-server is not installed "
        f"(`make install` builds it with scripts/llama-server.sh, or set {SERVER_ENV})"
    )


def _server_args(model: Model, model_path: str, host: str, port: int, slots: int) -> list[str]:
    ctx = model.spec.context_length or DEFAULT_CONTEXT
    return [
        "--model", model_path,
        "--alias", model.served_name,
        "--host", host,
        "--port", str(port),
        # Each of the slots gets the whole context: the KV cache is sized for all of them.
        "--ctx-size", str(ctx * slots),
        "--parallel", str(slots),
        "--metrics",
        "--no-webui",
        *model.spec.args,
    ]  # fmt: skip


def local_threads(max_replicas: int) -> int:
    """Generation threads per local replica: this machine's cores over the replicas."""
    return max(1, (os.cpu_count() or 1) // max(1, max_replicas))


@dataclass(frozen=True)
class LlamaCpp:
    name: str = "llamacpp"
    # This llama-server exports no KV-cache gauge (kv_cache_usage_ratio was dropped upstream).
    metrics: MetricNames = MetricNames(
        running="llamacpp:requests_processing",
        waiting="llamacpp:requests_deferred",
    )
    # Embeddings need llama.cpp's separate embedding mode; a chat model does not serve them.
    endpoints: frozenset[str] = CHAT
    default_concurrency: int | None = DEFAULT_SLOTS
    default_context: int | None = DEFAULT_CONTEXT
    multiple_choices: bool = True
    image: str = "ghcr.io/ggml-org/llama.cpp:server"

    def slots(self, model: Model) -> int:
        return model.spec.concurrency or DEFAULT_SLOTS

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        argv = [llama_server_binary(), *_server_args(model, model_path, host, port, self.slots(model))]
        if not {"--threads", "-t"} & set(model.spec.args):
            # llama-server takes every core by default; N replicas on one CPU host then
            # fight over them (2 threads each on 2 cores decoded 35-70x slower than 1,
            # bench/prefix_routing.py). Share the cores among the replicas it may run.
            argv += ["--threads", str(local_threads(model.spec.replicas.max))]
        return LocalLaunch(
            argv=argv, env=dict(model.spec.env), probes=Probes("/health", "/health", "/metrics")
        )

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        return ContainerLaunch(
            image=model.spec.image or self.image,
            args=_server_args(model, model_path, "0.0.0.0", 8080, self.slots(model)),
            port=8080,
            probes=Probes("/health", "/health", "/metrics"),
            env=dict(model.spec.env),
        )


@dataclass(frozen=True)
class LlamaCppPython:
    name: str = "llamacpp-python"
    metrics: MetricNames = MetricNames()  # its server exports none
    endpoints: frozenset[str] = CHAT
    default_concurrency: int | None = 1
    default_context: int | None = DEFAULT_CONTEXT
    multiple_choices: bool = False  # it ignores n and answers one choice
    image: str = "ghcr.io/abetlen/llama-cpp-python:latest"

    def _args(self, model: Model, model_path: str, host: str, port: int) -> list[str]:
        ctx = model.spec.context_length or DEFAULT_CONTEXT
        return [
            "--model", model_path,
            "--model_alias", model.served_name,
            "--host", host,
            "--port", str(port),
            "--n_ctx", str(ctx),
            "--interrupt_requests", "False",
            *model.spec.args,
        ]  # fmt: skip

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        if importlib.util.find_spec("llama_cpp") is None:
            raise EngineError(
                "engine 'llamacpp-python' cannot run locally: llama-cpp-python is not installed "
                "(pip install 'llama-cpp-python[server]', or make install with the llamacpp-python extra)"
            )
        argv = [sys.executable, "-m", "llama_cpp.server", *self._args(model, model_path, host, port)]
        # Its server has no /health; /v1/models answers once the model is loaded.
        return LocalLaunch(argv=argv, env=dict(model.spec.env), probes=Probes("/v1/models", "/v1/models"))

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        return ContainerLaunch(
            image=model.spec.image or self.image,
            command=["python3", "-m", "llama_cpp.server"],
            args=self._args(model, model_path, "0.0.0.0", 8000),
            port=8000,
            probes=Probes("/v1/models", "/v1/models"),
            env=dict(model.spec.env),
        )
