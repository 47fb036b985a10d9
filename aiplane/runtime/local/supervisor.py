"""Supervise replica processes: spawn, wait for readiness, restart with backoff.

One asyncio task per replica. A replica that keeps crashing goes to
``CrashLoopBackOff`` (visible in ``aiplane get`` and events) and is retried with a
capped exponential backoff, as the kubelet does. Replicas left by a plane that died
are adopted when they still answer their readiness probe.

A failure the gateway reports is a signal, not a verdict: it starts a health check on
the engine's health path (which answers while generation runs). Only a failed probe
takes the replica out of routing, as ``Unhealthy``; it is re-probed with backoff until
it recovers or, failing for ``FAIL_AFTER``, is killed and restarted, as a kubelet
liveness probe would. Each step is a state and an event, so ``aiplane get replicas``
and the gateway always agree on what serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import aiohttp

from aiplane.engines.base import LocalLaunch
from aiplane.runtime.local.process import alive, kill_group, probe, tail

log = logging.getLogger(__name__)

BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
CRASH_LOOP_AFTER = 3  # restarts without a stable run
STABLE_AFTER = 60.0  # a run this long resets the backoff
READY_TIMEOUT = 600.0
# Readiness is probed every 50 ms for the first seconds (a held request waits on it; a
# loopback GET costs next to nothing), then every 0.5 s for slow loads.
FAST_PROBE_FOR, FAST_PROBE, SLOW_PROBE = 10.0, 0.05, 0.5
TASK_STOP_TIMEOUT = 10.0  # a replica task gets this long to unwind before its process is killed anyway
# Health checks after a reported failure: first at once, then every 0.25 s doubling to
# 4 s; a replica unhealthy for FAIL_AFTER is declared failed and restarted.
RECHECK_FIRST, RECHECK_CAP, FAIL_AFTER = 0.25, 4.0, 30.0
HEALTH_TIMEOUT = 2.0


class State(StrEnum):
    STARTING = "Starting"
    READY = "Ready"
    UNHEALTHY = "Unhealthy"  # failed a health check after a reported failure; not routed
    FAILED = "Failed"  # unhealthy for too long: killed, to be restarted
    BACKOFF = "BackOff"
    CRASH_LOOP = "CrashLoopBackOff"
    DRAINING = "Draining"
    STOPPED = "Stopped"


@dataclass
class Replica:
    id: str
    model: str
    generation: int
    host: str
    port: int
    devices: tuple[int, ...]
    log_path: Path
    launch: LocalLaunch
    state: State = State.STARTING
    pid: int | None = None
    restarts: int = 0
    started: float | None = None
    ready_at: float | None = None
    message: str = ""
    adopted: bool = False
    checking: bool = False  # a health check after a reported failure is running
    stopping: bool = False  # set before the task is cancelled: never (re)start it again
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def routable(self) -> bool:
        return self.state is State.READY


Listener = Callable[[Replica], None]


class Supervisor:
    def __init__(self, on_change: Listener) -> None:
        self.replicas: dict[str, Replica] = {}
        self._on_change = on_change
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._stopping: dict[str, Replica] = {}  # popped from replicas, process not yet gone
        self._terminating: set[asyncio.Task[None]] = set()  # stops running in the background

    async def __aenter__(self) -> Supervisor:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True  # a controller that outlived its cancel cannot start more
        await self.stop_all()
        if self._session:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Supervisor as an async context manager"
        return self._session

    def _set(self, replica: Replica, state: State, message: str = "") -> None:
        replica.state, replica.message = state, message
        self._on_change(replica)

    def start(self, replica: Replica) -> None:
        if self._closing:
            return
        self.replicas[replica.id] = replica
        replica.task = asyncio.create_task(self._run(replica), name=f"replica-{replica.id}")
        replica.task.add_done_callback(lambda task: self._task_ended(replica, task))

    def _task_ended(self, replica: Replica, task: asyncio.Task[None]) -> None:
        """A replica task only ends by cancellation; anything else is a bug to show, not hide."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error("replica %s: supervision failed: %r (aiplane up -v shows the traceback)", replica.id, exc)
        log.info("replica %s: supervision failed", replica.id, exc_info=exc)
        self._set(replica, State.CRASH_LOOP, f"supervision failed: {exc.__class__.__name__}: {exc}")

    def adopt(self, replica: Replica) -> None:
        """Take over a live, ready process a previous plane started."""
        if self._closing:
            return
        replica.adopted = True
        self.replicas[replica.id] = replica
        replica.task = asyncio.create_task(self._watch_adopted(replica), name=f"adopt-{replica.id}")
        replica.task.add_done_callback(lambda task: self._task_ended(replica, task))

    async def stop(self, replica_id: str) -> None:
        """Stop a replica's task and its process group; bounded even if the task misbehaves."""
        if (replica := self._detach(replica_id)) is not None:
            await self._terminate(replica)

    def stop_soon(self, replica_id: str) -> None:
        """Stop in the background: a controller tick must not wait seconds for an exit."""
        if (replica := self._detach(replica_id)) is not None:
            task = asyncio.create_task(self._terminate(replica), name=f"stop-{replica_id}")
            self._terminating.add(task)
            task.add_done_callback(self._terminating.discard)

    def _detach(self, replica_id: str) -> Replica | None:
        """Out of routing and supervision at once; the process goes in ``_terminate``."""
        replica = self.replicas.pop(replica_id, None)
        if replica is not None:
            replica.stopping = True
            self._stopping[replica.id] = replica
        return replica

    async def _terminate(self, replica: Replica) -> None:
        try:
            if replica.task:
                replica.task.cancel()
                # asyncio.wait neither raises nor passes our own cancellation into the task.
                _, pending = await asyncio.wait({replica.task}, timeout=TASK_STOP_TIMEOUT)
                if pending:
                    log.warning("replica %s: task did not stop in %gs", replica.id, TASK_STOP_TIMEOUT)
            if replica.pid and alive(replica.pid):
                await kill_group(replica.pid)
        finally:
            self._stopping.pop(replica.id, None)
        self._set(replica, State.STOPPED, "stopped")

    def holding(self) -> list[Replica]:
        """Every replica whose process may still hold its GPUs: supervised, or stopping."""
        return [*self.replicas.values(), *self._stopping.values()]

    def pids(self) -> list[int]:
        """Process groups of every replica not yet known gone: what a hard stop must kill.

        Read from the watchdog's thread, hence the copies.
        """
        replicas = [*list(self.replicas.values()), *list(self._stopping.values())]
        return [r.pid for r in replicas if r.pid]

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(rid) for rid in list(self.replicas)), *list(self._terminating))

    def report_failure(self, replica_id: str, error: str) -> None:
        """The gateway saw this replica fail: check its health now (once at a time)."""
        replica = self.replicas.get(replica_id)
        if replica and replica.state is State.READY and not replica.checking and not self._closing:
            replica.checking = True
            self._background.add(task := asyncio.create_task(self._check_health(replica, error)))
            task.add_done_callback(self._background.discard)

    async def _check_health(self, replica: Replica, error: str) -> None:
        """Probe until healthy, re-probing with backoff; restart what stays unhealthy."""
        try:
            started, delay = time.monotonic(), RECHECK_FIRST
            while replica.pid and alive(replica.pid) and not replica.stopping:
                if await self._healthy(replica):
                    if replica.state is State.UNHEALTHY:
                        self._set(replica, State.READY, "recovered: health check passed")
                    return
                if replica.state is State.READY:
                    self._set(replica, State.UNHEALTHY, f"health check failed after: {error}")
                elif replica.state is not State.UNHEALTHY:
                    return  # it exited or is draining: the supervisor's loop owns it now
                if time.monotonic() - started >= FAIL_AFTER:
                    self._set(replica, State.FAILED, f"unhealthy for {FAIL_AFTER:g}s after: {error}")
                    await kill_group(replica.pid)  # the supervisor's loop restarts it
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECHECK_CAP)
        finally:
            replica.checking = False

    async def _healthy(self, replica: Replica) -> bool:
        url = replica.base_url + replica.launch.probes.health_path
        return await probe(self.session, url, timeout=HEALTH_TIMEOUT)

    async def _probe(self, replica: Replica) -> bool:
        return await probe(self.session, replica.base_url + replica.launch.probes.ready_path)

    async def _spawn(self, replica: Replica) -> asyncio.subprocess.Process:
        replica.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = os.environ | replica.launch.env
        with replica.log_path.open("ab") as logf:
            banner = f"--- aiplane: starting replica {replica.id}: {json.dumps(replica.launch.argv)}\n"
            logf.write(banner.encode())
            logf.flush()
            proc = await asyncio.create_subprocess_exec(
                *replica.launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Its own process group (killpg reaches what it forks; Ctrl-C on the plane's
                # terminal does not), but not its own session: a session is also a
                # scheduler autogroup, and llama.cpp's spinning threads, boxed into one,
                # took 4-7 s instead of 0.3 s for a first token on a busy 2-core machine.
                # (uvloop takes no process_group=0; setpgrp is one syscall in the child.)
                preexec_fn=os.setpgrp,
            )
        replica.pid, replica.started, replica.ready_at = proc.pid, time.time(), None
        return proc

    async def _wait_ready(self, replica: Replica, proc: asyncio.subprocess.Process) -> bool:
        started = time.monotonic()
        deadline = started + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return False
            if await self._probe(replica):
                return True
            delay = FAST_PROBE if time.monotonic() - started < FAST_PROBE_FOR else SLOW_PROBE
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await asyncio.shield(proc.wait())
        return False

    async def _run(self, replica: Replica) -> None:
        backoff = BACKOFF_START
        failures = 0
        try:
            while not replica.stopping:
                self._set(replica, State.STARTING, "launching")
                try:
                    proc = await self._spawn(replica)
                except OSError as exc:  # e.g. a custom engine's command that does not exist
                    ran, detail = 0.0, ""
                    outcome = f"cannot start {replica.launch.argv[0]!r}: {exc.strerror}"
                else:
                    self._on_change(replica)
                    if await self._wait_ready(replica, proc):
                        replica.ready_at = time.time()
                        self._set(replica, State.READY, "")
                        await proc.wait()
                    elif proc.returncode is None:
                        await kill_group(proc.pid)
                        await proc.wait()
                    ran = time.time() - (replica.started or time.time())
                    outcome = f"exited with code {proc.returncode} after {ran:.1f}s"
                    detail = f": {tail(replica.log_path, 3)}"  # the last it printed
                if ran >= STABLE_AFTER:
                    backoff, failures = BACKOFF_START, 0
                failures += 1
                replica.restarts += 1
                state = State.CRASH_LOOP if failures >= CRASH_LOOP_AFTER else State.BACKOFF
                self._set(replica, state, f"{outcome}; restart in {backoff:.0f}s{detail}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
        except asyncio.CancelledError:
            if replica.pid and alive(replica.pid):
                await kill_group(replica.pid)
            raise

    async def _watch_adopted(self, replica: Replica) -> None:
        """An adopted process is not our child: poll it, and restart it ourselves if it dies."""
        self._set(replica, State.READY, "adopted from a previous plane")
        while replica.pid and alive(replica.pid):
            await asyncio.sleep(0.2)
        if replica.stopping:
            return
        replica.adopted = False
        replica.restarts += 1
        self._set(replica, State.BACKOFF, "adopted process exited; restarting")
        await self._run(replica)
