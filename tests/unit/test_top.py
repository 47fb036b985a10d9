"""``aiplane top``'s arithmetic on real exposition text: rates between two scrapes,
errors, TTFT p95 as Prometheus's histogram_quantile, and the job, queue and GPU rows."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from aiplane.observe import catalogue as c
from aiplane.observe import top
from aiplane.observe.samples import Snapshot, histogram_quantile, increase


def scrape(registry: CollectorRegistry) -> Snapshot:
    return Snapshot.parse(generate_latest(registry).decode())


def test_rates_between_two_scrapes_are_the_counters_increase_over_the_span() -> None:
    r = CollectorRegistry()
    requests, tokens, ttft = (
        c.GATEWAY_REQUESTS.counter(r),
        c.GATEWAY_TOKENS.counter(r),
        c.GATEWAY_TTFT.histogram(r),
    )
    requests.labels("m", "/v1/chat/completions", "200").inc(100)  # before the span: not counted
    ttft.labels("m").observe(50.0)
    before = scrape(r)
    requests.labels("m", "/v1/chat/completions", "200").inc(27)
    requests.labels("m", "/v1/chat/completions", "503").inc(3)
    tokens.labels("m", "completion").inc(200)
    tokens.labels("m", "prompt").inc(999)
    for seconds in [0.2] * 18 + [0.7, 3.0]:  # 20 first tokens in the span
        ttft.labels("m").observe(seconds)
    rates = top.rates_between(scrape(r), before, span=10.0)["m"]
    assert rates.rps == pytest.approx(3.0)
    assert rates.error_ratio == pytest.approx(0.1)
    assert rates.completion_tps == pytest.approx(20.0)
    # rank 0.95 * 20 = 19 falls in (0.5, 1]: 18 below 0.5, 19 at 1 -> 0.5 + 0.5 * (19 - 18) / 1
    assert rates.ttft_p95 == pytest.approx(1.0)


def test_a_quiet_model_has_no_error_ratio_or_ttft_rather_than_zero() -> None:
    r = CollectorRegistry()
    c.GATEWAY_REQUESTS.counter(r).labels("m", "/v1/completions", "200").inc(5)
    c.GATEWAY_TTFT.histogram(r).labels("m").observe(0.1)
    snap = scrape(r)
    rates = top.rates_between(snap, snap, span=2.0)["m"]
    assert (rates.rps, rates.error_ratio, rates.ttft_p95) == (0.0, None, None)


def test_counter_resets_count_from_zero_as_prometheus_does() -> None:
    assert increase(3.0, 10.0) == 3.0
    assert increase(12.0, 10.0) == 2.0
    assert increase(7.0, None) == 7.0


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    # 10 observations: 4 <= 0.1, 9 <= 1, 10 <= +Inf. p50: rank 5 in (0.1, 1]: 0.1 + 0.9 * 1/5
    assert histogram_quantile(0.5, {0.1: 4, 1.0: 9, float("inf"): 10}) == pytest.approx(0.28)
    assert histogram_quantile(0.99, {0.1: 4, 1.0: 9, float("inf"): 10}) == 1.0  # in +Inf: the last bound
    assert histogram_quantile(0.5, {0.1: 0, float("inf"): 0}) is None


def families() -> CollectorRegistry:
    r = CollectorRegistry()
    c.AUTOSCALER_READY.gauge(r).labels("llama").set(2)
    c.AUTOSCALER_DESIRED.gauge(r).labels("llama").set(3)
    c.GATEWAY_IN_FLIGHT.gauge(r).labels("llama").set(4)
    c.GATEWAY_QUEUED.gauge(r).labels("llama").set(1)
    c.GATEWAY_HELD.gauge(r).labels("llama").set(2)
    info = c.MODEL_REPLICA_INFO.gauge(r)
    info.labels("llama", "local", "llama-a").set(1)
    info.labels("llama", "local", "llama-b").set(1)
    util = c.GPU_UTIL.gauge(r)
    fb_used, fb_free = c.GPU_FB_USED.gauge(r), c.GPU_FB_FREE.gauge(r)
    for gpu, pod, pct in (("0", "llama-a", 80.0), ("1", "llama-b", 40.0), ("2", "", 0.0)):
        labels = (
            gpu,
            f"GPU-{gpu}",
            f"nvidia{gpu}",
            "NVIDIA H100 80GB HBM3",
            "box",
            "local" if pod else "",
            pod,
            "",
        )
        util.labels(*labels).set(pct)
        fb_used.labels(*labels).set(1000.0 * int(gpu))
        fb_free.labels(*labels).set(81559.0 - 1000.0 * int(gpu))
    phase = c.JOB_PHASE.gauge(r)
    for p in ("Pending", "Running", "Succeeded"):
        phase.labels("TrainingJob", "steps", "team-a", p).set(p == "Running")
        phase.labels("BatchJob", "rows", "team-a", p).set(p == "Pending")
    c.JOB_STEP.gauge(r).labels("steps").set(40)
    c.JOB_TOTAL_STEPS.gauge(r).labels("steps").set(300)
    c.JOB_GPUS.gauge(r).labels("TrainingJob", "steps", "team-a").set(1)
    c.JOB_PENDING.gauge(r).labels("BatchJob", "rows", "team-a").set(12.4)
    shards = c.JOB_SHARDS.gauge(r)
    shards.labels("rows", "completed").set(1)
    shards.labels("rows", "pending").set(3)
    c.QUEUE_USED.gauge(r).labels("team-a", "H100").set(1)
    c.QUEUE_NOMINAL.gauge(r).labels("team-a", "H100").set(1)
    pending = c.QUEUE_PENDING.gauge(r)
    pending.labels("team-a", "Quota").set(1)
    pending.labels("team-a", "NoFit").set(1)
    return r


def test_frame_rows_from_one_scrape() -> None:
    f = top.frame("test", scrape(families()), {})
    (m,) = f.models
    assert (m.model, m.ready, m.desired, m.in_flight, m.waiting) == ("llama", 2, 3, 4, 3)
    assert m.gpu_util == pytest.approx(60.0)  # the two GPUs its replicas hold; the free one not
    assert [(j.kind, j.name, j.phase, j.progress, j.gpus) for j in f.jobs] == [
        ("BatchJob", "rows", "Pending", "1/4 shards", 0.0),
        ("TrainingJob", "steps", "Running", "step 40/300", 1.0),
    ]
    assert f.jobs[0].pending_s == pytest.approx(12.4)
    (qu,) = f.queues
    assert (qu.queue, qu.used, qu.nominal, qu.pending) == ("team-a", 1, 1, 2)
    assert [(g.gpu, g.holder, g.fb_total) for g in f.gpus] == [
        ("0", "local/llama-a", 81559.0),
        ("1", "local/llama-b", 81559.0),
        ("2", "", 81559.0),
    ]
    out = Console(width=200, record=True)
    out.print(top.render(f))
    text = out.export_text()
    assert "llama" in text and "2/3" in text and "step 40/300" in text and "local/llama-a" in text


def test_without_a_gpu_the_frame_says_why() -> None:
    r = CollectorRegistry()
    c.GPU_EXPORTER_DEVICES.gauge(r).labels("none", "no NVML library").set(0)
    assert top.frame("t", scrape(r), {}).gpu_note == "no GPU metrics: no NVML library"


def test_prometheus_results_become_the_same_rates() -> None:
    rates = top.rates_of({"rps": {"m": 2.5}, "error_ratio": {"m": float("nan")}, "ttft_p95": {"m": 0.3}})
    assert rates["m"] == top.Rates(rps=2.5, error_ratio=None, ttft_p95=0.3, completion_tps=0.0)
