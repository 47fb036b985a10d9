"""A tiny in-process OpenAI server on loopback, to put behind the gateway in unit tests.

It answers ``/v1/chat/completions`` the way llama.cpp and vLLM do: JSON with ``usage``,
or an SSE stream of chunks with small sleeps between them. ``mode`` makes it misbehave:
``drop`` closes the connection after the first chunk, ``slow`` waits ``chunk_delay``
before answering, ``detail422`` answers FastAPI's ``{"detail": ...}``, ``openai-error``
an OpenAI-shaped 400, ``leaky500`` a 500 whose message carries a stack frame (as
llama-cpp-python's do), and ``linger`` holds the connection open for ``chunk_delay``
after ``[DONE]`` (a client may leave before the stream's last empty chunk).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from aiohttp import web
from aiohttp.test_utils import TestServer

from aiplane.gateway.discovery import Upstream

Mode = Literal["ok", "drop", "slow", "detail422", "openai-error", "linger", "leaky500"]
PROMPT_TOKENS, COMPLETION_TOKENS = 7, 3
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


def delta(name: str, content: str) -> bytes:
    return sse(
        {
            "id": name,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": content}}],
        }
    )


class FakeOpenAI:
    def __init__(self, name: str, *, mode: Mode = "ok", chunk_delay: float = 0.05, chunks: int = 3) -> None:
        self.name, self.mode, self.chunk_delay, self.chunks = name, mode, chunk_delay, chunks
        self.requests: list[dict[str, Any]] = []
        self.stream_finished = asyncio.Event()
        self._server: TestServer | None = None

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return Upstream(self.name, f"http://127.0.0.1:{self._server.port}")

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "detail422":
            return web.json_response({"detail": DETAIL}, status=422)
        if self.mode == "openai-error":
            return web.json_response(OPENAI_ERROR, status=400)
        if self.mode == "leaky500":
            return web.json_response(LEAKY_500, status=500)
        if self.mode == "slow":
            await asyncio.sleep(self.chunk_delay)
        if body.get("stream"):
            return await self._stream(request)
        return web.json_response(
            {
                "id": self.name,
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                },
            }
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(delta(self.name, "tok0"))
        if self.mode == "drop":
            await asyncio.sleep(0.05)  # let the first chunk reach the gateway
            assert request.transport is not None
            request.transport.close()
            return resp
        for i in range(1, self.chunks):
            await asyncio.sleep(self.chunk_delay)
            await resp.write(delta(self.name, f"tok{i}"))
        await asyncio.sleep(self.chunk_delay)
        await resp.write(sse("[DONE]"))
        self.stream_finished.set()
        if self.mode == "linger":
            await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp
