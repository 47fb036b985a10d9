"""asyncio plumbing every aiplane server shares: uvloop where installed, SIGTERM/SIGINT as a stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

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
