"""asyncio plumbing every aiplane server shares: uvloop where installed, SIGTERM/SIGINT as
a stop, and one way to serve an aiohttp app on an address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from aiplane.errors import RuntimeFailure

log = logging.getLogger(__name__)

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop_signals(stop: asyncio.Event, on_repeat: Callable[[], None] | None = None) -> list[int]:
    """Make SIGTERM and SIGINT set ``stop``, and a repeat call ``on_repeat`` (stop now).

    Returns the signals to remove afterwards.
    """
    loop = asyncio.get_running_loop()

    def handler() -> None:
        if stop.is_set() and on_repeat is not None:
            on_repeat()
        stop.set()

    installed: list[int] = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    return installed


def remove_stop_signals(installed: list[int]) -> None:
    loop = asyncio.get_running_loop()
    for sig in installed:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a server's main coroutine on uvloop when it is installed (the gateway's hot path)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is a core dependency off Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 60.0,
    cleanup_timeout: float | None = None,
    handler_cancellation: bool = False,
) -> AsyncIterator[web.AppRunner]:
    """Serve ``app`` on ``host:port`` for the body of the ``with``; then drain and clean up.

    A port that cannot be bound is a :class:`RuntimeFailure` naming the address (one
    line for the CLI). In-flight requests get ``shutdown_timeout`` to finish; the whole
    cleanup is bounded by ``cleanup_timeout`` when given. ``handler_cancellation``
    cancels a handler whose client hung up (aiohttp's default is to let it run on).
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        handler_cancellation=handler_cancellation,
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as exc:
            raise RuntimeFailure(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        yield runner
    finally:
        try:
            async with asyncio.timeout(cleanup_timeout):
                await runner.cleanup()
        except TimeoutError:
            log.warning("the server on %s:%d did not shut down within %gs", host, port, cleanup_timeout)
