"""Every metric aiplane exports, declared once: name, type, help, labels, buckets.

Components build their metrics from here (:func:`Metric.create` for the ones they
update as events happen, :func:`Metric.family` for collectors that read state at scrape
time, as kube-state-metrics does), and the dashboards, alert rules, ``aiplane top`` and
``aiplane report`` name series only through these constants, so a renamed metric breaks
the build, not a dashboard in production.

Names are ``aiplane_*`` with units in the names (``_seconds``, ``_gpus``, ``_total``),
after Prometheus's naming guide. The GPU series are the DCGM exporter's own names and
labels (``DCGM_FI_DEV_*``; ``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``,
and ``namespace``/``pod``/``container`` in its Kubernetes mode), so one dashboard serves
the local runtime's exporter and dcgm-exporter on a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

Kind = Literal["counter", "gauge", "histogram"]
Component = Literal["gateway", "autoscaler", "scheduler", "jobs", "embeddings", "gpu"]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EMBED_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Metric:
    """One metric family. ``name`` is the series name as Prometheus stores it (a
    counter's ends in ``_total``; a histogram's has ``_bucket``/``_sum``/``_count``)."""

    name: str
    kind: Kind
    help: str
    component: Component
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    unit: str = ""  # for dashboards: Grafana's unit id (s, percent, decmbytes, watt, ...)

    @property
    def base(self) -> str:
        """The name prometheus_client takes (it appends ``_total`` to counters itself)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def create(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        if self.kind == "counter":
            return Counter(self.base, self.help, self.labels, registry=registry)
        if self.kind == "gauge":
            return Gauge(self.base, self.help, self.labels, registry=registry)
        return Histogram(
            self.base, self.help, self.labels, buckets=self.buckets or LATENCY_BUCKETS, registry=registry
        )

    def counter(self, registry: CollectorRegistry) -> Counter:
        assert self.kind == "counter", self.name
        metric = self.create(registry)
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, registry: CollectorRegistry) -> Gauge:
        assert self.kind == "gauge", self.name
        metric = self.create(registry)
        assert isinstance(metric, Gauge)
        return metric

    def histogram(self, registry: CollectorRegistry) -> Histogram:
        assert self.kind == "histogram", self.name
        metric = self.create(registry)
        assert isinstance(metric, Histogram)
        return metric

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty family for a collector to fill with ``add_metric(labels, value)``."""
        if self.kind == "counter":
            return CounterMetricFamily(self.base, self.help, labels=self.labels)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=self.labels)
        raise ValueError(f"{self.name}: a collector cannot fill a histogram family")


CATALOGUE: dict[str, Metric] = {}


def _m(
    name: str,
    kind: Kind,
    help: str,
    component: Component,
    labels: tuple[str, ...] = (),
    buckets: tuple[float, ...] | None = None,
    unit: str = "",
) -> Metric:
    if name in CATALOGUE:
        raise ValueError(f"{name} is declared twice")
    metric = Metric(name, kind, help, component, labels, buckets, unit)
    CATALOGUE[name] = metric
    return metric


def of(component: Component) -> Iterator[Metric]:
    return (m for m in CATALOGUE.values() if m.component == component)


# -- gateway (one per plane, or the gateway Deployment) -------------------------------
GATEWAY_REQUESTS = _m(
    "aiplane_gateway_requests_total", "counter",
    "Requests answered by the gateway, by model, endpoint (the API route) and HTTP status.",
    "gateway", ("model", "endpoint", "status"), unit="reqps",
)  # fmt: skip
GATEWAY_IN_FLIGHT = _m(
    "aiplane_gateway_requests_in_flight", "gauge", "Requests being proxied to a replica now.",
    "gateway", ("model",),
)  # fmt: skip
GATEWAY_QUEUED = _m(
    "aiplane_gateway_requests_queued", "gauge",
    "Requests waiting for a free slot on a ready replica.", "gateway", ("model",),
)  # fmt: skip
GATEWAY_HELD = _m(
    "aiplane_gateway_requests_held", "gauge",
    "Requests held waiting for any ready replica (a cold start); the autoscaler scales from "
    "zero on it.", "gateway", ("model",),
)  # fmt: skip
GATEWAY_QUEUE_WAIT = _m(
    "aiplane_gateway_queue_wait_seconds", "histogram",
    "Time a request waited for a ready replica or a free slot.", "gateway", ("model",),
    WAIT_BUCKETS, unit="s",
)  # fmt: skip
GATEWAY_LATENCY = _m(
    "aiplane_gateway_request_duration_seconds", "histogram",
    "Time from request to the last byte of the response.", "gateway", ("model", "endpoint"),
    LATENCY_BUCKETS, unit="s",
)  # fmt: skip
GATEWAY_TTFT = _m(
    "aiplane_gateway_time_to_first_token_seconds", "histogram",
    "Time from request to the first streamed chunk (streamed requests only).",
    "gateway", ("model",), LATENCY_BUCKETS, unit="s",
)  # fmt: skip
GATEWAY_ITL = _m(
    "aiplane_gateway_inter_token_latency_seconds", "histogram",
    "Mean time between output tokens of one streamed answer (vLLM's time per output token): "
    "(duration - TTFT) / (completion tokens - 1).", "gateway", ("model",), TOKEN_BUCKETS, unit="s",
)  # fmt: skip
GATEWAY_TOKENS = _m(
    "aiplane_gateway_tokens_total", "counter",
    "Tokens from the engines' usage, by kind (prompt, completion).", "gateway", ("model", "kind"),
    unit="short",
)  # fmt: skip
GATEWAY_UPSTREAM_ERRORS = _m(
    "aiplane_gateway_upstream_errors_total", "counter",
    "Failures talking to a replica (connection refused, reset mid-stream).", "gateway", ("model",),
)  # fmt: skip
GATEWAY_COLD_STARTS = _m(
    "aiplane_gateway_cold_start_waits_total", "counter",
    "Requests that found no ready replica and were held through a cold start.", "gateway", ("model",),
)  # fmt: skip
MODEL_REPLICA_INFO = _m(
    "aiplane_model_replica_info", "gauge",
    "1 for each ready replica the gateway routes to: the join from a pod (namespace, pod: "
    "the labels dcgm-exporter's Kubernetes mode puts on GPU series) to its model.",
    "gateway", ("model", "namespace", "pod"),
)  # fmt: skip

# -- autoscaler (the local controller, the operator's autoscaler) ----------------------
AUTOSCALER_DESIRED = _m(
    "aiplane_autoscaler_desired_replicas", "gauge", "Replicas the autoscaler decided on.",
    "autoscaler", ("model",),
)  # fmt: skip
AUTOSCALER_READY = _m(
    "aiplane_autoscaler_ready_replicas", "gauge", "Replicas ready to serve.", "autoscaler", ("model",),
)  # fmt: skip
AUTOSCALER_MIN = _m(
    "aiplane_autoscaler_min_replicas", "gauge", "The Model's replicas.min.", "autoscaler", ("model",),
)  # fmt: skip
AUTOSCALER_MAX = _m(
    "aiplane_autoscaler_max_replicas", "gauge", "The Model's replicas.max.", "autoscaler", ("model",),
)  # fmt: skip
AUTOSCALER_VALUE = _m(
    "aiplane_autoscaler_metric_value", "gauge",
    "The load the autoscaler's policy saw in its last decision, in its autoscaling.metric's "
    "units (concurrency, queue-depth, kv-cache, latency, cpu, memory) over all replicas: its "
    "fractional desired replicas times the target.", "autoscaler", ("model", "metric"),
)  # fmt: skip
AUTOSCALER_TARGET = _m(
    "aiplane_autoscaler_metric_target", "gauge", "The target of that signal.",
    "autoscaler", ("model", "metric"),
)  # fmt: skip
MODEL_GPUS = _m(
    "aiplane_model_allocated_gpus", "gauge",
    "GPUs held by the Model's replicas (fractions for shared GPUs).", "autoscaler", ("model",),
)  # fmt: skip

# -- scheduler and queues (the Kubernetes scheduler, the local job runner) --------------
SCHEDULER_BINDS = _m("aiplane_scheduler_binds_total", "counter", "Pods bound to a node.", "scheduler")
SCHEDULER_BIND_ERRORS = _m(
    "aiplane_scheduler_bind_errors_total", "counter", "Bindings the API server refused.", "scheduler"
)
SCHEDULER_ADMISSIONS = _m(
    "aiplane_scheduler_admissions_total", "counter", "Workloads admitted (per queue: the gauges).",
    "scheduler",
)  # fmt: skip
SCHEDULER_PREEMPTIONS = _m(
    "aiplane_scheduler_preemptions_total", "counter", "Workloads told to stop for another.", "scheduler"
)
SCHEDULER_UNSCHEDULABLE = _m(
    "aiplane_scheduler_unschedulable_gangs", "gauge", "Workloads that waited in the last cycle.",
    "scheduler",
)  # fmt: skip
SCHEDULER_LEADER = _m(
    "aiplane_scheduler_leader", "gauge", "1 while this replica holds the Lease.", "scheduler"
)
SCHEDULER_CYCLE = _m(
    "aiplane_scheduler_cycle_duration_seconds", "histogram",
    "Time of one scheduling cycle, decisions and writes included.", "scheduler",
    buckets=CYCLE_BUCKETS, unit="s",
)  # fmt: skip
QUEUE_PENDING = _m(
    "aiplane_queue_pending_workloads", "gauge",
    "Workloads waiting, by queue and reason (Quota, NoFit, Preempting, Reserved, ...).",
    "scheduler", ("queue", "reason"),
)  # fmt: skip
QUEUE_ADMITTED = _m(
    "aiplane_queue_admitted_workloads", "gauge", "Workloads admitted and holding quota.",
    "scheduler", ("queue",),
)  # fmt: skip
QUEUE_NOMINAL = _m(
    "aiplane_queue_nominal_gpus", "gauge", "The queue's own GPU quota, per GPU model.",
    "scheduler", ("queue", "gpu_model"),
)  # fmt: skip
QUEUE_USED = _m(
    "aiplane_queue_used_gpus", "gauge", "GPUs held by the queue's admitted workloads.",
    "scheduler", ("queue", "gpu_model"),
)  # fmt: skip
QUEUE_BORROWED = _m(
    "aiplane_queue_borrowed_gpus", "gauge",
    "GPUs the queue holds beyond its own quota, lent by its cohort.", "scheduler",
    ("queue", "gpu_model"),
)  # fmt: skip
CLUSTER_GPUS = _m(
    "aiplane_cluster_gpus", "gauge",
    "GPUs by state: allocated (held by a pod or replica), idle (free and usable by the "
    "workloads that arrive), stranded (free, but on a node where no common shape fits: "
    "fragmentation).", "scheduler", ("gpu_model", "state"),
)  # fmt: skip

# -- jobs (TrainingJob, BatchJob) ------------------------------------------------------
# The job's name is ``job_name`` (as kube-state-metrics has it): ``job`` is Prometheus's own
# target label, and a scraped ``job`` would be renamed ``exported_job``.
JOB_PHASE = _m(
    "aiplane_job_phase", "gauge", "1 for the job's phase (Pending, Running, Succeeded, ...).",
    "jobs", ("kind", "job_name", "queue", "phase"),
)  # fmt: skip
JOB_PENDING = _m(
    "aiplane_job_pending_seconds", "gauge", "How long a pending job has waited for admission.",
    "jobs", ("kind", "job_name", "queue"), unit="s",
)  # fmt: skip
JOB_GPUS = _m(
    "aiplane_job_allocated_gpus", "gauge", "GPUs the job's running workers hold.",
    "jobs", ("kind", "job_name", "queue"),
)  # fmt: skip
JOB_STEP = _m(
    "aiplane_job_step", "gauge", "The last training step rank 0 reported.", "jobs", ("job_name",),
)  # fmt: skip
JOB_TOTAL_STEPS = _m(
    "aiplane_job_total_steps", "gauge", "The steps the training run will take, as it reported.",
    "jobs", ("job_name",),
)  # fmt: skip
JOB_LOSS = _m("aiplane_job_loss", "gauge", "The last loss rank 0 reported.", "jobs", ("job_name",))
JOB_SHARDS = _m(
    "aiplane_job_shards", "gauge", "BatchJob shards by state (completed, failed, total).",
    "jobs", ("job_name", "state"),
)  # fmt: skip
JOB_ROWS = _m(
    "aiplane_job_rows_total", "counter",
    "Rows a BatchJob processed (completed shards and the running shards' progress).",
    "jobs", ("job_name",), unit="short",
)  # fmt: skip
JOB_ROW_ERRORS = _m(
    "aiplane_job_row_errors_total", "counter", "Rows a BatchJob set aside as bad.", "jobs", ("job_name",),
)  # fmt: skip

# -- embeddings server (aiplane's own engine) ------------------------------------------
EMBED_REQUESTS = _m(
    "aiplane_embeddings_requests_total", "counter", "Embeddings requests by HTTP status code.",
    "embeddings", ("code",),
)  # fmt: skip
EMBED_INPUTS = _m("aiplane_embeddings_inputs_total", "counter", "Texts embedded.", "embeddings")
EMBED_TOKENS = _m(
    "aiplane_embeddings_prompt_tokens_total", "counter", "Tokens the model saw, after truncation.",
    "embeddings",
)  # fmt: skip
EMBED_DURATION = _m(
    "aiplane_embeddings_request_duration_seconds", "histogram",
    "Embeddings request latency, queueing included.", "embeddings", buckets=EMBED_BUCKETS, unit="s",
)  # fmt: skip
EMBED_RUNNING = _m(
    "aiplane_embeddings_requests_running", "gauge", "Embeddings requests in flight (queued or computing).",
    "embeddings",
)  # fmt: skip
EMBED_WAITING = _m(
    "aiplane_embeddings_requests_waiting", "gauge", "Embeddings requests queued for the inference thread.",
    "embeddings",
)  # fmt: skip

# -- GPUs, under the DCGM exporter's names (dcgm-exporter's default-counters.csv) --------
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "namespace", "pod", "container")
GPU_UTIL = _m("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "gpu", DCGM_LABELS, unit="percent")
GPU_MEM_COPY_UTIL = _m(
    "DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", "gpu", DCGM_LABELS,
    unit="percent",
)  # fmt: skip
GPU_FB_USED = _m(
    "DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "gpu", DCGM_LABELS,
    unit="decmbytes",
)  # fmt: skip
GPU_FB_FREE = _m(
    "DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "gpu", DCGM_LABELS,
    unit="decmbytes",
)  # fmt: skip
GPU_POWER = _m("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "gpu", DCGM_LABELS, unit="watt")
GPU_TEMP = _m("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "gpu", DCGM_LABELS, unit="celsius")
GPU_SM_CLOCK = _m(
    "DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "gpu", DCGM_LABELS,
    unit="rotmhz",
)  # fmt: skip
GPU_XID = _m(
    "DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", "gpu", DCGM_LABELS
)
# dcgm-exporter types it a counter; the name has no ``_total`` of Prometheus's kind, which
# prometheus_client would append, so it is exposed as a gauge (the value is the same).
GPU_ECC_DBE = _m(
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "gauge",
    "Total number of double-bit volatile ECC errors.", "gpu", DCGM_LABELS,
)  # fmt: skip
GPU_EXPORTER_DEVICES = _m(
    "aiplane_gpu_exporter_devices", "gauge",
    "GPUs the local exporter reads, by source (nvml, fake-nvml, none: then no DCGM_* series "
    "are exported, rather than made-up numbers) and the reason when none.", "gpu",
    ("source", "reason"),
)  # fmt: skip
