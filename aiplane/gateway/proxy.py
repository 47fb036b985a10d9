"""Forward one request to a replica: bytes through as they arrive, never buffered.

A connection failure before any byte reached the client is retried once on another
replica; a failure mid-stream ends that stream with an OpenAI error event, and the
replica is reported so the next requests avoid it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from aiplane.gateway.discovery import Upstream
from aiplane.gateway.errors import GatewayError, error_body
from aiplane.gateway.requests import InferenceRequest

CLIENT_CLOSED = 499  # nginx's code for "client closed the request", in metrics only
CONNECT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
TRACE_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')


class UpstreamUnavailable(Exception):
    """The replica could not be reached (or dropped us) before the client saw a byte."""


@dataclass
class Outcome:
    status: int
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: str | None = None  # set when the replica failed after the client saw bytes


def _count_stream_tokens(chunk: bytes) -> int:
    """Content-bearing SSE events in a chunk: one token each for llama.cpp and vLLM."""
    return (
        chunk.count(b'"content": "')
        + chunk.count(b'"content":"')
        - chunk.count(b'"content": ""')
        - chunk.count(b'"content":""')
    )


def _without_traceback(message: str) -> str:
    """Drop the stack frames some engines put in error messages (llama-cpp-python does)."""
    kept: list[str] = []
    in_frame = False
    for line in message.splitlines():
        if line.startswith("Traceback (most recent call last)") or TRACE_FRAME.match(line):
            in_frame = True
        elif not (in_frame and line.startswith("    ")):  # a frame's source line follows it
            in_frame = False
            kept.append(line)
    return "\n".join(kept).strip()


def _openai_error_bytes(status: int, raw: bytes) -> bytes:
    """Upstream error bodies in OpenAI's shape (FastAPI's ``detail`` is rewrapped), minus
    any stack frames: no traceback reaches a client."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(error := data.get("error"), dict):
        if (
            isinstance(message := error.get("message"), str)
            and (clean := _without_traceback(message)) != message
        ):
            return json.dumps({**data, "error": {**error, "message": clean}}).encode()
        return raw
    message = data.get("detail") if isinstance(data, dict) else raw.decode(errors="replace")[:500]
    return json.dumps(error_body(status, f"upstream: {_without_traceback(str(message))}")).encode()


async def forward(
    session: aiohttp.ClientSession,
    request: web.Request,
    inference: InferenceRequest,
    raw: bytes,
    upstream: Upstream,
    timeout: float,
    started: float,
) -> tuple[web.StreamResponse, Outcome]:
    url = upstream.base_url + inference.endpoint
    headers = {"Content-Type": "application/json", "Accept": request.headers.get("Accept", "*/*")}
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=5)
    try:
        upstream_resp = await session.post(url, data=raw, headers=headers, timeout=client_timeout)
    except CONNECT_ERRORS as exc:
        raise UpstreamUnavailable(f"{upstream.replica_id}: {exc.__class__.__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise GatewayError(504, f"upstream {upstream.replica_id} timed out after {timeout:g}s") from exc
    async with upstream_resp:
        ctype = upstream_resp.headers.get("Content-Type", "application/json")
        if upstream_resp.status >= 400 or "text/event-stream" not in ctype:
            try:
                body = await upstream_resp.read()
            except CONNECT_ERRORS as exc:
                raise UpstreamUnavailable(f"{upstream.replica_id}: {exc}") from exc
            except TimeoutError as exc:
                raise GatewayError(
                    504, f"upstream {upstream.replica_id} timed out after {timeout:g}s"
                ) from exc
            outcome = Outcome(upstream_resp.status)
            if upstream_resp.status >= 400:
                body = _openai_error_bytes(upstream_resp.status, body)
            else:
                _usage(body, outcome)
            resp = web.Response(body=body, status=upstream_resp.status, content_type="application/json")
            return resp, outcome
        return await _stream(request, upstream_resp, upstream, started, timeout)


async def _end_with(resp: web.StreamResponse, event: dict[str, object]) -> None:
    """End a stream the client already reads with an OpenAI error event, not a hang."""
    with contextlib.suppress(ConnectionResetError):
        await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")


def _usage(body: bytes, outcome: Outcome) -> None:
    try:
        usage = json.loads(body).get("usage") or {}
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return
    outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    outcome.completion_tokens = int(usage.get("completion_tokens") or 0)


async def _stream(
    request: web.Request,
    upstream_resp: aiohttp.ClientResponse,
    upstream: Upstream,
    started: float,
    timeout: float,
) -> tuple[web.StreamResponse, Outcome]:
    resp = web.StreamResponse(
        status=upstream_resp.status,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    outcome = Outcome(upstream_resp.status)
    prepared = False
    try:
        async for chunk in upstream_resp.content.iter_any():
            outcome.completion_tokens += _count_stream_tokens(chunk)
            try:
                if not prepared:
                    await resp.prepare(request)
                    prepared = True
                    outcome.ttft = time.monotonic() - started
                await resp.write(chunk)
            except ConnectionResetError:  # the client left: not the replica's fault
                outcome.status = CLIENT_CLOSED
                upstream_resp.close()  # stop generating for nobody
                return resp, outcome
    except CONNECT_ERRORS as exc:
        if not prepared:
            raise UpstreamUnavailable(f"{upstream.replica_id}: {exc}") from exc
        event = error_body(502, f"replica {upstream.replica_id} failed mid-stream: {exc.__class__.__name__}")
        await _end_with(resp, event)
        outcome.status, outcome.failure = 502, f"mid-stream: {exc.__class__.__name__}: {exc}"
    except TimeoutError as exc:
        message = f"upstream {upstream.replica_id} timed out after {timeout:g}s"
        if not prepared:
            raise GatewayError(504, message) from exc
        await _end_with(resp, error_body(504, message))
        outcome.status, outcome.failure = 504, "timed out mid-stream"
    try:
        if not prepared:
            await resp.prepare(request)
        await resp.write_eof()
    except ConnectionResetError:
        # Every event was written; a client that hangs up on ``[DONE]`` (the openai
        # client does) only misses the chunked terminator, so the answer stands.
        if not prepared:
            outcome.status = CLIENT_CLOSED
    return resp, outcome
