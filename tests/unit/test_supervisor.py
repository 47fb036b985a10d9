"""The local supervisor's failure paths: they must show as status, never hang silently."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from aiplane.engines.base import LocalLaunch
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
