"""Local autoscaling with the real gateway, llama-server and SmolLM2: 1 -> N under load
and back, streams that outlive a scale-down, and every ``autoscaling.metric``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import write
from tests.e2e.plane import Plane, model_yaml

pytestmark = pytest.mark.e2e


def stream_all(plane: Plane, model: str, lengths: list[int]) -> list[tuple[str, str | None, float]]:
    """Concurrent streams of these max_tokens with the official client: (text,
    finish_reason, wall time it ended) each."""
    n = len(lengths)
    out: list[tuple[str, str | None, float]] = [("", None, 0.0)] * n
    client = openai.OpenAI(base_url=plane.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def one(i: int) -> None:
        text, finish = "", None
        for chunk in client.chat.completions.create(
            model=model, stream=True, max_tokens=lengths[i], temperature=0, extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": f"Write a long story about the number {i}."}],
        ):  # fmt: skip
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        out[i] = (text, finish, time.time())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return out


@pytest.mark.timeout(600)
def test_load_scales_one_to_three_and_back_and_every_stream_completes(tmp_path: Path) -> None:
    spec = model_yaml(
        "elastic", min_replicas=1, max_replicas=3, target=1, stable_window="4s", scale_down_delay="1s"
    )
    plane = Plane(tmp_path, [write(tmp_path, "elastic.yaml", spec)]).start()
    try:
        plane.wait_replicas("elastic", 1)
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], sum(1 for r in plane.replicas("elastic") if r.state == "Ready"))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        # Streams of very different lengths: the short ones end, demand falls, replicas
        # drain while the long ones still stream.
        results = stream_all(plane, "elastic", [16, 16, 16, 32, 1200, 1200])
        done.set()
        watcher.join()
        # 6 requests for a target of 1 each, capped at max 3; none dropped, every stream whole.
        assert peak[0] == 3
        assert all(text and finish == "length" for text, finish, _ in results), results
        # Idle: back to min once the 4 s stable window forgets the load and 5 measured cold
        # starts have passed (about 5 s on a quiet machine, a minute or more on a busy one).
        plane.wait_replicas("elastic", 1, timeout=240)
        downs = [ts for ts, _, reason, _ in plane.store.events("Model/elastic") if reason == "ScaleDown"]
        assert len(downs) == 2
        # A replica was told to drain while a stream was still going, and that stream ended whole.
        assert min(downs) < max(ended for _, _, ended in results), (downs, results)
    finally:
        plane.stop()


METRICS = {
    # the policy each metric selects, as its reason on the Model's status shows
    "queue-depth": "waiting / (4 slots + 2 queued)",
    "kv-cache": "no KV-cache signal",  # llama-server exports no KV gauge: concurrency stands in
    "latency": "per replica (",
    "cpu": "/ target 70%",  # a real reading ("cpu 3% / target 70%"), not "no cpu signal: holding"
}


def test_every_metric_selects_its_policy_fed_by_real_signals(tmp_path: Path) -> None:
    files = []
    for metric in METRICS:
        target = {"queue-depth": 2, "kv-cache": 0.8, "latency": 2.0, "cpu": 0.7}[metric]
        extra = "  resources: {cpu: '1'}\n" if metric == "cpu" else ""
        spec = model_yaml(metric, min_replicas=1, max_replicas=2, target=target, metric=metric, extra=extra)
        files.append(write(tmp_path, f"{metric}.yaml", spec))
    plane = Plane(tmp_path, files).start()
    try:
        for metric in METRICS:
            plane.wait_replicas(metric, 1, timeout=90)
        client = openai.OpenAI(base_url=plane.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for metric in METRICS:
            reply = client.chat.completions.create(
                model=metric, max_tokens=8, messages=[{"role": "user", "content": "Say hi"}]
            )
            assert reply.choices[0].message.content
        deadline = time.monotonic() + 20
        reasons: dict[str, str] = {}
        while time.monotonic() < deadline:
            reasons = {name: row.reason for name, row in plane.store.statuses().items()}
            if all(want in reasons.get(metric, "") for metric, want in METRICS.items()):
                break
            time.sleep(0.25)
        for metric, want in METRICS.items():
            assert want in reasons.get(metric, ""), (metric, reasons.get(metric))
        # The latency policy saw a real p95 TTFT; the cpu policy a real CPU reading.
        assert "%" in reasons["cpu"] and "no cpu signal" not in reasons["cpu"]
    finally:
        plane.stop()
