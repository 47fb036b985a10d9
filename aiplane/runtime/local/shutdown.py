"""A plane stops when asked, even when something inside it hangs.

The graceful path (cancel the controller, drain the gateway, stop the replicas) is
bounded phase by phase. Behind it stands a watchdog thread, armed by the first stop
signal: past its deadline it writes every thread's and task's stack to the log (so a
hang is diagnosable, not just survived), SIGKILLs the replicas' process groups and
exits. A second SIGTERM or Ctrl-C takes that path at once, as users expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable

EXIT_HARD_STOP = 3


class Watchdog:
    """Owned by the process (``plane.run``), so it also covers asyncio's own teardown."""

    def __init__(self, deadline: float, pids: Callable[[], list[int]] = list) -> None:
        self._pids = pids
        self._deadline = deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: threading.Timer | None = None

    def watch(self, pids: Callable[[], list[int]]) -> None:
        """Where to find the process groups to kill (the supervisor's replicas)."""
        self._pids = pids

    def arm(self) -> None:
        """Start the countdown; idempotent, so every stop path can call it."""
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            why = f"shutdown took over {self._deadline:g}s"
            self._timer = threading.Timer(self._deadline, self.fire, args=(why, True))
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def fire(self, why: str = "a second stop signal during shutdown", dump: bool = False) -> None:
        """Kill every replica's group and leave without unwinding; on a hang, dump stacks first."""
        err = sys.stderr
        err.write(f"aiplane: {why}; killing replicas and exiting\n")
        with contextlib.suppress(Exception):  # diagnostics must never block the exit
            if dump:
                faulthandler.dump_traceback(file=err, all_threads=True)
                if self._loop is not None:
                    for task in list(asyncio.all_tasks(self._loop)):
                        task.print_stack(limit=8, file=err)
        err.flush()
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        os._exit(EXIT_HARD_STOP)
