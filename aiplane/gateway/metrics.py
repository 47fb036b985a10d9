"""The gateway's Prometheus metrics, ``aiplane_*`` with units in the names.

Each gateway owns a registry (not the global one), so tests and benchmarks can run
several in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "aiplane_gateway_requests_total",
            "Requests answered by the gateway, by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "aiplane_gateway_requests_in_flight", "Requests being proxied now.", ["model"], registry=r
        )
        self.queued = Gauge(
            "aiplane_gateway_requests_queued",
            "Requests waiting for a free slot on a ready replica.",
            ["model"],
            registry=r,
        )
        self.held = Gauge(
            "aiplane_gateway_requests_held",
            "Requests held waiting for any ready replica (a cold start); the autoscaler scales "
            "from zero on it.",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "aiplane_gateway_queue_wait_seconds",
            "Time a request waited for a ready replica.",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "aiplane_gateway_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "aiplane_gateway_time_to_first_token_seconds",
            "Time from request to the first streamed chunk.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "aiplane_gateway_tokens_total",
            "Tokens processed, by kind (prompt, completion).",
            ["model", "kind"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "aiplane_gateway_upstream_errors_total",
            "Failures talking to a replica (connection refused, reset mid-stream).",
            ["model"],
            registry=r,
        )
        self.cold_starts = Counter(
            "aiplane_gateway_cold_start_waits_total",
            "Requests that found no ready replica and waited for one.",
            ["model"],
            registry=r,
        )
