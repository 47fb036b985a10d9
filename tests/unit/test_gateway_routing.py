"""The gateway's side of routing and autoscaling signals: router state per model, the
session header, prompt blocks, and the load windows the autoscaler reads."""

from __future__ import annotations

import asyncio
from collections import Counter

from builders import InMemoryDiscovery, route
from fake_openai import CHAT, COMPLETION_TOKENS, HELLO, StartUpstream, gateway

from aiplane.engines import MetricNames
from aiplane.gateway.load import LoadTracker, p95
from aiplane.gateway.requests import BLOCK_CHARS, parse_body, prompt_blocks
from aiplane.policies.routing import LeastLoad, PrefixAware, SessionAffinity
from aiplane.runtime.engine_metrics import EngineSample, combine, parse_engine_metrics


def chat(system: str, user: str) -> dict[str, object]:
    return {**HELLO, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def test_prompt_blocks_are_chained_so_equal_hashes_mean_equal_prefixes() -> None:
    a = prompt_blocks("x" * BLOCK_CHARS * 3)
    b = prompt_blocks("x" * BLOCK_CHARS * 2 + "y" * BLOCK_CHARS)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert prompt_blocks("x" * (BLOCK_CHARS - 1)) == ()  # a partial block is not a cached block
    # The same block text after a different prefix is a different block.
    assert prompt_blocks("y" * BLOCK_CHARS + "x" * BLOCK_CHARS)[1] != a[1]
    body = parse_body(__import__("json").dumps(chat("s" * 2000, "hi")).encode(), CHAT)
    assert len(body.blocks) == (len("system:") + 2000 + len("\nuser:hi")) // BLOCK_CHARS


async def test_a_session_header_keeps_a_conversation_on_one_replica(upstream: StartUpstream) -> None:
    fakes = [await upstream(f"r{i}") for i in range(3)]
    discovery = InMemoryDiscovery.of(
        route("m", router=SessionAffinity(LeastLoad()), session_header="x-session-id"),
        upstreams={"m": [u for _, u in fakes]},
    )
    async with gateway(discovery) as (client, _):
        served: dict[str, Counter[str]] = {"alice": Counter(), "bob": Counter(), "": Counter()}
        for turn in range(12):
            who = ("alice", "bob")[turn % 2] if turn < 9 else ""
            headers = {"x-session-id": who} if who else {}
            resp = await client.post(CHAT, json=HELLO, headers=headers)
            served[who][(await resp.json())["id"]] += 1
    assert len(served["alice"]) == 1 and len(served["bob"]) == 1
    assert served["alice"] != served["bob"]  # least-load placed the two sessions apart
    assert len(served[""]) >= 2  # without the header, least-load rotates


async def test_prefix_aware_routing_keeps_a_system_prompt_on_the_replica_that_cached_it(
    upstream: StartUpstream,
) -> None:
    fakes = [await upstream(f"r{i}") for i in range(3)]
    discovery = InMemoryDiscovery.of(route("m", router=PrefixAware()), upstreams={"m": [u for _, u in fakes]})
    prompts = {name: name * 3000 for name in ("a", "b")}
    async with gateway(discovery) as (client, _):
        replicas: dict[str, set[str]] = {"a": set(), "b": set()}
        for turn in range(10):
            name = "ab"[turn % 2]
            resp = await client.post(CHAT, json=chat(prompts[name], f"question {turn}"))
            replicas[name].add((await resp.json())["id"])
    assert len(replicas["a"]) == 1 and len(replicas["b"]) == 1
    assert replicas["a"] != replicas["b"]


async def test_the_gateway_counts_held_queued_arrivals_ttft_and_tokens_for_the_autoscaler(
    upstream: StartUpstream,
) -> None:
    _, up = await upstream("r0")
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, gw):
        await asyncio.gather(*(client.post(CHAT, json=HELLO) for _ in range(5)))
        stream = await client.post(CHAT, json={**HELLO, "stream": True})
        await stream.read()
        signals = gw.load.signals("m")
    assert (signals.in_flight, signals.held, signals.queued) == (0.0, 0.0, 0.0)
    assert signals.arrival_rate is not None and signals.arrival_rate > 0
    assert signals.tokens_per_second is not None and signals.tokens_per_second > 0
    assert signals.ttft_p95 is not None and 0 < signals.ttft_p95 < 5
    assert signals.latency_p95 is not None and signals.latency_p95 >= signals.ttft_p95
    assert COMPLETION_TOKENS > 0


def test_windows_forget_what_is_older_than_a_minute() -> None:
    now = [1000.0]
    load = LoadTracker(clock=lambda: now[0])
    for ttft in (0.1, 0.2, 5.0):
        load.arrived("m")
        load.completed("m", ttft=ttft, latency=ttft + 1, tokens=10)
    assert load.signals("m").ttft_p95 == 5.0
    now[0] += 61
    load.completed("m", ttft=None, latency=0.3, tokens=0)  # not streamed: the latency is the TTFT
    s = load.signals("m")
    assert s.ttft_p95 == 0.3 and s.latency_p95 == 0.3 and s.tokens_per_second == 0.0
    assert p95([]) is None and p95([float(i) for i in range(1, 101)]) == 95.0


VLLM = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.42
"""
LLAMA = """# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""
VLLM_NAMES = MetricNames("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
LLAMA_NAMES = MetricNames("llamacpp:requests_processing", "llamacpp:requests_deferred")


def test_engine_metrics_are_read_by_the_adapters_names() -> None:
    assert parse_engine_metrics(VLLM, VLLM_NAMES) == EngineSample(3.0, 7.0, 0.42)
    assert parse_engine_metrics(LLAMA, LLAMA_NAMES) == EngineSample(2.0, 1.0, None)
    assert parse_engine_metrics("garbage{", VLLM_NAMES) == EngineSample()
    both = combine([parse_engine_metrics(VLLM, VLLM_NAMES), EngineSample(1.0, None, 0.58)])
    assert both == EngineSample(4.0, 7.0, 0.5)
    assert combine([]) == EngineSample()
