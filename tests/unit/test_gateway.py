"""The OpenAI gateway in process: an aiohttp test server in front of fake OpenAI upstreams."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import unused_port
from builders import InMemoryDiscovery, route
from fake_openai import (
    CHAT,
    COMPLETION_TOKENS,
    DETAIL,
    HELLO,
    OPENAI_ERROR,
    PROMPT_TOKENS,
    StartUpstream,
    assert_openai_error,
    gateway,
    metric,
)
from prometheus_client.parser import text_string_to_metric_families

from aiplane.engines.base import EMBED
from aiplane.gateway import Gateway, GatewayConfig
from aiplane.gateway.discovery import Upstream


# -- request validation ----------------------------------------------------------------
async def test_malformed_json_is_a_400_in_openai_shape() -> None:
    async with gateway(InMemoryDiscovery.of(route("m"))) as (client, _):
        resp = await client.post(CHAT, data=b"{not json", headers={"Content-Type": "application/json"})
        assert resp.status == 400
        message = assert_openai_error(await resp.json(), type_="invalid_request_error", code="invalid_json")
        assert message.startswith("request body is not valid JSON")


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "m"}, "messages", "'messages' is a required property"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "'model' is required"),
        ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model", "'model' is required"),
        ({"model": "m", "messages": []}, "messages", "'messages' must be a non-empty array"),
        ({"model": "m", "messages": "hi"}, "messages", "'messages' must be a non-empty array"),
        (
            {"model": "m", "messages": [{"content": "x"}], "stream": "yes"},
            "stream",
            "'stream' must be a boolean",
        ),
    ],
)
async def test_missing_or_wrong_fields_are_400_naming_the_param(
    body: dict[str, Any], param: str, message: str
) -> None:
    async with gateway(InMemoryDiscovery.of(route("m"))) as (client, _):
        resp = await client.post(CHAT, json=body)
        assert resp.status == 400
        data = await resp.json()
        assert assert_openai_error(data, type_="invalid_request_error").startswith(message)
        assert data["error"]["param"] == param


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"temperature": "hot"}, "temperature", "'temperature' must be a number from 0 to 2 (got 'hot')"),
        ({"temperature": 2.5}, "temperature", "'temperature' must be a number from 0 to 2 (got 2.5)"),
        ({"top_p": -0.1}, "top_p", "'top_p' must be a number from 0 to 1 (got -0.1)"),
        ({"max_tokens": -5}, "max_tokens", "'max_tokens' must be an integer >= 1 (got -5)"),
        ({"max_tokens": 1.5}, "max_tokens", "'max_tokens' must be an integer >= 1 (got 1.5)"),
        ({"max_tokens": True}, "max_tokens", "'max_tokens' must be an integer >= 1 (got True)"),
        ({"n": 0}, "n", "'n' must be an integer >= 1 (got 0)"),
        ({"seed": "42"}, "seed", "'seed' must be an integer (got '42')"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "'stop' must be a string or an array of up to 4"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "'logit_bias' must be an object of token ids"),
        ({"logit_bias": {"50256": -101}}, "logit_bias", "'logit_bias' must be an object of token ids"),
        (
            {"messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "'messages[0].role' must be one of assistant, developer, function, system, tool, user",
        ),
        ({"messages": ["hi"]}, "messages[0]", "'messages[0]' must be an object with 'role' and 'content'"),
    ],
)
async def test_parameters_outside_openais_types_and_ranges_are_400_before_any_engine(
    extra: dict[str, Any], param: str, message: str
) -> None:
    discovery = InMemoryDiscovery.of(route("m"))  # no upstream: a 400 must not wait on one
    async with gateway(discovery) as (client, _):
        resp = await client.post(CHAT, json={**HELLO, **extra})
        assert resp.status == 400
        data = await resp.json()
        assert assert_openai_error(data, type_="invalid_request_error").startswith(message)
        assert data["error"]["param"] == param
        assert discovery.waits == 0


async def test_valid_parameters_and_engine_extras_pass_through_unchanged(upstream: StartUpstream) -> None:
    fake, up = await upstream("r-0")
    body = {
        **HELLO,
        "temperature": 0, "top_p": 1, "max_tokens": 1, "n": 1, "seed": -3, "stop": ["\n", "###"],
        "logit_bias": {"50256": -100, "15": 2.5}, "presence_penalty": -2, "top_k": 40, "min_p": 0.05,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    }  # fmt: skip
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        resp = await client.post(CHAT, json=body)
        assert resp.status == 200
        assert fake.requests == [body]


async def test_a_json_array_body_is_a_400() -> None:
    async with gateway(InMemoryDiscovery.of(route("m"))) as (client, _):
        resp = await client.post(CHAT, json=[HELLO])
        assert resp.status == 400
        assert assert_openai_error(await resp.json(), type_="invalid_request_error", code="invalid_json") == (
            "request body must be a JSON object"
        )


async def test_unknown_model_is_404_model_not_found() -> None:
    async with gateway(InMemoryDiscovery.of(route("m"))) as (client, _):
        resp = await client.post(CHAT, json={**HELLO, "model": "gpt-9"})
        assert resp.status == 404
        data = await resp.json()
        assert assert_openai_error(data, type_="invalid_request_error", code="model_not_found") == (
            "The model 'gpt-9' does not exist"
        )
        assert data["error"]["param"] == "model"


async def test_endpoint_the_model_does_not_serve_is_400() -> None:
    async with gateway(InMemoryDiscovery.of(route("m"))) as (client, _):
        resp = await client.post("/v1/embeddings", json={"model": "m", "input": "x"})
        assert resp.status == 400
        assert assert_openai_error(await resp.json(), type_="invalid_request_error") == (
            "model 'm' does not serve /v1/embeddings"
        )


async def test_body_over_the_limit_is_413() -> None:
    config = GatewayConfig(max_body_bytes=1024)
    async with gateway(InMemoryDiscovery.of(route("m")), config) as (client, _):
        big = {**HELLO, "messages": [{"role": "user", "content": "x" * 2000}]}
        resp = await client.post(CHAT, json=big)
        assert resp.status == 413
        assert assert_openai_error(
            await resp.json(), type_="invalid_request_error", code="request_too_large"
        ) == ("request body exceeds 1024 bytes")


async def test_unknown_path_is_404_in_openai_shape() -> None:
    async with gateway(InMemoryDiscovery.of(route("m"))) as (client, _):
        resp = await client.get("/v1/nope")
        assert resp.status == 404
        assert assert_openai_error(await resp.json(), type_="invalid_request_error").startswith(
            "GET /v1/nope"
        )


# -- API keys ----------------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "Bearer sk-wrong", "sk-good", "Basic sk-good", "Bearer "])
async def test_wrong_or_missing_api_key_is_401(header: str | None) -> None:
    config = GatewayConfig(api_keys=frozenset({"sk-good", "sk-other"}))
    async with gateway(InMemoryDiscovery.of(route("m")), config) as (client, _):
        headers = {"Authorization": header} if header else {}
        for resp in (
            await client.get("/v1/models", headers=headers),
            await client.post(CHAT, json=HELLO, headers=headers),
        ):
            assert resp.status == 401
            assert assert_openai_error(
                await resp.json(), type_="invalid_request_error", code="invalid_api_key"
            ) == ("invalid or missing API key")


async def test_right_api_key_is_let_in_and_health_needs_none() -> None:
    config = GatewayConfig(api_keys=frozenset({"sk-good", "sk-other"}))
    async with gateway(InMemoryDiscovery.of(route("m")), config) as (client, _):
        for key in ("sk-good", "sk-other"):
            resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert resp.status == 200
        assert (await client.get("/health")).status == 200
        assert (await client.get("/metrics")).status == 200


# -- model listing -------------------------------------------------------------------------
async def test_v1_models_lists_the_routes() -> None:
    discovery = InMemoryDiscovery.of(route("zeta", created=1_700_000_001.9), route("alpha", endpoints=EMBED))
    async with gateway(discovery) as (client, _):
        resp = await client.get("/v1/models")
        assert resp.status == 200
        assert await resp.json() == {
            "object": "list",
            "data": [
                {"id": "alpha", "object": "model", "created": 1_700_000_000, "owned_by": "aiplane"},
                {"id": "zeta", "object": "model", "created": 1_700_000_001, "owned_by": "aiplane"},
            ],
        }
        one = await client.get("/v1/models/zeta")
        assert (await one.json())["id"] == "zeta"
        missing = await client.get("/v1/models/nope")
        assert missing.status == 404
        assert_openai_error(await missing.json(), type_="invalid_request_error", code="model_not_found")


# -- proxying --------------------------------------------------------------------------------
async def test_request_is_proxied_to_the_models_replica(upstream: StartUpstream) -> None:
    fake_a, up_a = await upstream("a-0")
    fake_b, up_b = await upstream("b-0")
    discovery = InMemoryDiscovery.of(route("a"), route("b"), upstreams={"a": [up_a], "b": [up_b]})
    async with gateway(discovery) as (client, gw):
        resp = await client.post(CHAT, json={**HELLO, "model": "b", "temperature": 0.5})
        assert resp.status == 200
        data = await resp.json()
        assert data["id"] == "b-0"
        assert data["usage"]["prompt_tokens"] == PROMPT_TOKENS
        assert fake_a.requests == []
        assert fake_b.requests == [{**HELLO, "model": "b", "temperature": 0.5}]  # the body, unchanged
        assert gw.load.in_flight["b"] == 0 and gw.load.per_replica == {}


async def test_streaming_passes_chunks_through_before_the_upstream_finishes(upstream: StartUpstream) -> None:
    fake, up = await upstream("r-0", chunk_delay=0.3)
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, _):
        started = time.monotonic()
        resp = await client.post(CHAT, json={**HELLO, "stream": True})
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await resp.content.readany()
        first_at = time.monotonic() - started
        assert b"tok0" in first
        assert not fake.stream_finished.is_set(), "the first chunk waited for the whole stream"
        assert first_at < 0.6  # the whole stream takes at least 0.9 s
        rest = first + await resp.read()
        assert fake.stream_finished.is_set()
        assert time.monotonic() - started >= 0.6
        assert rest.index(b"tok0") < rest.index(b"tok1") < rest.index(b"tok2")
        assert rest.endswith(b"data: [DONE]\n\n")


async def test_cold_start_holds_the_request_until_an_upstream_is_ready(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0")
    discovery = InMemoryDiscovery.of(route("m", cold_start_timeout=5.0))
    async with gateway(discovery) as (client, gw):
        started = time.monotonic()
        pending = asyncio.create_task(client.post(CHAT, json=HELLO))
        await asyncio.sleep(0.3)
        assert not pending.done()
        assert discovery.waits == 1
        assert gw.load.held["m"] == 1  # what the autoscaler sees while the request waits
        queued = await (await client.get("/metrics")).text()
        assert metric(queued, "aiplane_gateway_requests_held", model="m") == 1

        discovery.set_upstreams("m", [up])
        resp = await asyncio.wait_for(pending, timeout=2)
        assert resp.status == 200
        assert (await resp.json())["id"] == "r-0"
        assert 0.3 <= time.monotonic() - started < 2
        assert gw.load.held["m"] == 0
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_cold_start_waits_total", model="m") == 1
        assert metric(text, "aiplane_gateway_requests_held", model="m") == 0


async def test_no_upstream_within_cold_start_timeout_is_503_with_retry_after() -> None:
    discovery = InMemoryDiscovery.of(route("m", cold_start_timeout=0.2))
    async with gateway(discovery) as (client, gw):
        started = time.monotonic()
        resp = await client.post(CHAT, json=HELLO)
        elapsed = time.monotonic() - started
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "10"
        message = assert_openai_error(await resp.json(), type_="server_error", code="model_unavailable")
        assert message == "no replica of 'm' became ready within 0.2s"
        assert 0.2 <= elapsed < 1.5
        assert gw.load.held["m"] == 0


async def test_a_model_that_cannot_start_fails_held_requests_at_once_with_the_reason() -> None:
    discovery = InMemoryDiscovery.of(route("m", cold_start_timeout=30))
    async with gateway(discovery) as (client, gw):
        started = time.monotonic()
        pending = asyncio.create_task(client.post(CHAT, json=HELLO))
        await asyncio.sleep(0.3)
        assert not pending.done()  # held: the replica may still come up
        discovery.block("m", "every replica is in CrashLoopBackOff: exited with code 1")
        resp = await asyncio.wait_for(pending, timeout=2)
        assert resp.status == 503
        message = assert_openai_error(await resp.json(), type_="server_error", code="model_unavailable")
        assert message == "model 'm' cannot start: every replica is in CrashLoopBackOff: exited with code 1"
        assert time.monotonic() - started < 2  # not the 30 s cold-start timeout
        assert "Retry-After" not in resp.headers  # retrying soon will not help
        assert gw.load.held["m"] == 0


async def test_refused_connection_is_retried_on_a_healthy_upstream(upstream: StartUpstream) -> None:
    _, good = await upstream("good")
    bad = Upstream("bad", f"http://127.0.0.1:{unused_port()}")  # nothing listens there
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [bad, good]})
    async with gateway(discovery) as (client, gw):
        # The first request (seq 0) goes to the first upstream: the refusing one.
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 200
        assert (await resp.json())["id"] == "good"
        assert [rid for rid, _ in discovery.failures] == ["bad"]
        assert discovery.failures[0][1].startswith("bad: ClientConnectorError")
        for _ in range(3):  # reported: the rest go straight to the healthy one
            assert (await client.post(CHAT, json=HELLO)).status == 200
        assert len(discovery.failures) == 1
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_upstream_errors_total", model="m") == 1
        assert metric(text, "aiplane_gateway_requests_total", model="m", endpoint=CHAT, status="200") == 4
        assert gw.load.per_replica == {}


async def test_a_connection_dropped_before_any_answer_is_retried_on_the_only_replica(
    upstream: StartUpstream,
) -> None:
    """An engine closing an idle keep-alive just as it is reused is no reason for a 502."""
    fake, only = await upstream("only", mode="hangup-once")
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [only]})
    async with gateway(discovery) as (client, gw):
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 200 and (await resp.json())["id"] == "only"
        assert len(fake.requests) == 2  # once dropped, once answered on a fresh connection
        assert discovery.failures == []  # not the replica's fault
        assert gw.load.per_replica == {}


async def test_a_replica_that_drops_every_connection_is_reported_and_502(upstream: StartUpstream) -> None:
    fake, dropper = await upstream("dropper", mode="hangup-always")
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [dropper]})
    async with gateway(discovery) as (client, _):
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 502
        assert len(fake.requests) == 2  # one retry on a fresh connection, no more
        assert [rid for rid, _ in discovery.failures] == ["dropper"]


async def test_every_upstream_refusing_is_502(upstream: StartUpstream) -> None:
    dead = [Upstream(f"dead-{i}", f"http://127.0.0.1:{unused_port()}") for i in range(2)]
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": dead})
    async with gateway(discovery) as (client, _):
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 502
        message = assert_openai_error(await resp.json(), type_="server_error", code="upstream_error")
        assert message.startswith("no replica of 'm' could serve the request: ")
        assert sorted(rid for rid, _ in discovery.failures) == ["dead-0", "dead-1"]


async def test_mid_stream_close_ends_the_stream_with_an_error_event(upstream: StartUpstream) -> None:
    dropper, drop = await upstream("drop", mode="drop")
    _, good = await upstream("good")
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [drop, good]})
    async with gateway(discovery) as (client, gw):
        resp = await client.post(CHAT, json={**HELLO, "stream": True})
        assert resp.status == 200  # the headers went out with the first chunk
        body = (await asyncio.wait_for(resp.read(), timeout=5)).decode()
        assert len(dropper.requests) == 1
        events = [line.removeprefix("data: ") for line in body.split("\n\n") if line.startswith("data: ")]
        assert "tok0" in events[0]
        assert "[DONE]" not in events  # a truncated answer never looks complete
        error = json.loads(events[-1])
        message = assert_openai_error(error, type_="server_error")
        assert message.startswith("replica drop failed mid-stream: ")
        assert [rid for rid, _ in discovery.failures] == ["drop"]

        resp = await client.post(CHAT, json={**HELLO, "stream": True})
        assert resp.status == 200
        assert "tok2" in (await resp.read()).decode()
        assert len(dropper.requests) == 1
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_requests_total", model="m", endpoint=CHAT, status="502") == 1
        assert metric(text, "aiplane_gateway_requests_total", model="m", endpoint=CHAT, status="200") == 1
        assert gw.load.per_replica == {}


async def test_client_hanging_up_mid_stream_is_499_and_not_the_replicas_fault(
    upstream: StartUpstream,
) -> None:
    fake, up = await upstream("r-0", chunk_delay=0.1)
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, gw):
        resp = await client.post(CHAT, json={**HELLO, "stream": True})
        assert b"tok0" in await resp.content.readany()
        resp.close()  # the client leaves after the first token
        deadline = time.monotonic() + 2
        while (
            gw.metrics.registry.get_sample_value(
                "aiplane_gateway_requests_total", {"model": "m", "endpoint": CHAT, "status": "499"}
            )
            != 1.0
        ):
            assert time.monotonic() < deadline, "the hang-up was never recorded as a 499"
            await asyncio.sleep(0.02)
        assert discovery.failures == []
        assert gw.load.per_replica == {}
        await asyncio.sleep(0.3)  # longer than the rest of the stream would take
        assert not fake.stream_finished.is_set(), "the upstream kept generating for nobody"


async def test_client_leaving_a_non_streaming_request_cancels_the_generation(upstream: StartUpstream) -> None:
    """With handler cancellation (what ships), the hang-up closes the upstream connection,
    which is what makes llama.cpp and vLLM stop generating; it is the client's 499."""
    fake, up = await upstream("r-0", mode="slow", chunk_delay=5.0)
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, gw):
        pending = asyncio.create_task(client.post(CHAT, json=HELLO))
        await asyncio.sleep(0.3)
        assert len(fake.requests) == 1 and fake.disconnected_at is None
        pending.cancel()  # the client hangs up
        left = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await pending
        deadline = left + 1.0
        while fake.disconnected_at is None:
            assert time.monotonic() < deadline, "the upstream kept generating for nobody"
            await asyncio.sleep(0.02)
        assert fake.disconnected_at - left < 1.0

        def count(status: str) -> float | None:
            labels = {"model": "m", "endpoint": CHAT, "status": status}
            return gw.metrics.registry.get_sample_value("aiplane_gateway_requests_total", labels)

        while count("499") is None:
            assert time.monotonic() < deadline + 1, "the hang-up was never counted"
            await asyncio.sleep(0.02)
        assert (count("499"), count("500")) == (1.0, None)
        assert discovery.failures == []
        assert gw.load.per_replica == {}


async def test_client_leaving_after_done_is_a_complete_answer_not_a_gateway_error(
    upstream: StartUpstream,
) -> None:
    """The openai client hangs up on ``[DONE]``; the stream's end then finds a closed socket."""
    _, up = await upstream("r-0", mode="linger", chunk_delay=0.2)
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, gw):
        resp = await client.post(CHAT, json={**HELLO, "stream": True})
        seen = b""
        while b"[DONE]" not in seen:
            seen += await asyncio.wait_for(resp.content.readany(), timeout=5)
        resp.close()
        await asyncio.sleep(0.5)  # the upstream ends its response; the gateway ends its own

        def count(status: str) -> float | None:
            labels = {"model": "m", "endpoint": CHAT, "status": status}
            return gw.metrics.registry.get_sample_value("aiplane_gateway_requests_total", labels)

        assert (count("200"), count("500"), count("499")) == (1.0, None, None)
        assert gw.load.per_replica == {}


async def test_upstream_slower_than_request_timeout_is_504(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0", mode="slow", chunk_delay=0.5)
    async with gateway(InMemoryDiscovery.of(route("m", request_timeout=0.2), upstreams={"m": [up]})) as (
        client,
        _,
    ):
        started = time.monotonic()
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 504
        message = assert_openai_error(await resp.json(), type_="server_error")
        assert message == "upstream r-0 timed out after 0.2s"
        assert time.monotonic() - started < 0.5


async def test_stream_stalling_past_request_timeout_ends_with_an_error_event(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0", chunk_delay=0.5)
    async with gateway(InMemoryDiscovery.of(route("m", request_timeout=0.2), upstreams={"m": [up]})) as (
        client,
        _,
    ):
        resp = await client.post(CHAT, json={**HELLO, "stream": True})
        assert resp.status == 200
        try:
            body = await asyncio.wait_for(resp.read(), timeout=1.0)
        finally:
            resp.close()
        last = body.decode().strip().split("\n\n")[-1]
        assert last.startswith("data: ")
        assert "timed out" in assert_openai_error(
            json.loads(last.removeprefix("data: ")), type_="server_error"
        )


# -- upstream errors ---------------------------------------------------------------------------
async def test_upstream_fastapi_detail_comes_back_in_openai_shape(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0", mode="detail422")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 422  # an upstream 4xx keeps its status
        data = await resp.json()
        assert assert_openai_error(data, type_="invalid_request_error") == f"upstream: {DETAIL}"
        assert data["error"]["param"] == "temperature"  # FastAPI's loc ['body', 'temperature']


async def test_upstream_openai_error_passes_through_unchanged(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0", mode="openai-error")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, gw):
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 400
        assert await resp.json() == OPENAI_ERROR
        assert gw.load.per_replica == {}


async def test_stack_frames_in_an_upstream_error_never_reach_the_client(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0", mode="leaky500")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        resp = await client.post(CHAT, json=HELLO)
        # A validation failure the engine answered with a 500 is the client's error: a 400.
        assert resp.status == 400
        data = await resp.json()
        message = assert_openai_error(data, type_="invalid_request_error")
        assert message == "1 validation error:\n  {'type': 'float_parsing', 'loc': ('body', 'temperature')}"
        assert data["error"]["param"] == "temperature"


# -- metrics -----------------------------------------------------------------------------------
async def test_metrics_count_requests_by_label_and_tokens_from_usage(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0")
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        for _ in range(2):
            assert (await client.post(CHAT, json=HELLO)).status == 200
        assert (await client.post(CHAT, json={**HELLO, "model": "nope"})).status == 404
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
        requests = "aiplane_gateway_requests_total"
        assert metric(text, requests, model="m", endpoint=CHAT, status="200") == 2
        assert metric(text, requests, model="<unknown>", endpoint=CHAT, status="404") == 1
        assert metric(text, requests, model="m", endpoint=CHAT, status="404") == 0
        assert metric(text, "aiplane_gateway_tokens_total", model="m", kind="prompt") == 2 * PROMPT_TOKENS
        assert (
            metric(text, "aiplane_gateway_tokens_total", model="m", kind="completion")
            == 2 * COMPLETION_TOKENS
        )
        assert metric(text, "aiplane_gateway_request_duration_seconds_count", model="m", endpoint=CHAT) == 2
        assert metric(text, "aiplane_gateway_requests_in_flight", model="m") == 0


async def test_rejected_requests_are_counted_too() -> None:
    async with gateway(InMemoryDiscovery.of(route("m"))) as (client, _):
        assert (await client.post(CHAT, data=b"{not json")).status == 400
        assert (await client.post(CHAT, json={"model": "m"})).status == 400
        samples = [
            s
            for family in text_string_to_metric_families(await (await client.get("/metrics")).text())
            for s in family.samples
            if s.name == "aiplane_gateway_requests_total" and s.labels["status"] == "400"
        ]
        assert sum(s.value for s in samples) == 2


async def test_streamed_tokens_and_time_to_first_token_are_measured(upstream: StartUpstream) -> None:
    _, up = await upstream("r-0", chunk_delay=0.01)
    async with gateway(InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})) as (client, _):
        resp = await client.post(CHAT, json={**HELLO, "stream": True})
        await resp.read()
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_tokens_total", model="m", kind="completion") == 3
        assert metric(text, "aiplane_gateway_time_to_first_token_seconds_count", model="m") == 1


async def test_each_gateway_has_its_own_metrics_registry() -> None:
    first, second = Gateway(discovery=InMemoryDiscovery()), Gateway(discovery=InMemoryDiscovery())
    first.metrics.requests.labels("m", CHAT, "200").inc()
    assert second.metrics.registry is not first.metrics.registry
    assert (
        second.metrics.registry.get_sample_value(
            "aiplane_gateway_requests_total", {"model": "m", "endpoint": CHAT, "status": "200"}
        )
        is None
    )
