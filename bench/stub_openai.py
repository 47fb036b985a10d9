"""A stub OpenAI server for proxy benchmarks: fast, deterministic, loopback only.

A raw asyncio protocol (on uvloop) so that it costs far less CPU per request than any
proxy put in front of it. It answers

* ``POST /v1/chat/completions``: a fixed chat completion, or with ``"stream": true`` an
  SSE stream (chunked) of a role chunk, ``--tokens`` content chunks ``--token-gap-ms``
  apart, a finish chunk, the usage chunk when ``stream_options.include_usage`` asks for
  it, and ``[DONE]``;
* ``GET /v1/models``: one model, ``stub``; ``GET /health``: ``{"status": "ok"}``.

HTTP/1.1 keep-alive, one request at a time per connection (no client here pipelines).

    .venv/bin/python bench/stub_openai.py --port 9001 [--tokens 8] [--token-gap-ms 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any

CREATED = 1_700_000_000
PROMPT_TOKENS = 9


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _sse(event: dict[str, Any] | str) -> bytes:
    data = (event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))).encode()
    payload = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(payload), payload)  # one HTTP chunk per event


class Answers:
    """The bytes of every answer, built once per model name."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._cache: dict[tuple[str, bool, bool], Any] = {}
        body = json.dumps({"object": "list", "data": [self._model("stub")]}).encode()
        self.models = self._response(200, "application/json", body)
        self.health = self._response(200, "application/json", b'{"status":"ok"}')

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": CREATED, "owned_by": "stub"}

    @staticmethod
    def _response(status: int, ctype: str, body: bytes) -> bytes:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    def error(self, status: int, message: str) -> bytes:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        return self._response(status, "application/json", json.dumps(body).encode())

    def completion(self, model: str) -> bytes:
        key = (model, False, False)
        if key not in self._cache:
            text = " ".join(f"tok{i}" for i in range(self.tokens))
            body = {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": self._usage(),
            }
            self._cache[key] = self._response(200, "application/json", json.dumps(body).encode())
        return self._cache[key]  # type: ignore[no-any-return]

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": self.tokens,
            "total_tokens": PROMPT_TOKENS + self.tokens,
        }

    def stream(self, model: str, include_usage: bool) -> tuple[bytes, list[bytes], bytes]:
        """(headers and role chunk, one chunk per token, the end)."""
        key = (model, True, include_usage)
        if key not in self._cache:
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            first = head + _sse(_chunk(model, {"role": "assistant", "content": ""}))
            tokens = [_sse(_chunk(model, {"content": f"tok{i} "})) for i in range(self.tokens)]
            end = _sse(_chunk(model, {}, "stop"))
            if include_usage:
                usage = {**_chunk(model, {}), "choices": [], "usage": self._usage()}
                end += _sse(usage)
            end += _sse("[DONE]") + b"0\r\n\r\n"
            self._cache[key] = (first, tokens, end)
        return self._cache[key]  # type: ignore[no-any-return]


class StubProtocol(asyncio.Protocol):
    def __init__(self, answers: Answers, gap: float) -> None:
        self.answers, self.gap = answers, gap
        self.buffer = bytearray()
        self.busy = False  # a stream is being written; later requests wait for it
        self.close_after = False  # the request being streamed asked for Connection: close
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._answer(method, path.split("?", 1)[0], body)
            if headers.get("connection", "").lower() == "close" and self.transport is not None:
                if self.busy:
                    self.close_after = True
                else:
                    self.transport.close()

    def _answer(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        a = self.answers
        if method == "GET" and path == "/v1/models":
            self.transport.write(a.models)
            return
        if method == "GET" and path == "/health":
            self.transport.write(a.health)
            return
        if method != "POST" or path != "/v1/chat/completions":
            self.transport.write(a.error(404, f"{method} {path}: not found"))
            return
        try:
            request = json.loads(body)
            model = str(request.get("model") or "stub")
        except (ValueError, AttributeError):
            self.transport.write(a.error(400, "request body is not a JSON object"))
            return
        if not request.get("stream"):
            self.transport.write(a.completion(model))
            return
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        first, tokens, end = a.stream(model, include_usage)
        self.transport.write(first)
        if self.gap <= 0:
            for token in tokens:
                self.transport.write(token)
            self.transport.write(end)
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._stream_slowly(tokens, end))

    async def _stream_slowly(self, tokens: list[bytes], end: bytes) -> None:
        for token in tokens:
            await asyncio.sleep(self.gap)
            if self.transport is None:
                return
            self.transport.write(token)
        if self.transport is None:
            return
        self.transport.write(end)
        self.busy = False
        if self.close_after:
            self.transport.close()
            return
        self._process()


async def serve(host: str, port: int, tokens: int, gap_ms: float) -> None:
    answers = Answers(tokens)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StubProtocol(answers, gap_ms / 1000), host, port, reuse_address=True, backlog=1024
    )
    print(f"stub listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tokens", type=int, default=8, help="content chunks per answer")
    ap.add_argument("--token-gap-ms", type=float, default=1.0, help="pause between streamed tokens")
    args = ap.parse_args()
    if not args.host.startswith("127."):
        raise SystemExit("the stub listens on loopback only (127.0.0.0/8)")
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, args.tokens, args.token_gap_ms))


if __name__ == "__main__":
    main()
