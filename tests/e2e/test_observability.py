"""The local plane under load, scraped by Debian's real Prometheus.

The plane serves SmolLM2 (real llama-server) on one of two fake GPUs (this machine has
none: ``AIPLANE_FAKE_GPUS`` stands in for NVML's inventory; placement and the
CUDA_VISIBLE_DEVICES given to llama-server are the real code paths), a Queue, a running
TrainingJob that reports steps and loss, a BatchJob whose shards report rows, and a
TrainingJob its quota cannot take. The official ``openai`` client sends streamed and
unstreamed chats from several threads; then Prometheus must hold exactly the counts
sent and the queue and job figures the plane decided.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aiplane.dev import prometheus as prom
from aiplane.observe import catalogue as c
from aiplane.runtime.local.process import free_port
from tests.e2e.conftest import write
from tests.e2e.plane import Plane, model_yaml

pytestmark = pytest.mark.e2e

REQUESTS = 16  # half streamed (with usage), half not; 4 at a time, the replica's slots
SCRAPE_S = 1.0
STEPS_JOB = """\
import json, time
for step in range(1, 100000):
    line = {"step": step, "total_steps": 100000, "loss": 5.0 / step}
    print("AIPLANE_PROGRESS " + json.dumps(line), flush=True)
    time.sleep(0.2)
"""
ROWS_JOB = """\
import json, os, time
with open(os.environ["AIPLANE_SHARD_OUTPUT"], "w") as out:
    for row in range(1, 41):
        out.write(json.dumps({"id": row}) + "\\n")
        print("AIPLANE_PROGRESS " + json.dumps({"rows": row, "errors": 0}), flush=True)
        time.sleep(0.1)
"""


def resources(tmp: Path) -> list[Path]:
    (tmp / "steps.py").write_text(STEPS_JOB)
    (tmp / "rows.py").write_text(ROWS_JOB)
    (tmp / "input.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(8)))
    model = model_yaml("smollm2", min_replicas=1, max_replicas=1).replace(
        "  replicas:", "  resources: {gpus: 1}\n  replicas:"
    )
    jobs = f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Queue
metadata: {{name: team-a}}
spec: {{quota: {{"*": 1}}}}
---
apiVersion: aiplane.dev/v1alpha1
kind: TrainingJob
metadata: {{name: steps}}
spec: {{command: [{sys.executable}, {tmp / "steps.py"}], gpusPerWorker: 1, queue: team-a}}
---
apiVersion: aiplane.dev/v1alpha1
kind: TrainingJob
metadata: {{name: too-big}}
spec: {{command: [{sys.executable}, -c, pass], workers: 2, gpusPerWorker: 1, queue: team-a}}
---
apiVersion: aiplane.dev/v1alpha1
kind: BatchJob
metadata: {{name: rows}}
spec:
  task: command
  command: [{sys.executable}, {tmp / "rows.py"}]
  input: {tmp / "input.jsonl"}
  output: {tmp / "out"}
  shards: 2
  queue: team-a
"""
    return [write(tmp, "model.yaml", model), write(tmp, "jobs.yaml", jobs)]


@dataclass
class Sent:
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    multi_token_streams: int = 0


def chat(client: openai.OpenAI, i: int) -> tuple[bool, int, int]:
    messages = [{"role": "user", "content": f"Count from {i} to {i + 5}."}]
    if i % 2:
        stream = client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=24, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None
        return True, usage.prompt_tokens, usage.completion_tokens
    answer = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24)
    assert answer.usage is not None
    return False, answer.usage.prompt_tokens, answer.usage.completion_tokens


def query(url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(url: str, expr: str) -> float:
    result = query(url, expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:g}s (last: {last})")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plane, str, Sent]]:
    tmp = tmp_path_factory.mktemp("observe")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIPLANE_FAKE_GPUS", "2xH100")  # the plane (a child) inherits it
    plane = Plane(tmp, resources(tmp)).start()
    server = prom.start(tmp / "prometheus", prom.config([plane.url], SCRAPE_S), free_port())
    try:
        plane.wait_replicas("smollm2", 1, timeout=120)
        client = openai.OpenAI(base_url=plane.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: chat(client, i), range(REQUESTS)))
        sent = Sent()
        for streamed, prompt, completion in results:
            sent.streamed += streamed
            sent.prompt_tokens += prompt
            sent.completion_tokens += completion
            sent.multi_token_streams += streamed and completion > 1
        # the jobs' series and a second sample of every counter after the load
        done = f'{c.JOB_SHARDS.name}{{job_name="rows",state="completed"}} == 2'
        try:
            eventually(lambda: query(server.url, done), 60, "both shards of the rows job done")
        except AssertionError as exc:
            targets = httpx.get(f"{server.url}/api/v1/targets").json()["data"]["activeTargets"]
            up = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
            raise AssertionError(f"{exc}\n{plane.cli('get', 'jobs').stdout}\n{up}") from None
        time.sleep(3 * SCRAPE_S)
        yield plane, server.url, sent
    finally:
        server.stop()
        plane.stop()
        mp.undo()


def test_prometheus_holds_exactly_the_requests_and_tokens_sent(observed: tuple[Plane, str, Sent]) -> None:
    _, url, sent = observed
    by_status = {
        r["metric"]["status"]: float(r["value"][1])
        for r in query(url, f'sum by (status) ({c.GATEWAY_REQUESTS.name}{{model="smollm2"}})')
    }
    assert by_status == {"200": REQUESTS}
    assert scalar(url, f'sum({c.GATEWAY_LATENCY.name}_count{{model="smollm2"}})') == REQUESTS
    assert (
        scalar(url, f'sum({c.GATEWAY_TTFT.name}_count{{model="smollm2"}})') == sent.streamed == REQUESTS // 2
    )
    assert scalar(url, f'sum({c.GATEWAY_ITL.name}_count{{model="smollm2"}})') == sent.multi_token_streams
    tokens = {
        r["metric"]["kind"]: float(r["value"][1])
        for r in query(url, f'sum by (kind) ({c.GATEWAY_TOKENS.name}{{model="smollm2"}})')
    }
    assert tokens == {"prompt": sent.prompt_tokens, "completion": sent.completion_tokens}
    # TTFTs are real: each under the whole request's time, the p95 a finite number of seconds
    p95 = scalar(url, f"histogram_quantile(0.95, sum by (le) ({c.GATEWAY_TTFT.name}_bucket))")
    assert 0 < p95 < 120


def test_queues_and_jobs_are_exported(observed: tuple[Plane, str, Sent]) -> None:
    _, url, _ = observed
    assert scalar(url, f'{c.JOB_PHASE.name}{{job_name="steps",phase="Running"}}') == 1
    assert scalar(url, f'{c.JOB_STEP.name}{{job_name="steps"}}') > 0
    loss, step = (
        scalar(url, f'{c.JOB_LOSS.name}{{job_name="steps"}}'),
        scalar(url, f'{c.JOB_STEP.name}{{job_name="steps"}}'),
    )
    assert math.isclose(loss, 5.0 / step, rel_tol=0.5)  # the same line's loss, up to a step apart
    assert scalar(url, f'{c.JOB_ROWS.name}{{job_name="rows"}}') == 80
    assert scalar(url, f'{c.JOB_PENDING.name}{{job_name="too-big"}}') > 0
    assert scalar(url, f'sum({c.QUEUE_PENDING.name}{{queue="team-a"}})') == 1
    assert scalar(url, f'{c.QUEUE_USED.name}{{queue="team-a"}}') == 1
    assert scalar(url, f'sum({c.CLUSTER_GPUS.name}{{state="allocated"}})') == 2


def test_aiplane_dev_prometheus_scrapes_the_plane_until_interrupted(
    observed: tuple[Plane, str, Sent], tmp_path: Path
) -> None:
    plane, _, _ = observed
    port = free_port()
    args = ["dev", "prometheus", "--plane", plane.url, "--port", str(port), "--interval", "1"]
    cmd = [sys.executable, "-m", "aiplane.cli.main", *args, "--dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed once it is ready
        assert url == f"http://127.0.0.1:{port}"

        def scraped() -> list[dict[str, Any]]:
            return query(url, f'{c.AUTOSCALER_READY.name}{{model="smollm2"}} == 1')

        eventually(scraped, 30, "the plane's series in the dev Prometheus")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""


def test_aiplane_top_shows_the_running_plane_with_its_real_figures(observed: tuple[Plane, str, Sent]) -> None:
    """Two scrapes around a known burst: the rates are the burst over the span, exactly;
    then the CLI renders the plane's rows in a (captured) terminal."""
    from aiplane.cli.top import PlaneSource
    from aiplane.observe import top

    plane, url, _ = observed
    client = openai.OpenAI(base_url=plane.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with httpx.Client(timeout=10) as http:
        source = PlaneSource(http, plane.url)
        t0, before = source.scrape()
        burst = [chat(client, i) for i in range(4)]  # 2 streamed (odd i), 2 not
        t1, after = source.scrape()
    rates = top.rates_between(after, before, t1 - t0)["smollm2"]
    assert rates.rps * (t1 - t0) == pytest.approx(4)
    assert rates.error_ratio == 0
    assert rates.completion_tps * (t1 - t0) == pytest.approx(sum(completion for _, _, completion in burst))
    assert rates.ttft_p95 is not None and 0 < rates.ttft_p95 < t1 - t0
    (model,) = top.frame("t", after, {}).models
    assert (model.model, model.ready, model.desired) == ("smollm2", 1, 1)

    shown = plane.cli("top", "--once", "--interval", "0.5")  # the plane of its AIPLANE_HOME
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    row = next(line for line in lines if "smollm2" in line)
    assert "1/1" in row.split()
    steps = next(line for line in lines if "TrainingJob/steps" in line)
    assert "Running" in steps and "team-a" in steps and "step " in steps
    assert any("TrainingJob/too-big" in line and "Pending" in line for line in lines)
    queue = next(line for line in lines if line.split("│")[1:2] and line.split("│")[1].strip() == "team-a")
    assert "1/1" in queue  # GPUs used / quota

    through_prometheus = plane.cli("top", "--once", "--prometheus", url)
    assert through_prometheus.returncode == 0, through_prometheus.stderr
    row = next(line for line in through_prometheus.stdout.splitlines() if "smollm2" in line)
    assert "1/1" in row.split()
