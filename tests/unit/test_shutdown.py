"""A plane stops when asked: the watchdog behind the graceful path, and Ctrl-C twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from aiplane.aio import install_stop_signals, remove_stop_signals
from aiplane.procs import alive

HUNG_PLANE = textwrap.dedent(
    """
    import asyncio, subprocess, sys, time
    from aiplane.runtime.local.shutdown import Watchdog

    replica = subprocess.Popen(["sleep", "300"], start_new_session=True)
    print(replica.pid, flush=True)

    def graceful_stop_that_hangs():
        time.sleep(60)  # a blocking call: the event loop can do nothing about it

    async def main():
        Watchdog(deadline=0.5, pids=lambda: [replica.pid]).arm()
        await asyncio.sleep(0)
        graceful_stop_that_hangs()

    asyncio.run(main())
    """
)


def test_watchdog_kills_replicas_and_exits_when_shutdown_hangs() -> None:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_PLANE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    replica = int(proc.stdout.readline())
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert time.monotonic() - started < 30
    assert "shutdown took over 0.5s; killing replicas and exiting" in err
    assert "graceful_stop_that_hangs" in err  # the stack of the hang is in the log
    deadline = time.monotonic() + 5
    while alive(replica) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(replica)


async def test_a_second_stop_signal_stops_at_once() -> None:
    stop = asyncio.Event()
    repeats: list[int] = []
    installed = install_stop_signals(stop, on_repeat=lambda: repeats.append(1))
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), timeout=5)
        assert repeats == []  # the first signal asks for a graceful stop
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 5
        while not repeats and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert repeats == [1]
    finally:
        remove_stop_signals(installed)
