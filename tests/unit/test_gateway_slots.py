"""Per-replica concurrency: the gateway queues above it, first come first served."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from builders import InMemoryDiscovery, route
from fake_openai import CHAT, HELLO, StartUpstream, assert_openai_error, gateway, metric

from aiplane.gateway.slots import SlotQueue


async def test_no_replica_gets_more_than_its_concurrency_and_the_rest_wait_in_order(
    upstream: StartUpstream,
) -> None:
    fake, only = await upstream("only", mode="slow", chunk_delay=0.3)
    discovery = InMemoryDiscovery.of(route("m", concurrency=2), upstreams={"m": [only]})
    async with gateway(discovery) as (client, gw):
        finished: list[int] = []

        async def one(i: int) -> int:
            await asyncio.sleep(0.02 * i)  # arrive in order
            resp = await client.post(CHAT, json=HELLO | {"user": str(i)})
            finished.append(i)
            return resp.status

        tasks = [asyncio.create_task(one(i)) for i in range(6)]
        await asyncio.sleep(0.2)
        text = await (await client.get("/metrics")).text()
        # Two at the replica, four held (and counted as queued, which the autoscaler reads).
        assert metric(text, "aiplane_gateway_requests_queued", model="m") == 4
        assert gw.load.queued["m"] == 4
        assert await asyncio.gather(*tasks) == [200] * 6
        assert fake.peak == 2
        assert [r["user"] for r in fake.requests] == [str(i) for i in range(6)]  # first come, first served
        assert gw.load.per_replica == {} and gw.load.queued["m"] == 0


async def test_a_free_slot_on_any_replica_takes_the_head_of_the_line(upstream: StartUpstream) -> None:
    slow, a = await upstream("a", mode="slow", chunk_delay=0.5)
    quick, b = await upstream("b", mode="slow", chunk_delay=0.05)
    discovery = InMemoryDiscovery.of(route("m", concurrency=1), upstreams={"m": [a, b]})
    async with gateway(discovery) as (client, _):
        statuses = await asyncio.gather(*(client.post(CHAT, json=HELLO) for _ in range(6)))
        assert [s.status for s in statuses] == [200] * 6
    assert slow.peak == 1 and quick.peak == 1
    assert len(quick.requests) >= 4  # the quick replica frees up more often, so it serves more


async def test_no_slot_within_the_cold_start_timeout_is_503_with_retry_after(upstream: StartUpstream) -> None:
    _, busy = await upstream("busy", mode="slow", chunk_delay=2.0)
    discovery = InMemoryDiscovery.of(
        route("m", concurrency=1, cold_start_timeout=0.3), upstreams={"m": [busy]}
    )
    async with gateway(discovery) as (client, gw):
        first = asyncio.create_task(client.post(CHAT, json=HELLO))
        await asyncio.sleep(0.1)
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
        message = assert_openai_error(await resp.json(), type_="server_error", code="model_overloaded")
        assert message == "every replica of 'm' is busy (1 requests each) and none freed up within 0.3s"
        assert (await first).status == 200
        assert gw.load.queued["m"] == 0


async def test_a_client_leaving_the_line_gives_up_its_place_and_leaks_nothing(
    upstream: StartUpstream,
) -> None:
    fake, only = await upstream("only", mode="slow", chunk_delay=0.6)
    discovery = InMemoryDiscovery.of(route("m", concurrency=1), upstreams={"m": [only]})
    async with gateway(discovery) as (client, gw):
        first = asyncio.create_task(client.post(CHAT, json=HELLO))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(client.post(CHAT, json=HELLO, timeout=aiohttp.ClientTimeout(total=30)))
        # the client leaves once its request is in line (not before the gateway read it:
        # on a loaded machine a fixed client timeout could fire before that)
        for _ in range(200):
            if gw.slots.waiting("m"):
                break
            await asyncio.sleep(0.01)
        assert gw.slots.waiting("m") == 1
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert (await first).status == 200
        await asyncio.sleep(0.1)
        assert len(fake.requests) == 1  # the one that left never reached the replica
        assert gw.slots.waiting("m") == 0 and gw.load.queued["m"] == 0 and gw.load.per_replica == {}
        text = await (await client.get("/metrics")).text()
        assert metric(text, "aiplane_gateway_requests_total", model="m", endpoint=CHAT, status="499") == 1


async def test_the_slot_queue_serves_its_line_in_order() -> None:
    slots, free, order = SlotQueue(), [0], []

    def pick() -> int | None:
        if free[0] == 0:
            return None
        free[0] -= 1
        return 1

    async def waiter(i: int) -> None:
        await asyncio.sleep(0.01 * i)
        assert await slots.take("m", pick, timeout=2) == 1
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
    await asyncio.sleep(0.1)
    assert slots.waiting("m") == 4
    for _ in range(4):
        free[0] += 1
        slots.released("m")
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3] and slots.waiting("m") == 0
    assert await slots.take("m", lambda: None, timeout=0.05) is None
