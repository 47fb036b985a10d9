"""The local supervisor's failure paths: they must show as status, never hang silently."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from aiplane.engines.base import LocalLaunch
from aiplane.runtime.local import supervisor
from aiplane.runtime.local.process import free_port
from aiplane.runtime.local.supervisor import Replica, State, Supervisor


def replica(tmp_path: Path, argv: list[str]) -> Replica:
    return Replica("r-1", "m", 1, "127.0.0.1", 9, (), tmp_path / "r-1.log", LocalLaunch(argv))


async def first_state_after_starting(changes: asyncio.Queue[tuple[State, str]]) -> tuple[State, str]:
    while True:
        state, message = await asyncio.wait_for(changes.get(), timeout=10)
        if state is not State.STARTING:
            return state, message


async def test_a_command_that_does_not_exist_backs_off_with_the_reason(tmp_path: Path) -> None:
    changes: asyncio.Queue[tuple[State, str]] = asyncio.Queue()
    async with Supervisor(lambda r: changes.put_nowait((r.state, r.message))) as sup:
        sup.start(replica(tmp_path, ["/nonexistent/serve", "--port", "9"]))
        state, message = await first_state_after_starting(changes)
    assert state is State.BACKOFF
    assert message == "cannot start '/nonexistent/serve': No such file or directory; restart in 1s"


async def test_a_bug_in_supervision_shows_as_a_crash_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> bool:
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(Supervisor, "_wait_ready", broken)
    changes: asyncio.Queue[tuple[State, str]] = asyncio.Queue()
    async with Supervisor(lambda r: changes.put_nowait((r.state, r.message))) as sup:
        r = replica(tmp_path, ["sleep", "30"])
        sup.start(r)
        state, message = await first_state_after_starting(changes)
        assert (state, message) == (State.CRASH_LOOP, "supervision failed: RuntimeError: probe exploded")
        pid = r.pid
        assert pid is not None
    # Leaving the supervisor still kills the process the broken task left behind.
    await asyncio.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


HEALTH_SERVER = """\
import http.server, os, sys
port, sick = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if os.path.exists(sick) else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def health_replica(tmp_path: Path) -> tuple[Replica, Path]:
    """A replica whose health endpoint fails while the returned file exists."""
    script, sick = tmp_path / "health.py", tmp_path / "sick"
    script.write_text(HEALTH_SERVER)
    port = free_port()
    launch = LocalLaunch([sys.executable, str(script), str(port), str(sick)])
    return Replica("r-1", "m", 1, "127.0.0.1", port, (), tmp_path / "r.log", launch), sick


async def wait_state(changes: asyncio.Queue[tuple[State, str]], want: State, timeout: float = 10) -> str:
    async with asyncio.timeout(timeout):
        while True:
            state, message = await changes.get()
            if state is want:
                return message


async def test_a_reported_failure_is_checked_and_a_healthy_replica_keeps_serving(tmp_path: Path) -> None:
    """One cut stream is a signal: the replica stays Ready when its health check passes."""
    changes: asyncio.Queue[tuple[State, str]] = asyncio.Queue()
    r, sick = health_replica(tmp_path)
    async with Supervisor(lambda r: changes.put_nowait((r.state, r.message))) as sup:
        sup.start(r)
        await wait_state(changes, State.READY)
        sup.report_failure("r-1", "mid-stream: ClientPayloadError")
        await asyncio.sleep(0.5)
        assert r.state is State.READY and r.routable and changes.empty()

        # Unhealthy for real: out of routing, re-probed, back when it answers again.
        sick.touch()
        sup.report_failure("r-1", "mid-stream: ClientPayloadError")
        message = await wait_state(changes, State.UNHEALTHY, timeout=5)
        assert message == "health check failed after: mid-stream: ClientPayloadError"
        assert not r.routable
        await asyncio.sleep(1.0)
        assert r.state is State.UNHEALTHY, "still failing: still out of routing"
        sick.unlink()
        assert await wait_state(changes, State.READY, timeout=8) == "recovered: health check passed"
        assert r.routable and r.restarts == 0


async def test_a_replica_unhealthy_for_too_long_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "FAIL_AFTER", 1.0)
    monkeypatch.setattr(supervisor, "BACKOFF_START", 0.2)
    changes: asyncio.Queue[tuple[State, str]] = asyncio.Queue()
    r, sick = health_replica(tmp_path)
    async with Supervisor(lambda r: changes.put_nowait((r.state, r.message))) as sup:
        sup.start(r)
        await wait_state(changes, State.READY)
        first = r.pid
        assert first is not None
        sick.touch()
        sup.report_failure("r-1", "ClientConnectorError")
        await wait_state(changes, State.UNHEALTHY, timeout=5)
        assert (await wait_state(changes, State.FAILED, timeout=5)).startswith("unhealthy for 1s after:")
        assert (await wait_state(changes, State.BACKOFF, timeout=10)).startswith("exited with code")
        sick.unlink()
        await wait_state(changes, State.READY, timeout=10)
        assert r.pid != first and r.restarts == 1
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
