"""POSTs to an OpenAI-compatible API (the gateway or a Model's Service) with retries.

Overload and restarts are transient, so 429, 502, 503, 504, connection errors and
timeouts are retried with capped exponential backoff (``Retry-After`` seconds win),
up to ``retries`` attempts; then the shard fails and the runtime retries the shard.
A 400, 413 or 422 is about this input (a prompt too long): :class:`RowRejected`, a
bad row. Anything else (401, 404, 500) is about the job and fails the shard at once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import aiohttp

from aiplane.batch.errors import ShardFailed

RETRY_STATUSES = frozenset({429, 502, 503, 504})
ROW_STATUSES = frozenset({400, 413, 422})
HINTS = {
    401: " (check AIPLANE_API_KEY)",
    403: " (check AIPLANE_API_KEY)",
    404: " (check AIPLANE_MODEL_URL and AIPLANE_MODEL)",
}
RETRY_AFTER_CAP = 60.0


class RowRejected(Exception):
    """The server refused this request's input; the message is the server's."""


def backoff_delay(
    attempt: int, retry_after: float | None, *, base: float, cap: float, jitter: float
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based); ``jitter`` in [0, 1) spreads retries."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), RETRY_AFTER_CAP)
    return min(cap, base * 2 ** (attempt - 1)) * (0.5 + jitter / 2)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds; an HTTP date (rare from model servers) is ignored."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_message(text: str) -> str:
    """The server's message from an OpenAI error body, FastAPI's ``detail``, or the text."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("detail", "message", "error"):
            if body.get(key):
                return str(body[key])[:500]
    return " ".join(text.split())[:500] or "(empty body)"


class OpenAIClient:
    """One session; at most ``concurrency`` requests in flight (each holds its slot while backing off)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 4,
        retries: int = 8,
        timeout: float = 600.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries, self.timeout = retries, timeout
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self._sleep, self._jitter = sleep, jitter
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self.retried = 0

    async def __aenter__(self) -> OpenAIClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self._concurrency),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON object the server answered; retries as the module says."""
        assert self._session is not None, "use the client in `async with`"
        url = self.base_url + path
        async with self._slots:
            problem = ""
            for attempt in range(1, self.retries + 1):
                retry_after = None
                try:
                    async with self._session.post(url, json=body) as resp:
                        status, text = resp.status, await resp.text()
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                    problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                else:
                    if 200 <= status < 300:
                        return _json_object(url, text)
                    problem = f"{status} {error_message(text)}"
                    if status in ROW_STATUSES:
                        raise RowRejected(problem)
                    if status not in RETRY_STATUSES:
                        raise ShardFailed(f"POST {url}: {problem}{HINTS.get(status, '')}")
                if attempt < self.retries:
                    self.retried += 1
                    delay = backoff_delay(
                        attempt,
                        retry_after,
                        base=self.backoff_base,
                        cap=self.backoff_cap,
                        jitter=self._jitter(),
                    )
                    await self._sleep(delay)
            raise ShardFailed(
                f"POST {url}: gave up after {self.retries} attempts (AIPLANE_RETRIES), last: {problem}"
            )


def _json_object(url: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ShardFailed(f"POST {url}: the answer is not a JSON object: {text[:200]!r}")
    return value
