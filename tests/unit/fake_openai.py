"""A tiny in-process OpenAI server on loopback to put behind the gateway, and the harness
that runs a gateway in front of it, in unit tests.

It answers ``/v1/chat/completions`` and ``/v1/completions`` the way llama.cpp and vLLM do:
JSON with ``usage``, or an SSE stream of chunks with small sleeps between them, ending
with a usage chunk when asked (``stream_options.include_usage``, as vLLM does) and
``[DONE]``. ``mode`` makes it misbehave:

* ``drop`` closes the connection after the first chunk; ``linger`` holds it open for
  ``chunk_delay`` after ``[DONE]`` (a client may leave before the last empty chunk);
* ``slow`` waits ``chunk_delay`` before answering (``disconnected_at`` records when the
  gateway hung up on it);
* ``detail422`` answers FastAPI's ``{"detail": ...}``, ``openai-error`` an OpenAI-shaped
  400, ``leaky500`` a 500 whose message carries a stack frame (as llama-cpp-python's
  do), ``reply`` answers ``reply`` (a status and a JSON body, or bytes as text) verbatim;
* ``script`` streams the byte pieces of ``script`` verbatim, ``chunk_delay`` apart;
* ``no-usage`` ignores ``stream_options`` (llama-cpp-python), ``usage-attached`` puts
  ``usage`` on the last content chunk whatever was asked (llama-server);
* ``hangup-once`` drops the first request's connection unanswered (an idle keep-alive
  the engine closes as it is reused), ``hangup-always`` every one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import AppRunner
from builders import InMemoryDiscovery
from prometheus_client.parser import text_string_to_metric_families

from aiplane.gateway import Gateway, GatewayConfig
from aiplane.gateway.discovery import Upstream

Mode = Literal[
    "ok",
    "drop",
    "slow",
    "detail422",
    "openai-error",
    "linger",
    "leaky500",
    "reply",
    "script",
    "no-usage",
    "usage-attached",
    "hangup-once",
    "hangup-always",
]
PROMPT_TOKENS, COMPLETION_TOKENS = 7, 3
CHAT = "/v1/chat/completions"
HELLO = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
DETAIL = [{"loc": ["body", "temperature"], "msg": "Input should be less than or equal to 2"}]
OPENAI_ERROR = {"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": None}}
# What llama-cpp-python 0.3 answered for {"temperature": "hot"}, verbatim but for the path.
LEAKY_500 = {
    "error": {
        "message": "1 validation error:\n  {'type': 'float_parsing', 'loc': ('body', 'temperature')}\n\n"
        '  File "/venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, in '
        "create_chat_completion\n    POST /v1/chat/completions",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode()


def delta(name: str, content: str, **extra: Any) -> bytes:
    return sse(
        {
            "id": name,
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}}],
            **extra,
        }
    )


def usage(prompt: int = PROMPT_TOKENS, completion: int = COMPLETION_TOKENS) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class FakeOpenAI:
    def __init__(
        self,
        name: str,
        *,
        mode: Mode = "ok",
        chunk_delay: float = 0.05,
        chunks: int = 3,
        script: list[bytes] | None = None,
        reply: tuple[int, Any] | None = None,
    ) -> None:
        self.name, self.mode, self.chunk_delay, self.chunks = name, mode, chunk_delay, chunks
        self.script, self.reply = script or [], reply
        self.requests: list[dict[str, Any]] = []
        self.stream_finished = asyncio.Event()
        self.finished_at: float | None = None  # when [DONE] was written
        self.disconnected_at: float | None = None  # when the gateway hung up mid-request
        self.in_flight = self.peak = 0  # requests being answered now, and the most at once
        self._server: TestServer | None = None

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/completions", self._answer)
        self._server = TestServer(app, host="127.0.0.1")  # cancels a handler on hang-up
        await self._server.start_server()
        return Upstream(self.name, f"http://127.0.0.1:{self._server.port}")

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self._respond(request)
        except asyncio.CancelledError:
            self.disconnected_at = time.monotonic()
            raise
        finally:
            self.in_flight -= 1

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "hangup-always" or (self.mode == "hangup-once" and len(self.requests) == 1):
            assert request.transport is not None  # closes as an idle keep-alive would, unanswered
            request.transport.abort()
            return web.Response()
        if self.mode == "detail422":
            return web.json_response({"detail": DETAIL}, status=422)
        if self.mode == "openai-error":
            return web.json_response(OPENAI_ERROR, status=400)
        if self.mode == "leaky500":
            return web.json_response(LEAKY_500, status=500)
        if self.mode == "reply" and self.reply is not None:
            status, payload = self.reply
            if isinstance(payload, bytes):
                return web.Response(body=payload, status=status, content_type="text/plain")
            return web.json_response(payload, status=status)
        if self.mode == "slow":
            await asyncio.sleep(self.chunk_delay)
        if body.get("stream"):
            return await self._stream(request, body)
        if request.path == "/v1/completions":
            choice: dict[str, Any] = {"index": 0, "text": "hi", "finish_reason": "stop"}
            kind = "text_completion"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            kind = "chat.completion"
        return web.json_response(
            {"id": self.name, "object": kind, "model": body["model"], "choices": [choice], "usage": usage()}
        )

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.mode == "script":
            for i, piece in enumerate(self.script):
                if i:
                    await asyncio.sleep(self.chunk_delay)
                await resp.write(piece)
            await resp.write_eof()
            return resp
        await resp.write(delta(self.name, "tok0"))
        if self.mode == "drop":
            await asyncio.sleep(0.05)  # let the first chunk reach the gateway
            assert request.transport is not None
            request.transport.close()
            return resp
        for i in range(1, self.chunks):
            await asyncio.sleep(self.chunk_delay)
            last = i == self.chunks - 1 and self.mode == "usage-attached"
            await resp.write(delta(self.name, f"tok{i}", **({"usage": usage()} if last else {})))
        await asyncio.sleep(self.chunk_delay)
        options = body.get("stream_options") or {}
        if options.get("include_usage") and self.mode not in ("no-usage", "usage-attached"):
            chunk = {"id": self.name, "object": "chat.completion.chunk", "model": "m", "choices": []}
            await resp.write(sse({**chunk, "usage": usage()}))
        await resp.write(sse("[DONE]"))
        self.finished_at = time.monotonic()
        self.stream_finished.set()
        if self.mode == "linger":
            await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp


StartUpstream = Callable[..., Awaitable[tuple[FakeOpenAI, Upstream]]]


@asynccontextmanager
async def fake_upstreams() -> AsyncIterator[StartUpstream]:
    """``fake, up = await start("r1", mode="drop")``: started now, closed on exit."""
    started: list[FakeOpenAI] = []

    async def start(name: str, **options: Any) -> tuple[FakeOpenAI, Upstream]:
        fake = FakeOpenAI(name, **options)
        started.append(fake)
        return fake, await fake.start()

    try:
        yield start
    finally:
        for fake in started:
            await fake.close()


class GatewayServer(TestServer):
    """A TestServer run the way ``aiplane up`` and ``aiplane gateway`` run the gateway
    (``aio.serve_app``): a client that hangs up cancels its handler."""

    async def _make_runner(self, **kwargs: Any) -> AppRunner:
        kwargs["handler_cancellation"] = True
        return AppRunner(self.app, **kwargs)


@asynccontextmanager
async def gateway(
    discovery: InMemoryDiscovery, config: GatewayConfig | None = None
) -> AsyncIterator[tuple[TestClient, Gateway]]:
    gw = Gateway(discovery=discovery, config=config or GatewayConfig())
    client = TestClient(GatewayServer(gw.app(), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, gw
    finally:
        await client.close()


def metric(text: str, sample_name: str, **labels: str) -> float:
    """One sample's value from a Prometheus exposition; 0 when the series does not exist."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    return 0.0


def assert_openai_error(body: dict[str, Any], *, type_: str, code: str | None = None) -> str:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


def events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    text = body.decode().replace("\r\n", "\n")
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
