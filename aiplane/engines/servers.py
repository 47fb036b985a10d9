"""GPU model servers: vLLM, TGI and SGLang.

Each runs locally when its package or launcher is installed on this machine (a GPU
box), and in containers from its upstream image. Flags follow each project's docs:
vLLM ``vllm serve`` (OpenAI server on 8000, ``/health``, ``/metrics``; the image's
entrypoint is ``vllm serve``, which takes the model as its positional argument and
deprecates ``--model``); TGI
``text-generation-launcher`` (``MODEL_ID``, ``PORT``; ``/health``, ``/metrics``);
SGLang ``python -m sglang.launch_server`` (port 30000, ``--enable-metrics``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass

from aiplane.api.model import Model
from aiplane.engines.base import CHAT, ContainerLaunch, LocalLaunch, MetricNames, Probes
from aiplane.errors import EngineError


def _gpu_args(model: Model, flag: str) -> list[str]:
    """Tensor parallelism across the replica's whole GPUs, when it has more than one."""
    gpus = model.spec.resources.gpus
    return [flag, str(int(gpus))] if gpus > 1 else []


def _need_module(module: str, engine: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise EngineError(
            f"engine {engine!r} cannot run locally: Python package {module!r} is not installed "
            f"(pip install {module} on a GPU machine, or run it on Kubernetes)"
        )


@dataclass(frozen=True)
class VLLM:
    name: str = "vllm"
    metrics: MetricNames = MetricNames(
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        kv_cache_usage="vllm:kv_cache_usage_perc",
        time_to_first_token="vllm:time_to_first_token_seconds",
    )
    endpoints: frozenset[str] = CHAT | frozenset({"/v1/embeddings"})
    default_concurrency: int | None = None
    default_context: int | None = None
    multiple_choices: bool = True
    image: str = "vllm/vllm-openai:v0.11.0"

    def _args(self, model: Model, host: str, port: int) -> list[str]:
        ctx = ["--max-model-len", str(model.spec.context_length)] if model.spec.context_length else []
        return [
            "--served-model-name", model.served_name,
            "--host", host,
            "--port", str(port),
            *_gpu_args(model, "--tensor-parallel-size"),
            *ctx,
            *model.spec.args,
        ]  # fmt: skip

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        _need_module("vllm", self.name)
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path]
        return LocalLaunch(
            argv=argv + self._args(model, host, port),
            env=dict(model.spec.env),
            probes=Probes("/health", "/health", "/metrics"),
        )

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        return ContainerLaunch(
            image=model.spec.image or self.image,
            args=[model_path, *self._args(model, "0.0.0.0", 8000)],  # after ENTRYPOINT vllm serve
            port=8000,
            probes=Probes("/health", "/health", "/metrics"),
            env=dict(model.spec.env),
        )


@dataclass(frozen=True)
class TGI:
    name: str = "tgi"
    metrics: MetricNames = MetricNames(
        running="tgi_batch_current_size",
        waiting="tgi_queue_size",
        time_to_first_token="tgi_request_queue_duration",
    )
    endpoints: frozenset[str] = CHAT
    default_concurrency: int | None = None
    default_context: int | None = None
    multiple_choices: bool = False  # its OpenAI API answers one choice
    image: str = "ghcr.io/huggingface/text-generation-inference:3.3.4"
    port: int = 3000

    def _env(self, model: Model, model_path: str, port: int) -> dict[str, str]:
        env = {"MODEL_ID": model_path, "PORT": str(port)}
        if model.spec.resources.gpus > 1:
            env["NUM_SHARD"] = str(int(model.spec.resources.gpus))
        if model.spec.context_length:
            env["MAX_TOTAL_TOKENS"] = str(model.spec.context_length)
        return env | dict(model.spec.env)

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        launcher = shutil.which("text-generation-launcher")
        if launcher is None:
            raise EngineError(
                "engine 'tgi' cannot run locally: text-generation-launcher is not on PATH "
                "(install TGI on a GPU machine, or run it on Kubernetes)"
            )
        argv = [launcher, "--hostname", host, *model.spec.args]
        return LocalLaunch(argv, self._env(model, model_path, port), Probes("/health", "/health", "/metrics"))

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        return ContainerLaunch(
            image=model.spec.image or self.image,
            args=["--hostname", "0.0.0.0", *model.spec.args],
            port=self.port,
            probes=Probes("/health", "/health", "/metrics"),
            env=self._env(model, model_path, self.port),
        )


@dataclass(frozen=True)
class SGLang:
    name: str = "sglang"
    metrics: MetricNames = MetricNames(
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        kv_cache_usage="sglang:token_usage",
        time_to_first_token="sglang:time_to_first_token_seconds",
    )
    endpoints: frozenset[str] = CHAT | frozenset({"/v1/embeddings"})
    default_concurrency: int | None = None
    default_context: int | None = None
    multiple_choices: bool = True
    image: str = "lmsysorg/sglang:v0.5.3-cu126"

    def _args(self, model: Model, model_path: str, host: str, port: int) -> list[str]:
        ctx = ["--context-length", str(model.spec.context_length)] if model.spec.context_length else []
        return [
            "--model-path", model_path,
            "--served-model-name", model.served_name,
            "--host", host,
            "--port", str(port),
            "--enable-metrics",
            *_gpu_args(model, "--tp-size"),
            *ctx,
            *model.spec.args,
        ]  # fmt: skip

    def local(self, model: Model, model_path: str, host: str, port: int) -> LocalLaunch:
        _need_module("sglang", self.name)
        argv = [sys.executable, "-m", "sglang.launch_server"]
        return LocalLaunch(
            argv + self._args(model, model_path, host, port),
            dict(model.spec.env),
            Probes("/health", "/health", "/metrics"),
        )

    def container(self, model: Model, model_path: str) -> ContainerLaunch:
        return ContainerLaunch(
            image=model.spec.image or self.image,
            command=["python3", "-m", "sglang.launch_server"],
            args=self._args(model, model_path, "0.0.0.0", 30000),
            port=30000,
            probes=Probes("/health", "/health", "/metrics"),
            env=dict(model.spec.env),
        )
