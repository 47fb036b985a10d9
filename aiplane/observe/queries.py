"""PromQL that more than one consumer needs (dashboards, alert rules, ``aiplane top``,
``aiplane report``), built from the catalogue's names so it cannot drift from them.

Functions take the range window (``w``, a PromQL duration) where the expression has one.
"""

from __future__ import annotations

from aiplane.observe import catalogue as c

# A GPU series joined to the model whose replica holds the GPU: dcgm-exporter's
# Kubernetes mode (and the local exporter) labels a GPU with the pod using it, and the
# gateway says which model each ready pod serves.
MODEL_JOIN = f"on (namespace, pod) group_left (model) {c.MODEL_REPLICA_INFO.name}"


def request_rate(w: str = "1m") -> str:
    """Requests per second answered, by model."""
    return f"sum by (model) (rate({c.GATEWAY_REQUESTS.name}[{w}]))"


def error_ratio(w: str = "5m") -> str:
    """The share of requests answered with a server error (5xx), by model."""
    errors = f'sum by (model) (rate({c.GATEWAY_REQUESTS.name}{{status=~"5.."}}[{w}]))'
    return f"({errors} or {request_rate(w)} * 0) / {request_rate(w)}"


def quantile(metric: c.Metric, q: float = 0.95, w: str = "5m", by: str = "model") -> str:
    """A quantile of a catalogue histogram over ``w``, by ``by``."""
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric.name}_bucket[{w}])))"


def ttft_p95(w: str = "5m") -> str:
    return quantile(c.GATEWAY_TTFT, 0.95, w)


def token_rate(kind: str, w: str = "1m") -> str:
    """Tokens per second of ``kind`` (prompt, completion), by model."""
    return f'sum by (model) (rate({c.GATEWAY_TOKENS.name}{{kind="{kind}"}}[{w}]))'


def gpu_util_by_model() -> str:
    """Average GPU utilisation (%) of the GPUs each model's replicas hold."""
    return f"avg by (model) ({c.GPU_UTIL.name} * {MODEL_JOIN})"


def gpu_memory_used_by_model() -> str:
    """Framebuffer MiB used on the GPUs each model's replicas hold."""
    return f"sum by (model) ({c.GPU_FB_USED.name} * {MODEL_JOIN})"


def gpus_by_state() -> str:
    return f"sum by (state) ({c.CLUSTER_GPUS.name})"


def pending_by_queue() -> str:
    return f"sum by (queue, reason) ({c.QUEUE_PENDING.name})"
