"""Engine metrics through Prometheus, for clusters whose Prometheus already scrapes the Model pods.

Without it the autoscaler scrapes every ready pod itself (:mod:`.signals`). With
``AIPLANE_PROMETHEUS_URL`` it asks Prometheus instead: one instant query per signal
(``GET /api/v1/query``), aggregated over the series of the Model's pods, so the operator
makes at most three requests per Model however many replicas run, and reads what the
cluster's dashboards read. The values are as fresh as Prometheus's scrape interval.

The series are found by two labels that the conventional ``kubernetes-pods`` scrape job
(:data:`KUBERNETES_PODS_JOB`) puts on every sample: ``namespace``, and the pod's
``aiplane.dev/model`` label turned into a Prometheus label name (``aiplane_dev_model``).

:func:`engine_queries` and :func:`parse_vector` are pure; :func:`query_engines` does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from aiplane.engines import MetricNames
from aiplane.errors import PrometheusError
from aiplane.runtime.engine_metrics import EngineSample
from aiplane.runtime.kubernetes.constants import LABEL_MODEL

QUERY_TIMEOUT_S = 1.0
"""All of one Model's queries; past it the autoscaler reads the pods for that tick."""

NAMESPACE_LABEL = "namespace"


def prometheus_label_name(kubernetes_label: str) -> str:
    """The name Prometheus's Kubernetes discovery gives a pod label: every character
    outside ``[a-zA-Z0-9_]`` becomes ``_`` (``aiplane.dev/model`` -> ``aiplane_dev_model``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", kubernetes_label)


MODEL_LABEL = prometheus_label_name(LABEL_MODEL)

KUBERNETES_PODS_JOB: dict[str, Any] = {
    "job_name": "kubernetes-pods",
    "honor_labels": True,
    "kubernetes_sd_configs": [{"role": "pod"}],
    "relabel_configs": [
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
         "action": "keep", "regex": "true"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape_slow"],
         "action": "drop", "regex": "true"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scheme"],
         "action": "replace", "regex": "(https?)", "target_label": "__scheme__"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
         "action": "replace", "target_label": "__metrics_path__", "regex": "(.+)"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_port", "__meta_kubernetes_pod_ip"],
         "action": "replace", "regex": r"(\d+);(([A-Fa-f0-9]{1,4}::?){1,7}[A-Fa-f0-9]{1,4})",
         "replacement": "[$2]:$1", "target_label": "__address__"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_port", "__meta_kubernetes_pod_ip"],
         "action": "replace", "regex": r"(\d+);((([0-9]+?)(\.|$)){4})",
         "replacement": "$2:$1", "target_label": "__address__"},
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_annotation_prometheus_io_param_(.+)",
         "replacement": "__param_$1"},
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
        {"source_labels": ["__meta_kubernetes_namespace"], "action": "replace",
         "target_label": NAMESPACE_LABEL},
        {"source_labels": ["__meta_kubernetes_pod_name"], "action": "replace", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_phase"],
         "regex": "Pending|Succeeded|Failed|Completed", "action": "drop"},
    ],
}  # fmt: skip
"""The scrape job the queries assume, as Prometheus configuration (``scrape_configs`` entry).

It is the ``kubernetes-pods`` job of the prometheus-community Helm chart
(``charts/prometheus/values.yaml`` in github.com/prometheus-community/helm-charts), rule
for rule: keep pods annotated ``prometheus.io/scrape: "true"`` (the lowering annotates
every Model pod whose engine has a metrics path, with ``prometheus.io/port`` and
``prometheus.io/path``), scrape the annotated port and path, map every pod label to a
Prometheus label (``labelmap`` of ``__meta_kubernetes_pod_label_(.+)``), and add
``namespace`` and ``pod``. Prometheus's own ``documentation/examples/prometheus-kubernetes.yml``
has the same ``labelmap`` but names the labels ``kubernetes_namespace`` and
``kubernetes_pod_name`` and leaves the annotation rules commented out; a cluster using it
needs those rules and the chart's label names. ``honor_labels`` means an engine exporting
its own ``namespace`` label would win over the pod's: none of aiplane's engines does. A
Prometheus built without Kubernetes discovery (Debian's) can run the same rules over any
discovery that yields the ``__meta_kubernetes_pod_*`` labels (the k8s test does so).
"""


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def quote(value: str) -> str:
    """A PromQL double-quoted string: backslash, quote and newline escaped (Go's escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def series(metric: str, labels: Mapping[str, str]) -> str:
    """A vector selector. Names such as ``vllm:num_requests_waiting`` are valid bare (colons
    are allowed); any other name is matched through ``__name__``."""
    matchers = ",".join(f"{name}={quote(value)}" for name, value in labels.items())
    if _METRIC_NAME.fullmatch(metric):
        return f"{metric}{{{matchers}}}"
    return f"{{__name__={quote(metric)},{matchers}}}"


def engine_queries(names: MetricNames, namespace: str, model: str) -> dict[str, str]:
    """``EngineSample`` field -> PromQL over one Model's pods, for what the engine exports:
    running and waiting summed over the replicas, KV-cache use averaged (a ratio), as
    :func:`~aiplane.runtime.engine_metrics.combine` does for scraped pods."""
    labels = {NAMESPACE_LABEL: namespace, MODEL_LABEL: model}
    wanted = {
        "running": ("sum", names.running),
        "waiting": ("sum", names.waiting),
        "kv_cache": ("avg", names.kv_cache_usage),
    }
    return {field: f"{op}({series(metric, labels)})" for field, (op, metric) in wanted.items() if metric}


def parse_vector(text: str, status: int = 200) -> float | None:
    """The value of an instant query for one aggregate, from the API's JSON answer.

    An empty vector is None: no such series (the engine does not export it, or nothing
    scraped the pods yet), never a made-up zero; so is NaN. Anything but a successful
    vector of at most one sample raises :class:`PrometheusError` naming what was expected.
    """
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise PrometheusError(f"expected Prometheus's JSON (HTTP {status}), got {text[:200]!r}") from exc
    if not isinstance(body, dict):
        raise PrometheusError(f"expected a JSON object from Prometheus, got {text[:200]!r}")
    if body.get("status") != "success":
        kind, error = body.get("errorType", "no errorType"), body.get("error", "no error message")
        raise PrometheusError(
            f"Prometheus answered status {body.get('status')!r} (HTTP {status}): {kind}: {error}"
        )
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        got = data.get("resultType") if isinstance(data, dict) else data
        raise PrometheusError(f"expected resultType 'vector' from an instant query, got {got!r}")
    result = data.get("result")
    if not isinstance(result, list) or len(result) > 1:
        raise PrometheusError(f"expected at most one sample from an aggregation, got {result!r:.200}")
    if not result:
        return None
    value = result[0].get("value") if isinstance(result[0], dict) else None
    try:
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str):
            raise ValueError(value)
        out = float(value[1])
    except ValueError as exc:
        raise PrometheusError(f'expected a sample value [timestamp, "number"], got {value!r}') from exc
    return None if math.isnan(out) else out


def sample_from(answers: Mapping[str, float | None]) -> EngineSample:
    """``EngineSample`` field -> parsed value; what was not queried is None."""
    return EngineSample(answers.get("running"), answers.get("waiting"), answers.get("kv_cache"))


async def query_engines(
    session: aiohttp.ClientSession,
    base_url: str,
    names: MetricNames,
    namespace: str,
    model: str,
    timeout: float = QUERY_TIMEOUT_S,
) -> EngineSample:
    """One Model's engines as Prometheus last scraped them: the queries run concurrently,
    all within ``timeout``. Raises :class:`PrometheusError` saying what failed."""
    queries = engine_queries(names, namespace, model)
    url = base_url.rstrip("/") + "/api/v1/query"

    async def ask(query: str) -> float | None:
        try:
            async with session.get(url, params={"query": query}) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, UnicodeDecodeError) as exc:
            raise PrometheusError(f"cannot query Prometheus at {base_url}: {exc}") from exc
        try:
            return parse_vector(text, status)
        except PrometheusError as exc:
            raise PrometheusError(f"{query}: {exc}") from exc

    try:
        async with asyncio.timeout(timeout):
            values = await asyncio.gather(*(ask(q) for q in queries.values()))
    except TimeoutError as exc:
        raise PrometheusError(f"Prometheus at {base_url} did not answer within {timeout:g} s") from exc
    return sample_from(dict(zip(queries, values, strict=True)))
