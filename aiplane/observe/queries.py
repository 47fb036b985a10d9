"""PromQL that more than one consumer needs (dashboards, alert rules, ``aiplane top``,
``aiplane report``), built from the catalogue's names so it cannot drift from them.

Functions take the range window (``w``, a PromQL duration, or Grafana's
``$__rate_interval``) where the expression has one, and ``where``: extra label matchers
(``model=~"$model"``) put in every selector, so a dashboard filters the very expression
the rules and the CLI use. The alert rules' signals (the expression an alert compares
with its threshold) are here too: ``aiplane top`` shows what the alerts watch.
"""

from __future__ import annotations

from aiplane.observe import catalogue as c

# Prometheus's own per-target series (1 when the last scrape worked): not aiplane's, so
# not in the catalogue.
UP = "up"
# Firing and pending alerts, Prometheus's own series too (dashboards annotate with it).
ALERTS = "ALERTS"

# The scrape jobs the gateway's /metrics comes from: the Prometheus Operator names a
# ServiceMonitor's job after the Service (``aiplane-gateway``), ``aiplane dev prometheus``
# scrapes the local plane as ``aiplane-plane`` (aiplane.dev.prometheus.PLANE_JOB); the
# ``kubernetes-pods`` job instead maps the pod label app.kubernetes.io/component to
# ``app_kubernetes_io_component``. A unit test keeps these equal to the runtimes' names.
GATEWAY_JOBS = ("aiplane-gateway", "aiplane-plane")
GATEWAY_COMPONENT_LABEL = "app_kubernetes_io_component"
GATEWAY_COMPONENT = "gateway"

# A GPU series joined to the model whose replica holds the GPU: dcgm-exporter's
# Kubernetes mode (and the local exporter) labels a GPU with the pod using it, and the
# gateway says which model each ready pod serves. Every gateway replica exports the same
# info series (they differ in ``instance``), so the right side is first made one series
# per pod: ``group_left`` needs it unique.
MODEL_JOIN = (
    f"on (namespace, pod) group_left (model) max by (namespace, pod, model) ({c.MODEL_REPLICA_INFO.name})"
)


def selector(name: str, *matchers: str) -> str:
    """``name{m1, m2}``, leaving out empty matchers (and the braces when none is left)."""
    kept = [m for m in matchers if m]
    return f"{name}{{{', '.join(kept)}}}" if kept else name


def sum_by(by: str) -> str:
    """``sum by (x)``, or a plain ``sum`` over everything when ``by`` is empty."""
    return f"sum by ({by})" if by else "sum"


def request_rate(w: str = "1m", where: str = "", by: str = "model") -> str:
    """Requests per second answered, by model."""
    return f"{sum_by(by)} (rate({selector(c.GATEWAY_REQUESTS.name, where)}[{w}]))"


def error_ratio(w: str = "5m", where: str = "", by: str = "model") -> str:
    """The share of requests answered with a server error (5xx), by model; 0, not no
    data, for a model that served requests without an error."""
    five_xx = selector(c.GATEWAY_REQUESTS.name, 'status=~"5.."', where)
    errors = f"{sum_by(by)} (rate({five_xx}[{w}]))"
    total = request_rate(w, where, by)
    return f"({errors} or {total} * 0) / {total}"


def quantile(metric: c.Metric, q: float = 0.95, w: str = "5m", by: str = "model", where: str = "") -> str:
    """A quantile of a catalogue histogram over ``w``, by ``by`` (empty: over everything)."""
    assert metric.kind == "histogram", metric.name
    group = f"{by}, le" if by else "le"
    bucket = selector(f"{metric.name}_bucket", where)
    return f"histogram_quantile({q}, sum by ({group}) (rate({bucket}[{w}])))"


def ttft_p95(w: str = "5m", where: str = "") -> str:
    return quantile(c.GATEWAY_TTFT, 0.95, w, where=where)


def itl_quantile(q: float, w: str = "5m", where: str = "") -> str:
    """Inter-token latency (time per output token of a stream) quantile, by model."""
    return quantile(c.GATEWAY_ITL, q, w, where=where)


def itl_p50(w: str = "5m", where: str = "") -> str:
    return itl_quantile(0.5, w, where)


def itl_p95(w: str = "5m", where: str = "") -> str:
    return itl_quantile(0.95, w, where)


def queue_wait_p95(w: str = "5m", where: str = "") -> str:
    """How long requests waited for a ready replica or a free slot, p95 by model."""
    return quantile(c.GATEWAY_QUEUE_WAIT, 0.95, w, where=where)


def duration_p95(w: str = "5m", where: str = "") -> str:
    """Request to last byte, p95 by model and endpoint."""
    return quantile(c.GATEWAY_LATENCY, 0.95, w, by="model, endpoint", where=where)


def token_rate(kind: str, w: str = "1m", where: str = "") -> str:
    """Tokens per second of ``kind`` (prompt, completion), by model."""
    tokens = selector(c.GATEWAY_TOKENS.name, f'kind="{kind}"', where)
    return f"sum by (model) (rate({tokens}[{w}]))"


def by_model(metric: c.Metric, where: str = "", agg: str = "max") -> str:
    """A per-model gauge with one series per model: ``max`` for what each exporter states
    whole (the autoscaler's decision, exported by the leader and maybe a stale peer),
    ``sum`` for what each gateway replica holds a part of (requests in flight)."""
    return f"{agg} by (model) ({selector(metric.name, where)})"


def ratio_slow(metric: c.Metric, le: str, w: str = "5m", where: str = "") -> str:
    """The share of a histogram's observations above the bucket bound ``le`` (written as
    the exporter writes it, ``2.5``), by model: the bad events of a latency SLO. 0, not
    no data, when all were fast."""
    assert metric.kind == "histogram", metric.name
    bucket = selector(f"{metric.name}_bucket", f'le="{le}"', where)
    count = selector(f"{metric.name}_count", where)
    fast = f"sum by (model) (rate({bucket}[{w}]))"
    total = f"sum by (model) (rate({count}[{w}]))"
    return f"1 - {fast} / {total}"


def gpu_util_by_model(where: str = "") -> str:
    """Average GPU utilisation (%) of the GPUs each model's replicas hold."""
    return f"avg by (model) ({selector(c.GPU_UTIL.name, where)} * {MODEL_JOIN})"


def gpu_memory_used_by_model(where: str = "") -> str:
    """Framebuffer MiB used on the GPUs each model's replicas hold."""
    return f"sum by (model) ({selector(c.GPU_FB_USED.name, where)} * {MODEL_JOIN})"


def gpus_by_state() -> str:
    return f"sum by (state) ({c.CLUSTER_GPUS.name})"


def pending_by_queue() -> str:
    return f"sum by (queue, reason) ({c.QUEUE_PENDING.name})"


# -- alert signals: what each alert compares with its threshold ------------------------


def gateway_up() -> str:
    """1 per gateway scrape target whose last scrape worked, 0 when it failed."""
    by_job = selector(UP, 'job=~"{}"'.format("|".join(GATEWAY_JOBS)))
    by_pod_label = selector(UP, f'{GATEWAY_COMPONENT_LABEL}="{GATEWAY_COMPONENT}"')
    return f"{by_job} or {by_pod_label}"


def ready_replicas() -> str:
    return by_model(c.AUTOSCALER_READY)


def desired_replicas() -> str:
    return by_model(c.AUTOSCALER_DESIRED)


def min_replicas() -> str:
    return by_model(c.AUTOSCALER_MIN)


def job_pending_seconds() -> str:
    """How long each pending job has waited for admission."""
    return f"max by (kind, job_name, queue) ({c.JOB_PENDING.name})"


def gpu_xid() -> str:
    """The last XID error code of each GPU (0: none)."""
    return f"max by (Hostname, gpu, UUID, modelName) ({c.GPU_XID.name})"


def gpu_ecc_dbe_increase(w: str = "10m") -> str:
    """Double-bit (uncorrectable) ECC errors per GPU over ``w``. The volatile count resets
    with the driver, which ``increase`` takes as a counter reset."""
    return f"sum by (Hostname, gpu, UUID, modelName) (increase({c.GPU_ECC_DBE.name}[{w}]))"


# --- aiplane report (aiplane/observe/sources.py): a window's range queries -------------
# (its per-model gauges are ``by_model``, above)


def succeeded_rate(w: str = "1m") -> str:
    """Requests per second answered below 400, by model: what the token counts come from."""
    return f'sum by (model) (rate({c.GATEWAY_REQUESTS.name}{{status=~"[123].."}}[{w}]))'


def autoscaler_targets() -> str:
    """Each model's autoscaling metric (a label) and its target."""
    return f"max by (model, metric) ({c.AUTOSCALER_TARGET.name})"


def job_gpus() -> str:
    """GPUs each job's running workers hold, by kind, job and queue."""
    return f"max by (kind, job_name, queue) ({c.JOB_GPUS.name})"
