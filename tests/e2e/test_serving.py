"""Serving under concurrent load, end to end: real llama-server, real SmolLM2, the openai client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import write
from tests.e2e.plane import SMOLLM2, Plane, model_yaml

pytestmark = pytest.mark.e2e

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a GPU is in two sentences.",
    "List three fruits and their colours.",
    "Tell me a fact about the moon.",
]


@dataclass
class StreamResult:
    pieces: int
    text: str
    completion_tokens: int | None
    finish_reason: str | None
    error: str | None = None
    # llama-server's own count of tokens generated when it sent each content chunk, and
    # when it sent the usage chunk (``timings_per_token``).
    counts: list[int] = field(default_factory=list)
    final_count: int | None = None


def predicted(chunk: object) -> int | None:
    timings = (getattr(chunk, "model_extra", None) or {}).get("timings") or {}
    return timings.get("predicted_n")


async def stream_chat(
    client: openai.AsyncOpenAI,
    model: str,
    prompt: str,
    max_tokens: int,
    first_content: asyncio.Event | None = None,
) -> StreamResult:
    result = StreamResult(0, "", None, None)
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"timings_per_token": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                result.completion_tokens = chunk.usage.completion_tokens
                result.final_count = predicted(chunk)
            for choice in chunk.choices:
                if choice.delta.content:
                    result.pieces += 1
                    result.text += choice.delta.content
                    if (count := predicted(chunk)) is not None:
                        result.counts.append(count)
                    if first_content is not None:
                        first_content.set()
                result.finish_reason = choice.finish_reason or result.finish_reason
    except openai.APIError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def assert_complete(result: StreamResult) -> None:
    """Nothing silently cut: the client saw every chunk in order, up to the engine's last.

    Content chunks do not map one to one onto tokens: llama-server's chat parser merges
    tokens into one delta and holds back trailing ones (measured directly: 44 content
    chunks for 96 tokens). So each chunk's own token count (``timings.predicted_n``) is
    checked instead: strictly increasing (nothing reordered or repeated), and the stream
    reaches the engine's finish reason and its usage chunk, which it sends last, with
    the same total as ``usage.completion_tokens``.
    """
    assert result.error is None and result.pieces > 0, result
    assert result.finish_reason in ("stop", "length"), result
    assert result.completion_tokens is not None and result.final_count == result.completion_tokens, result
    assert len(result.counts) == result.pieces, result
    assert all(a < b for a, b in zip(result.counts, result.counts[1:], strict=False)), result
    assert result.counts[-1] <= result.completion_tokens, result


def llama_metric(port: int, name: str) -> float:
    """A counter from the replica's own llama-server /metrics (``llamacpp:*``)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the replica's metrics: {text[:500]}")


def default_like(name: str) -> str:
    """The built-in default model's shape: llama.cpp, 4 slots, target 4, up to 2 replicas."""
    return model_yaml(name, min_replicas=1, max_replicas=2, target=4, scale_down_delay="300s")


def client_for(plane: Plane) -> openai.AsyncOpenAI:
    """One per event loop: the client's connection pool belongs to the loop it first ran on."""
    return openai.AsyncOpenAI(base_url=plane.url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_sixteen_concurrent_streams_all_complete_and_routing_agrees_with_status(tmp_path: Path) -> None:
    plane = Plane(tmp_path, [write(tmp_path, "m.yaml", default_like("chat"))]).start()
    try:
        plane.wait_replicas("chat", 1)

        async def batch() -> list[StreamResult]:
            client = client_for(plane)
            return await asyncio.gather(
                *(stream_chat(client, "chat", PROMPTS[i % 4] + f" ({i})", 48) for i in range(8))
            )

        started = time.monotonic()
        first = asyncio.run(batch())
        print(f"first 8 streams in {time.monotonic() - started:.1f}s")
        # 8 streams over 4 slots: the gateway queued the rest, and the autoscaler added a replica.
        ready = plane.wait_replicas("chat", 2, timeout=60)
        before = {r.id: llama_metric(r.port, "llamacpp:tokens_predicted_total") for r in ready}
        started = time.monotonic()
        second = asyncio.run(batch())
        print(f"second 8 streams in {time.monotonic() - started:.1f}s")
        for result in first + second:
            assert result.error is None, result
            assert result.finish_reason in ("stop", "length"), result
            assert_complete(result)
        # Both replicas the status calls Ready served the second batch: none is silently excluded.
        after = {r.id: llama_metric(r.port, "llamacpp:tokens_predicted_total") for r in ready}
        assert all(after[rid] > before[rid] for rid in before), (before, after)
        metrics = httpx.get(plane.url + "/metrics", timeout=10).text
        assert 'status="503"' not in metrics and 'status="502"' not in metrics
        assert 'aiplane_gateway_upstream_errors_total{model="chat"}' not in metrics
        env = os.environ | {"AIPLANE_HOME": str(tmp_path)}
        cli = [sys.executable, "-m", "aiplane.cli.main", "get", "replicas"]
        out = subprocess.run(cli, env=env, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.count("Ready") == 2, out.stdout
    finally:
        plane.stop()


def cutting_model(name: str) -> str:
    script = Path(__file__).parent / "cutting_proxy.py"
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: {name}}}
spec:
  engine: custom
  source: {SMOLLM2}
  args: ["{sys.executable}", "{script}", "{{port}}", "{{model}}", "{name}"]
  replicas: {{min: 2, max: 2}}
"""


def test_cut_streams_end_in_an_error_and_the_replica_returns_to_rotation(tmp_path: Path) -> None:
    plane = Plane(tmp_path, [write(tmp_path, "m.yaml", cutting_model("cut"))]).start()
    try:
        victim, other = plane.wait_replicas("cut", 2)
        assert victim.pid

        def wait_unhealthy() -> None:
            deadline = time.monotonic() + 10
            while {r.id: r.state for r in plane.replicas("cut")}.get(victim.id) != "Unhealthy":
                assert time.monotonic() < deadline, plane.replicas("cut")
                time.sleep(0.05)

        async def cut_under_load() -> tuple[list[StreamResult], list[StreamResult]]:
            client = client_for(plane)
            under_way = [asyncio.Event() for _ in range(4)]
            tasks = [
                asyncio.create_task(stream_chat(client, "cut", PROMPTS[i], 96, under_way[i]))
                for i in range(4)
            ]
            async with asyncio.timeout(60):  # every client has its first tokens: no retry can hide a cut
                await asyncio.gather(*(e.wait() for e in under_way))
            os.kill(victim.pid, signal.SIGUSR1)  # type: ignore[arg-type]
            # Its health checks fail for a while: out of routing, and the status says so...
            await asyncio.to_thread(wait_unhealthy)
            # ...while the other replica serves what comes meanwhile.
            meanwhile = [await stream_chat(client, "cut", "Say hi", 4) for _ in range(3)]
            return await asyncio.gather(*tasks), meanwhile

        results, meanwhile = asyncio.run(cut_under_load())
        cut = [r for r in results if r.error]
        assert cut, results  # least-load put two of the four on the victim
        # A cut stream is an error the SDK raises, not a short answer that looks complete.
        for r in cut:
            assert r.finish_reason is None and "APIError" in r.error, r  # type: ignore[operator]
        for r in results:
            if not r.error:
                assert_complete(r)
        assert all(r.error is None for r in meanwhile), meanwhile

        # Then it recovers (no restart: the same process) and serves again.
        (back,) = [r for r in plane.wait_replicas("cut", 2, timeout=30) if r.id == victim.id]
        assert back.pid == victim.pid and back.restarts == 0
        reasons = [reason for _, _, reason, _ in plane.store.events("Model/cut")]
        assert "ReplicaUnhealthy" in reasons and "ReplicaRecovered" in reasons
        before = llama_metric(victim.port, "llamacpp:tokens_predicted_total")

        async def batch() -> list[StreamResult]:
            client = client_for(plane)
            return await asyncio.gather(*(stream_chat(client, "cut", PROMPTS[i], 16) for i in range(4)))

        assert all(r.error is None for r in asyncio.run(batch()))
        assert llama_metric(victim.port, "llamacpp:tokens_predicted_total") > before
        assert other.id in {r.id for r in plane.replicas("cut")}
    finally:
        plane.stop()


def test_a_client_leaving_a_non_streaming_request_stops_the_generation(tmp_path: Path) -> None:
    """While another client streams from the same replica, as under real load.

    Each token of that stream wakes llama-server's wait for the abandoned request's
    result; unpatched, that wait restarted its 1 s poll on every wake-up, never looked
    at the closed connection, and generated all 2000 tokens (scripts/llama-server-patches).
    """
    plane = Plane(tmp_path, [write(tmp_path, "m.yaml", default_like("chat"))]).start()
    try:
        (replica,) = plane.wait_replicas("chat", 1)
        long = {"role": "user", "content": "Write a very long story about a lighthouse keeper."}
        # llama-server's ignore_eos: generate every token asked for unless stopped.
        body = {"model": "chat", "messages": [long], "max_tokens": 2000, "ignore_eos": True}
        with httpx.stream(
            "POST", plane.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
        ) as other:
            lines = other.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))  # it is generating
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(plane.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
            # The gateway closed the upstream connection: llama-server stops that slot
            # soon after, and the stream goes on.
            deadline = time.monotonic() + 10
            while llama_metric(replica.port, "llamacpp:requests_processing") > 1:
                assert time.monotonic() < deadline, "the engine is still generating for a client that left"
                time.sleep(0.1)
            assert next(line for line in lines if line).startswith("data: {")  # and still is
        metrics = httpx.get(plane.url + "/metrics", timeout=10).text
        # Both left before their answer ended: the abandoned request, then the stream.
        assert 'endpoint="/v1/chat/completions",model="chat",status="499"} 2.0' in metrics
    finally:
        plane.stop()
