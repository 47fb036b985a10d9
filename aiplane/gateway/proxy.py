"""Forward one request to a replica; a stream goes through event by event, never buffered.

A connection failure before any byte reached the client is retried once on another
replica; a stream that fails after that (the connection breaks, the engine errs or ends
without ``[DONE]``) ends with an OpenAI error event instead of ``[DONE]``, and the
replica is reported so the next requests avoid it. A client that leaves cancels the
upstream request: closing the connection is what stops an engine generating.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from aiplane.gateway.discovery import Upstream
from aiplane.gateway.relay import StreamRelay
from aiplane.gateway.requests import InferenceRequest
from aiplane.gateway.upstream_errors import openai_error
from aiplane.openai_errors import OpenAIError

CLIENT_CLOSED = 499  # nginx's code for "client closed the request", in metrics only
CONNECT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
AFTER_DONE = 2.0  # how long an engine may keep a stream open after [DONE] before it counts as ended
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class UpstreamUnavailable(Exception):
    """The replica could not be reached (or dropped us) before the client saw a byte.

    ``fresh_connection_may_help``: the request died on a pooled connection before any
    answer (the engine closed it as idle just as it was reused), not on a refused
    connect or a dropped answer; the same replica may take it again on a new connection.
    """

    def __init__(self, message: str, *, fresh_connection_may_help: bool = False) -> None:
        super().__init__(message)
        self.fresh_connection_may_help = fresh_connection_may_help


@dataclass
class Outcome:
    status: int
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: str | None = None  # set when the replica failed after the client saw bytes


def _client_left(request: web.Request) -> bool:
    """A cancelled handler whose client is gone (aiohttp's handler_cancellation), as
    opposed to one cancelled by a shutdown, which must stay cancelled."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _accept_hang_up() -> None:
    """The cancellation was a hang-up, handled here: the handler finishes normally."""
    if (task := asyncio.current_task()) is not None:
        task.uncancel()


async def forward(
    session: aiohttp.ClientSession,
    request: web.Request,
    inference: InferenceRequest,
    raw: bytes,
    upstream: Upstream,
    timeout: float,
    started: float,
) -> tuple[web.StreamResponse, Outcome]:
    try:
        return await _forward(session, request, inference, raw, upstream, timeout, started)
    except asyncio.CancelledError:
        if not _client_left(request):
            raise
        _accept_hang_up()  # leaving _forward closed the upstream connection: generation stops
        return web.Response(status=CLIENT_CLOSED), Outcome(CLIENT_CLOSED)


async def _forward(
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
        raise UpstreamUnavailable(
            f"{upstream.replica_id}: {exc.__class__.__name__}: {exc}",
            fresh_connection_may_help=not isinstance(exc, aiohttp.ClientConnectorError),
        ) from exc
    except TimeoutError as exc:
        raise OpenAIError(504, f"upstream {upstream.replica_id} timed out after {timeout:g}s") from exc
    async with upstream_resp:  # leaving it early (a hang-up, an error) closes the connection
        ctype = upstream_resp.headers.get("Content-Type", "application/json")
        if upstream_resp.status >= 400 or "text/event-stream" not in ctype:
            try:
                body = await upstream_resp.read()
            except CONNECT_ERRORS as exc:
                raise UpstreamUnavailable(f"{upstream.replica_id}: {exc}") from exc
            except TimeoutError as exc:
                raise OpenAIError(
                    504, f"upstream {upstream.replica_id} timed out after {timeout:g}s"
                ) from exc
            status = upstream_resp.status
            if status >= 400:
                status, body = openai_error(status, body)
            outcome = Outcome(status)
            if status < 400:
                _usage(body, outcome)
            resp = web.Response(body=body, status=status, content_type="application/json")
            return resp, outcome
        return await _stream(request, inference, upstream_resp, upstream, started, timeout)


def _usage(body: bytes, outcome: Outcome) -> None:
    try:
        usage = json.loads(body).get("usage") or {}
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError, RecursionError):
        return
    outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    outcome.completion_tokens = int(usage.get("completion_tokens") or 0)


class _ClientLeft(Exception):
    """Writing to the client failed: it hung up (not the replica's fault)."""


class _Client:
    """The client's end of a stream: headers go out with the first event."""

    def __init__(self, request: web.Request, outcome: Outcome, started: float, status: int) -> None:
        self.request, self.outcome, self.started = request, outcome, started
        self.resp = web.StreamResponse(status=status, headers=SSE_HEADERS)
        self.prepared = False
        self.ended = False  # every event went out; only the chunked terminator may be left

    async def send(self, data: bytes) -> None:
        try:
            if not self.prepared:
                await self.resp.prepare(self.request)
                self.prepared = True
                self.outcome.ttft = time.monotonic() - self.started
            if data:
                await self.resp.write(data)
        except ConnectionResetError as exc:
            raise _ClientLeft from exc

    async def end(self, data: bytes) -> None:
        await self.send(data)
        self.ended = True
        try:
            await self.resp.write_eof()
        except ConnectionResetError as exc:
            raise _ClientLeft from exc


async def _stream(
    request: web.Request,
    inference: InferenceRequest,
    upstream_resp: aiohttp.ClientResponse,
    upstream: Upstream,
    started: float,
    timeout: float,
) -> tuple[web.StreamResponse, Outcome]:
    outcome = Outcome(upstream_resp.status)
    client = _Client(request, outcome, started, upstream_resp.status)
    relay = StreamRelay(include_usage=inference.include_usage)
    failed_status = 502
    try:
        try:
            while chunk := await _next_chunk(upstream_resp, relay.done):
                if out := relay.feed(chunk):
                    await client.send(out)
                if relay.error is not None:
                    break
        except CONNECT_ERRORS as exc:
            if not client.prepared:
                raise UpstreamUnavailable(f"{upstream.replica_id}: {exc}") from exc
            relay.broken(f"replica {upstream.replica_id} failed mid-stream: {exc.__class__.__name__}")
        except TimeoutError as exc:
            message = f"upstream {upstream.replica_id} timed out after {timeout:g}s"
            if not client.prepared:
                raise OpenAIError(504, message) from exc
            relay.broken(message, status=504)
            failed_status = 504
        end = relay.finish()
        if not client.prepared and relay.truncated:
            raise UpstreamUnavailable(f"{upstream.replica_id}: the stream ended before any event")
        if relay.error is not None:
            _failed(outcome, relay, early=not client.prepared, status=failed_status)
            if not client.prepared:
                status = outcome.status
                return web.json_response(relay.error, status=status), _counted(outcome, relay)
        await client.end(end)
    except (_ClientLeft, asyncio.CancelledError) as exc:
        # The client left. Once every event was written, a client that hangs up on
        # ``[DONE]`` (the openai client does) only misses the chunked terminator: the
        # answer stands. Before that it is a 499; leaving closes the upstream connection.
        if isinstance(exc, asyncio.CancelledError):
            if not _client_left(request):
                raise
            _accept_hang_up()
        upstream_resp.close()
        if not client.ended:
            outcome.status = CLIENT_CLOSED
    return client.resp, _counted(outcome, relay)


def _counted(outcome: Outcome, relay: StreamRelay) -> Outcome:
    outcome.prompt_tokens = relay.prompt_tokens or 0
    outcome.completion_tokens = relay.completion_tokens
    return outcome


async def _next_chunk(upstream_resp: aiohttp.ClientResponse, done: bool) -> bytes:
    """The next bytes of the engine's stream, b"" at its end. After ``[DONE]`` the end is
    awaited only briefly: an engine that keeps the connection open has still answered."""
    if not done:
        return await upstream_resp.content.readany()
    try:
        async with asyncio.timeout(AFTER_DONE):
            return await upstream_resp.content.readany()
    except TimeoutError:
        return b""


def _failed(outcome: Outcome, relay: StreamRelay, *, early: bool, status: int) -> None:
    """A stream that did not complete: the replica is at fault (and reported) unless the
    engine rejected the request before streaming anything, which is a plain 400."""
    if early and relay.error_is_clients:
        outcome.status = 400
        return
    error = relay.error.get("error") if relay.error else None
    message = error.get("message") if isinstance(error, dict) else None
    outcome.status = status
    outcome.failure = f"stream failed: {message}"
