"""The gateway's Prometheus metrics, as :mod:`aiplane.observe.catalogue` declares them.

Each gateway owns a registry (not the global one), so tests and benchmarks can run
several in one process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from aiplane.gateway.discovery import Discovery
from aiplane.observe import catalogue as c


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = c.GATEWAY_REQUESTS.counter(r)
        self.in_flight = c.GATEWAY_IN_FLIGHT.gauge(r)
        self.queued = c.GATEWAY_QUEUED.gauge(r)
        self.held = c.GATEWAY_HELD.gauge(r)
        self.queue_wait = c.GATEWAY_QUEUE_WAIT.histogram(r)
        self.latency = c.GATEWAY_LATENCY.histogram(r)
        self.ttft = c.GATEWAY_TTFT.histogram(r)
        self.inter_token = c.GATEWAY_ITL.histogram(r)
        self.tokens = c.GATEWAY_TOKENS.counter(r)
        self.upstream_errors = c.GATEWAY_UPSTREAM_ERRORS.counter(r)
        self.cold_starts = c.GATEWAY_COLD_STARTS.counter(r)


class ReplicaInfo(Collector):
    """``aiplane_model_replica_info``: which model each ready replica (pod) serves, read
    from discovery at scrape time, so GPU series labelled by pod join to their model."""

    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery

    def collect(self) -> Iterator[Metric]:
        family = c.MODEL_REPLICA_INFO.family()
        for route in self._discovery.models():
            for upstream in self._discovery.upstreams(route.served_name):
                family.add_metric([route.served_name, upstream.namespace, upstream.replica_id], 1)
        yield family
