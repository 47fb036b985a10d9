"""generate (and remote embed) against a stand-in OpenAI server: a real aiohttp app on loopback.

The stand-in answers per prompt from a script: some 503s (``Retry-After: 0``) or 429s
before a 200, a 400 for a prompt "too long", delays that finish rows out of order.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aiplane.batch.embed import RemoteEmbed
from aiplane.batch.errors import ShardFailed
from aiplane.batch.generate import Generate
from aiplane.batch.openai_client import OpenAIClient, backoff_delay, error_message
from aiplane.batch.rows import BadRow, Item
from aiplane.batch.runner import run_env

TOO_LONG = "prompt has 9000 tokens, the context is 8192"


@dataclass
class StandInOpenAI:
    """A stand-in OpenAI server: ``failures[prompt]`` is the statuses to answer before a 200."""

    failures: dict[str, list[int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    most_in_flight: int = 0
    embed_batches: list[list[str]] = field(default_factory=list)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.calls[prompt] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(prompt, 0))
        finally:
            self.in_flight -= 1
        if "too long" in prompt:
            return web.json_response(
                {
                    "error": {
                        "message": "prompt has 9000 tokens, the context is 8192",
                        "type": "invalid_request_error",
                    }
                },
                status=400,
            )
        pending = self.failures.get(prompt, [])
        if pending:
            status = pending.pop(0)
            headers = {"Retry-After": "0"} if status == 503 else {}
            return web.json_response({"error": {"message": "busy"}}, status=status, headers=headers)
        return web.json_response(
            {
                "choices": [
                    {"message": {"role": "assistant", "content": f"echo {prompt}"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                "model": body["model"],
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        texts = body["input"]
        self.embed_batches.append(texts)
        if any("too long" in t for t in texts):
            return web.json_response({"error": {"message": "input is too long"}}, status=400)
        data = [{"index": i, "embedding": [float(len(t)), 0.5]} for i, t in enumerate(texts)]
        return web.json_response({"data": data[::-1]})  # out of order: the client sorts by index


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandInOpenAI, str]]:
    server = StandInOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_post("/v1/embeddings", server.embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def collect(task: Generate | RemoteEmbed, items: list[Item | BadRow]) -> list[str | BadRow]:
    return [outcome async for outcome in task.outcomes(iter(items))]


def client(url: str, **kw: Any) -> OpenAIClient:
    return OpenAIClient(url, backoff_base=0.001, backoff_cap=0.01, **kw)


async def test_generate_retries_503_and_429_then_succeeds_and_a_400_is_a_bad_row(
    stand_in: tuple[StandInOpenAI, str],
) -> None:
    server, url = stand_in
    server.failures = {"p1": [503, 503, 429], "p3": [502, 504]}
    items: list[Item | BadRow] = [Item(i, f"id{i}", f"p{i}") for i in range(5)]
    items[2] = Item(2, "id2", "a prompt that is too long")
    items.insert(4, BadRow(99, 99, "missing field 'prompt'"))
    task = Generate(client(url, retries=4), "smollm2", max_tokens=8, temperature=0.0, concurrency=2)
    out = await collect(task, items)
    assert len(out) == 6
    first = json.loads(out[1])  # type: ignore[arg-type]
    assert first == {
        "id": "id1",
        "row": 1,
        "output": "echo p1",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    assert server.calls["p1"] == 4 and server.calls["p3"] == 3 and server.calls["p0"] == 1
    assert out[2] == BadRow(
        2, "id2", "the server refused it: 400 prompt has 9000 tokens, the context is 8192"
    )
    assert server.calls["a prompt that is too long"] == 1  # a 400 is not retried
    assert out[4] == BadRow(99, 99, "missing field 'prompt'")
    assert task.client.retried == 5


async def test_exhausted_retries_fail_the_shard(stand_in: tuple[StandInOpenAI, str]) -> None:
    server, url = stand_in
    server.failures = {"p0": [503] * 10}
    task = Generate(client(url, retries=3), "m", max_tokens=8, temperature=0.0, concurrency=2)
    with pytest.raises(ShardFailed, match=r"gave up after 3 attempts \(AIPLANE_RETRIES\), last: 503 busy"):
        await collect(task, [Item(0, 0, "p0"), Item(1, 1, "p1")])
    assert server.calls["p0"] == 3


async def test_other_statuses_and_an_unreachable_server_fail_the_shard(
    stand_in: tuple[StandInOpenAI, str],
) -> None:
    _, url = stand_in
    wrong = Generate(client(url.replace("/v1", "/nope")), "m", max_tokens=8, temperature=0.0, concurrency=1)
    with pytest.raises(ShardFailed, match=r"404 .*\(check AIPLANE_MODEL_URL and AIPLANE_MODEL\)"):
        await collect(wrong, [Item(0, 0, "p0")])
    dead = Generate(
        client("http://127.0.0.1:9/v1", retries=2), "m", max_tokens=8, temperature=0.0, concurrency=1
    )
    with pytest.raises(ShardFailed, match=r"gave up after 2 attempts .*ClientConnectorError"):
        await collect(dead, [Item(0, 0, "p0")])


async def test_output_keeps_input_order_with_requests_finishing_out_of_order(
    stand_in: tuple[StandInOpenAI, str],
) -> None:
    server, url = stand_in
    n = 24
    server.delays = {f"p{i}": 0.002 * (n - i) for i in range(n)}  # later rows answer first
    task = Generate(client(url), "m", max_tokens=8, temperature=0.0, concurrency=4)
    out = await collect(task, [Item(i, i, f"p{i}") for i in range(n)])
    assert [json.loads(line)["row"] for line in out] == list(range(n))  # type: ignore[arg-type]
    assert server.most_in_flight == 4  # bounded, and actually concurrent


async def test_chat_rows_are_sent_as_their_messages(stand_in: tuple[StandInOpenAI, str]) -> None:
    _, url = stand_in
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    task = Generate(client(url), "m", max_tokens=8, temperature=0.0, concurrency=1)
    assert task.request(Item(0, 0, "", messages))["messages"] == messages
    out = await collect(task, [Item(0, 0, "", messages)])
    assert json.loads(out[0])["output"] == "echo hi"  # type: ignore[arg-type]


async def test_remote_embed_batches_and_isolates_the_refused_row(stand_in: tuple[StandInOpenAI, str]) -> None:
    server, url = stand_in
    texts = ["a", "bb", "ccc", "too long", "eeeee", "ffffff"]
    task = RemoteEmbed(client(url), "minilm", batch_size=4, concurrency=2)
    out = await collect(task, [Item(i, i, t) for i, t in enumerate(texts)])
    assert [json.loads(o)["embedding"] for o in out if isinstance(o, str)] == [
        [1.0, 0.5],
        [2.0, 0.5],
        [3.0, 0.5],
        [5.0, 0.5],
        [6.0, 0.5],
    ]
    assert out[3] == BadRow(3, 3, "the server refused it: 400 input is too long")
    assert server.embed_batches[0] in (["a", "bb", "ccc", "too long"], ["eeeee", "ffffff"])
    assert ["too long"] in server.embed_batches  # split until the refused row was alone


def test_backoff_is_exponential_capped_and_retry_after_wins() -> None:
    delays = [backoff_delay(a, None, base=0.5, cap=10, jitter=1.0) for a in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(3, None, base=0.5, cap=10, jitter=0.0) == 1.0  # jitter spreads over [half, full]
    assert backoff_delay(5, 0.0, base=0.5, cap=10, jitter=0.5) == 0.0
    assert backoff_delay(1, 3.0, base=0.5, cap=10, jitter=0.5) == 3.0
    assert backoff_delay(1, 1e6, base=0.5, cap=10, jitter=0.5) == 60.0


def test_error_messages_from_the_usual_shapes() -> None:
    assert error_message('{"error": {"message": "too long"}}') == "too long"
    assert error_message('{"detail": "bad field"}') == "bad field"
    assert error_message("<html>\n Bad  Gateway </html>") == "<html> Bad Gateway </html>"
    assert error_message("") == "(empty body)"


def test_run_env_generate_end_to_end_against_the_stand_in(tmp_path: Path) -> None:
    """The whole shard (environment, input, output files) with the server on its own thread."""
    server = StandInOpenAI(failures={"p2": [503, 429]})
    ready, stop = threading.Event(), threading.Event()
    address: list[str] = []

    def serve() -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", server.chat)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            address.append(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)
            await runner.cleanup()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    rows = [{"id": f"q{i}", "prompt": f"p{i}"} for i in range(6)]
    rows[4] = {"id": "q4", "prompt": "this one is too long"}
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "q6"}\n')
    env = {
        "AIPLANE_SHARD": "0",
        "AIPLANE_SHARDS": "1",
        "AIPLANE_TASK": "generate",
        "AIPLANE_INPUT": str(tmp_path / "in.jsonl"),
        "AIPLANE_OUTPUT": str(tmp_path / "out"),
        "AIPLANE_MODEL": "smollm2",
        "AIPLANE_MODEL_URL": address[0],
        "AIPLANE_CONCURRENCY": "3",
        "AIPLANE_TERMINATION_LOG": str(tmp_path / "log"),
    }
    try:
        assert run_env(env, stdout=io.StringIO(), stderr=io.StringIO()) == 0
    finally:
        stop.set()
        thread.join(10)
    out = [json.loads(line) for line in (tmp_path / "out" / "shard-00000-of-00001.jsonl").open()]
    assert [(o["id"], o["output"]) for o in out] == [(f"q{i}", f"echo p{i}") for i in (0, 1, 2, 3, 5)]
    errors = [json.loads(line) for line in (tmp_path / "out" / "shard-00000-of-00001.errors.jsonl").open()]
    assert errors == [
        {"row": 4, "id": "q4", "reason": f"the server refused it: 400 {TOO_LONG}"},
        {"row": 6, "id": "q6", "reason": "missing field 'prompt'"},
    ]
    assert server.calls["p2"] == 3
    summary = {"shard": 0, "rows": 5, "errors": 2, "skipped": False}
    assert json.loads((tmp_path / "log").read_text()) == summary
