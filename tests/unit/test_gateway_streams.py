"""Streams through the gateway: event by event, ``[DONE]`` only for a complete answer, usage."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from builders import InMemoryDiscovery, route
from fake_openai import (
    CHAT,
    PROMPT_TOKENS,
    StartUpstream,
    assert_openai_error,
    delta,
    events,
    gateway,
    metric,
    sse,
    usage,
)

from aiplane.gateway import proxy
from aiplane.gateway.relay import StreamRelay
from aiplane.gateway.sse import EventSplitter, parse

STREAM = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
WITH_USAGE = {**STREAM, "stream_options": {"include_usage": True}}
ERROR = {
    "error": {"message": "CUDA error: out of memory", "type": "server_error", "param": None, "code": None}
}


def requests_total(gw: Any, status: str) -> float | None:
    labels = {"model": "m", "endpoint": CHAT, "status": status}
    return gw.metrics.registry.get_sample_value("aiplane_gateway_requests_total", labels)


# -- splitting events --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: 1\n\ndata: 2\n\n"],
        [b"data: 1\r\n\r\ndata: 2\r\n\r\n"],
        [b"data: 1\r", b"\n\r", b"\ndata: 2\r\n", b"\r\n"],
        [b"da", b"ta: 1\n", b"\nda", b"ta: 2\n\n"],
        [b"data: 1\n\ndata: 2\n", b"\n"],
    ],
)
def test_events_are_whole_however_the_bytes_are_cut(chunks: list[bytes]) -> None:
    splitter = EventSplitter()
    out = [event for chunk in chunks for event in splitter.feed(chunk)]
    assert [e.replace(b"\r", b"") for e in out] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert b"".join(out) == b"".join(chunks)  # forwarded byte for byte
    assert splitter.rest() == b""


def test_an_event_is_released_the_moment_its_blank_line_arrives() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'data: {"a": 1}\n') == []
    assert splitter.feed(b"\ndata: {") == [b'data: {"a": 1}\n\n']
    assert splitter.rest() == b"data: {"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"data: [DONE]\n\n", "done"),
        (b'data: {"error": {"message": "x"}}\n\n', "error"),
        (b'event: error\ndata: {"message": "x"}\n\n', "error"),
        (b'error: {"code": 500, "message": "x", "type": "server_error"}\n\n', "error"),  # llama-server
        (b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n', "usage"),
        (b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', "data"),
        (b": keep-alive\n\n", "other"),
    ],
)
def test_events_are_classified(raw: bytes, kind: str) -> None:
    assert parse(raw).kind == kind


def test_the_relay_counts_content_deltas_not_bytes() -> None:
    relay = StreamRelay(include_usage=False)
    chunks = [
        {"choices": [{"delta": {"role": "assistant"}}]},  # no token
        {"choices": [{"delta": {"content": 'say "content": "x"'}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}]},
        {"choices": [{"text": "a"}, {"text": "b"}]},  # a completion with n=2
        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
    ]
    out = relay.feed(b"".join(sse(c) for c in chunks) + sse("[DONE]"))
    assert out == b"".join(sse(c) for c in chunks)  # [DONE] is held back
    assert relay.completion_tokens == 4
    assert relay.finish() == b"data: [DONE]\n\n"


# -- forwarding as events complete -----------------------------------------------------------
async def test_events_split_across_chunks_reach_the_client_whole_and_at_once(upstream: StartUpstream) -> None:
    first, second = delta("r", "tok0").replace(b"\n", b"\r\n"), delta("r", "tok1").replace(b"\n", b"\r\n")
    script = [first + second[:10], second[10:-1], second[-1:] + sse("[DONE]")]
    _, up = await upstream("r", mode="script", script=script, chunk_delay=0.3)
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        started = time.monotonic()
        resp = await client.post(CHAT, json=STREAM)
        received: list[tuple[float, bytes]] = []
        while chunk := await asyncio.wait_for(resp.content.readany(), timeout=5):
            received.append((time.monotonic() - started, chunk))
        assert received[0][1] == first  # not held for the second event
        assert received[0][0] < 0.3
        assert all(c.endswith((b"\n\n", b"\r\n\r\n")) for _, c in received)  # never half an event
        assert b"".join(c for _, c in received) == first + second + b"data: [DONE]\n\n"


async def test_done_waits_for_the_upstream_to_end_cleanly(upstream: StartUpstream) -> None:
    fake, up = await upstream("r", mode="linger", chunk_delay=0.3)
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, gw):
        resp = await client.post(CHAT, json=STREAM)
        seen = b""
        while b"[DONE]" not in seen:
            seen += await asyncio.wait_for(resp.content.readany(), timeout=5)
        assert fake.finished_at is not None
        assert time.monotonic() - fake.finished_at >= 0.25  # held while the upstream lingered
        await resp.read()
        assert requests_total(gw, "200") == 1


async def test_an_engine_keeping_the_stream_open_after_done_still_answers(
    upstream: StartUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "AFTER_DONE", 0.2)
    script = [delta("r", "tok0") + sse("[DONE]"), b""]  # the end comes 1 s after [DONE]
    _, up = await upstream("r", mode="script", script=script, chunk_delay=1.0)
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, gw):
        started = time.monotonic()
        data = events(await (await client.post(CHAT, json=STREAM)).read())
        assert data[-1] == "[DONE]" and len(data) == 2
        assert time.monotonic() - started < 0.8
        assert requests_total(gw, "200") == 1


# -- truncated streams end with an error, never [DONE] -------------------------------------------
@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (sse("[DONE]") + sse(ERROR), "CUDA error: out of memory"),  # an error after [DONE]
        (sse(ERROR), "CUDA error: out of memory"),  # an error instead of [DONE]
        (b"event: error\n" + sse(ERROR["error"]), "CUDA error: out of memory"),
        (b"error: " + json.dumps(ERROR["error"]).encode() + b"\n\n", "CUDA error: out of memory"),
        (b"", "the engine ended the stream without [DONE]: the answer may be truncated"),
    ],
    ids=["error-after-done", "error-event", "event-error", "llama-server-error", "no-done"],
)
async def test_a_stream_that_does_not_end_cleanly_ends_with_one_error_event_and_no_done(
    upstream: StartUpstream, tail: bytes, message: str
) -> None:
    script = [delta("bad", "tok0"), delta("bad", "tok1"), tail]
    _, up = await upstream("bad", mode="script", script=script, chunk_delay=0.02)
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, gw):
        resp = await client.post(CHAT, json=STREAM)
        assert resp.status == 200
        body = await asyncio.wait_for(resp.read(), timeout=5)
        data = events(body)
        assert [json.loads(d)["choices"][0]["delta"]["content"] for d in data[:2]] == ["tok0", "tok1"]
        assert len(data) == 3 and "[DONE]" not in data
        assert assert_openai_error(json.loads(data[2]), type_="server_error") == message
        assert [rid for rid, _ in discovery.failures] == ["bad"]
        assert requests_total(gw, "502") == 1 and requests_total(gw, "200") is None


async def test_an_engine_rejecting_the_request_in_its_stream_is_a_plain_400(upstream: StartUpstream) -> None:
    rejected = {
        "error": {"message": "bad grammar", "type": "invalid_request_error", "param": None, "code": None}
    }
    _, up = await upstream("r", mode="script", script=[sse(rejected)])
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, _):
        resp = await client.post(CHAT, json=STREAM)
        assert resp.status == 400
        assert await resp.json() == rejected
        assert discovery.failures == []  # the replica is healthy


async def test_a_broken_connection_mid_stream_gives_no_done(upstream: StartUpstream) -> None:
    _, up = await upstream("drop", mode="drop")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        body = await asyncio.wait_for((await client.post(CHAT, json=STREAM)).read(), timeout=5)
        data = events(body)
        assert "tok0" in data[0] and "[DONE]" not in data
        assert assert_openai_error(json.loads(data[-1]), type_="server_error").startswith(
            "replica drop failed mid-stream"
        )


# -- usage ----------------------------------------------------------------------------------------
async def test_include_usage_gets_the_engines_usage_chunk_last_before_done(upstream: StartUpstream) -> None:
    fake, up = await upstream("r")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        data = events(await (await client.post(CHAT, json=WITH_USAGE)).read())
        assert data[-1] == "[DONE]"
        last = json.loads(data[-2])
        assert last["choices"] == [] and last["usage"] == usage(PROMPT_TOKENS, 3)
        assert sum("usage" in d for d in data) == 1
        assert fake.requests[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("options", [None, {"include_usage": False}])
async def test_usage_is_asked_of_the_engine_and_kept_from_clients_that_did_not_ask(
    upstream: StartUpstream, options: dict[str, bool] | None
) -> None:
    fake, up = await upstream("r")
    body = STREAM if options is None else {**STREAM, "stream_options": options}
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        data = events(await (await client.post(CHAT, json=body)).read())
        assert fake.requests[0]["stream_options"] == {"include_usage": True}
        assert data[-1] == "[DONE]" and len(data) == 4  # three tokens, no usage chunk
        assert all("usage" not in json.loads(d) for d in data[:-1])
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_tokens_total", model="m", kind="prompt") == PROMPT_TOKENS


async def test_usage_is_synthesized_for_an_engine_that_sends_none(upstream: StartUpstream) -> None:
    _, up = await upstream("r", mode="no-usage")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        data = events(await (await client.post(CHAT, json=WITH_USAGE)).read())
        assert data[-1] == "[DONE]"
        last = json.loads(data[-2])
        assert last == {
            "id": "r",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [],
            # counted from the deltas; the prompt is unknown, and said to be, not guessed as 0
            "usage": {"prompt_tokens": None, "completion_tokens": 3, "total_tokens": None},
        }


async def test_usage_attached_to_a_content_chunk_becomes_its_own_chunk(upstream: StartUpstream) -> None:
    _, up = await upstream("r", mode="usage-attached")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        data = events(await (await client.post(CHAT, json=WITH_USAGE)).read())
        assert [json.loads(d)["choices"] for d in data[-2:-1]] == [[]]
        assert json.loads(data[-2])["usage"] == usage()
        assert json.loads(data[-3])["choices"][0]["delta"]["content"] == "tok2"


async def test_stream_token_metrics_come_from_the_engines_usage(upstream: StartUpstream) -> None:
    reported = sse({"id": "r", "choices": [], "usage": usage(11, 5)})
    script = [delta("r", "a"), delta("r", "b"), reported + sse("[DONE]")]
    _, up = await upstream("r", mode="script", script=script, chunk_delay=0.01)
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        await (await client.post(CHAT, json=STREAM)).read()
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_tokens_total", model="m", kind="prompt") == 11
        assert metric(text, "aiplane_gateway_tokens_total", model="m", kind="completion") == 5


async def test_completion_stream_tokens_are_counted_from_text_deltas(upstream: StartUpstream) -> None:
    chunk = {"id": "r", "object": "text_completion", "choices": [{"index": 0, "text": "x"}]}
    _, up = await upstream("s", mode="script", script=[sse(chunk)] * 3 + [sse("[DONE]")], chunk_delay=0.01)
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        resp = await client.post("/v1/completions", json={"model": "m", "prompt": "hi", "stream": True})
        assert events(await resp.read())[-1] == "[DONE]"
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_tokens_total", model="m", kind="completion") == 3
