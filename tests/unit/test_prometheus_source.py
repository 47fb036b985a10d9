"""Engine metrics from Prometheus: the PromQL, the answer's parsing, and the fall back to the pods.

The queries run against a real Prometheus in ``tests/k8s/test_prometheus_signals_k8s.py``;
here the pure halves, and what :class:`KubernetesSignals` does when Prometheus is not there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from builders import metrics_server

from aiplane.engines import MetricNames, default_registry
from aiplane.engines.llamacpp import LlamaCpp
from aiplane.engines.servers import VLLM
from aiplane.runtime.engine_metrics import EngineSample
from aiplane.runtime.kubernetes import signals as signals_module
from aiplane.runtime.kubernetes.constants import LABEL_MODEL
from aiplane.runtime.kubernetes.prometheus import (
    KUBERNETES_PODS_JOB,
    MODEL_LABEL,
    PrometheusError,
    engine_queries,
    parse_vector,
    prometheus_label_name,
    query_engines,
    quote,
)
from aiplane.runtime.kubernetes.signals import KubernetesSignals

# What this repo's llama-server (SmolLM2, one slot) prints on /metrics with one request
# in its slot and two deferred; the counters and other gauges trimmed.
LLAMA_METRICS = """\
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 24
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1
"""


def answer(*values: str, status: str = "success") -> str:
    """An instant query's JSON, as Prometheus's HTTP API documents it."""
    result = [{"metric": {}, "value": [1717171717.123, v]} for v in values]
    return json.dumps({"status": status, "data": {"resultType": "vector", "result": result}})


# -- PromQL -------------------------------------------------------------------------------


def test_the_model_label_is_the_pod_label_as_prometheus_discovery_names_it() -> None:
    assert LABEL_MODEL == "aiplane.dev/model"
    assert MODEL_LABEL == prometheus_label_name(LABEL_MODEL) == "aiplane_dev_model"


def test_llamacpp_queries_sum_its_two_gauges_and_ask_no_kv_it_does_not_export() -> None:
    assert engine_queries(LlamaCpp().metrics, "team-a", "smol") == {
        "running": 'sum(llamacpp:requests_processing{namespace="team-a",aiplane_dev_model="smol"})',
        "waiting": 'sum(llamacpp:requests_deferred{namespace="team-a",aiplane_dev_model="smol"})',
    }


def test_vllm_queries_average_the_kv_cache_use() -> None:
    assert engine_queries(VLLM().metrics, "prod", "llama-8b") == {
        "running": 'sum(vllm:num_requests_running{namespace="prod",aiplane_dev_model="llama-8b"})',
        "waiting": 'sum(vllm:num_requests_waiting{namespace="prod",aiplane_dev_model="llama-8b"})',
        "kv_cache": 'avg(vllm:kv_cache_usage_perc{namespace="prod",aiplane_dev_model="llama-8b"})',
    }


def test_an_engine_without_metric_names_has_nothing_to_ask() -> None:
    assert engine_queries(MetricNames(), "ns", "m") == {}


def test_label_values_are_quoted_and_odd_metric_names_go_through___name__() -> None:
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    queries = engine_queries(MetricNames(running="odd-name.total"), 'n"s', "m\\x")
    selector = '{__name__="odd-name.total",namespace="n\\"s",aiplane_dev_model="m\\\\x"}'
    assert queries == {"running": f"sum({selector})"}


def test_the_scrape_job_is_the_kubernetes_pods_job_and_copies_do_not_touch_it() -> None:
    rules = KUBERNETES_PODS_JOB["relabel_configs"]
    assert {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"} in rules
    targets = {r.get("target_label"): r.get("source_labels") for r in rules}
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    assert targets["pod"] == ["__meta_kubernetes_pod_name"]
    assert targets["__metrics_path__"] == ["__meta_kubernetes_pod_annotation_prometheus_io_path"]
    assert rules[0] == {
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
        "action": "keep",
        "regex": "true",
    }
    assert KUBERNETES_PODS_JOB["kubernetes_sd_configs"] == [{"role": "pod"}]


# -- the answer ---------------------------------------------------------------------------


def test_a_vector_with_one_sample_is_its_value() -> None:
    assert parse_vector(answer("1.5")) == 1.5
    assert parse_vector(answer("0")) == 0.0  # a real zero stays a zero


def test_an_empty_vector_is_none_never_a_zero() -> None:
    assert parse_vector(answer()) is None
    assert parse_vector(answer("NaN")) is None


def test_an_error_status_names_prometheus_error() -> None:
    body = json.dumps({"status": "error", "errorType": "bad_data", "error": 'parse error at char 5: "x"'})
    with pytest.raises(PrometheusError, match=r"status 'error' \(HTTP 400\): bad_data: parse error"):
        parse_vector(body, 400)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<html>502 Bad Gateway</html>", "expected Prometheus's JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}),
         "expected resultType 'vector'"),
        (answer("1", "2"), "expected at most one sample"),
        (json.dumps({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1]}]}}),
         "expected a sample value"),
        (answer("many"), "expected a sample value"),
    ],
)  # fmt: skip
def test_anything_else_is_an_error_saying_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(PrometheusError, match=expected):
        parse_vector(text, 502)


# -- no Prometheus: the pods ----------------------------------------------------------------


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod(name: str, port: int) -> dict[str, Any]:
    """A ready Model pod as the lowering annotates it, its engine at 127.0.0.1:port."""
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                            "prometheus.io/path": "/metrics"},
        },
        "status": {
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:07Z"}],
        },
    }  # fmt: skip


@pytest.fixture
async def engine_port() -> AsyncIterator[int]:
    """A llama-server's /metrics (its real text), on loopback."""

    async with metrics_server(LLAMA_METRICS) as port:
        yield port


async def test_without_prometheus_the_engines_come_from_the_pods_and_one_warning_says_so(
    engine_port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signals_module, "PROMETHEUS_RETRY_S", 0.0)  # ask it again every refresh
    pods = [pod("smol-a", engine_port), pod("smol-b", engine_port)]
    async with aiohttp.ClientSession() as session:
        signals = KubernetesSignals(
            session, [], default_registry(), prometheus=f"http://127.0.0.1:{closed_port()}"
        )
        with caplog.at_level(logging.INFO, logger=signals_module.__name__):
            for _ in range(3):
                await signals.refresh_model("team-a/smol", "smol", "llamacpp", pods)
    read = signals.read("team-a/smol", time.time())
    assert (read.engine_running, read.engine_waiting, read.kv_cache) == (2.0, 4.0, None)  # two pods
    assert read.cold_start == 7.0  # from the pods, as ever
    assert signals.engine_source("team-a/smol") == "pods"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "team-a/smol" in warnings[0].getMessage() and "cannot query Prometheus" in warnings[0].getMessage()


async def test_a_prometheus_that_does_not_answer_in_time_is_a_failure_and_the_pods_answer(
    engine_port: int,
) -> None:
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text=answer("9"))

    app = web.Application()
    app.router.add_get("/api/v1/query", hang)
    async with TestServer(app, host="127.0.0.1") as slow, aiohttp.ClientSession() as session:
        base = str(slow.make_url("/"))
        started = time.monotonic()
        with pytest.raises(PrometheusError, match=r"did not answer within 0\.3 s"):
            await query_engines(session, base, LlamaCpp().metrics, "team-a", "smol", timeout=0.3)
        assert time.monotonic() - started < 2.0

        signals = KubernetesSignals(session, [], default_registry(), prometheus=base, prometheus_timeout=0.3)
        await signals.refresh_model("team-a/smol", "smol", "llamacpp", [pod("smol-a", engine_port)])
        read = signals.read("team-a/smol", time.time())
        assert (read.engine_running, read.engine_waiting) == (1.0, 2.0)
        assert signals.engine_source("team-a/smol") == "pods"
        # Within PROMETHEUS_RETRY_S it is not asked again: no timeout paid per tick.
        started = time.monotonic()
        await signals.refresh_model("team-a/smol", "smol", "llamacpp", [pod("smol-a", engine_port)])
        assert time.monotonic() - started < 0.25


async def test_without_a_prometheus_url_nothing_but_the_pods_is_asked(engine_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        signals = KubernetesSignals(session, [], default_registry())
        await signals.refresh_model("ns/smol", "smol", "llamacpp", [pod("smol-a", engine_port)])
    assert signals.engine_source("ns/smol") == "pods"
    assert signals.read("ns/smol", 0.0).engine_running == 1.0
    signals.forget("ns/smol")
    assert signals.engine_source("ns/smol") is None


async def test_an_engine_with_nothing_to_ask_reads_as_nothing() -> None:
    async with aiohttp.ClientSession() as session:
        sample = await query_engines(session, f"http://127.0.0.1:{closed_port()}", MetricNames(), "ns", "m")
    assert sample == EngineSample()
