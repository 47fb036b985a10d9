"""``aiplane up``: controller, supervisor and gateway in one asyncio process.

One plane per ``AIPLANE_HOME``: a second ``up`` on the same home refuses to start
instead of fighting the first over the same replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiplane import aio
from aiplane.aio import install_stop_signals, remove_stop_signals
from aiplane.api import AnyResource
from aiplane.engines import default_registry
from aiplane.errors import RuntimeFailure
from aiplane.gateway import Gateway, GatewayConfig, LoadTracker
from aiplane.observe.families import StateCollector
from aiplane.runtime.local.controller import EventSink, LocalController
from aiplane.runtime.local.gpus import discover
from aiplane.runtime.local.metrics import plane_families
from aiplane.runtime.local.paths import db_path, logs_dir
from aiplane.runtime.local.process import alive
from aiplane.runtime.local.shutdown import Watchdog
from aiplane.runtime.local.store import Store

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 5.0  # held and streaming requests get this long to finish
CONTROLLER_STOP_TIMEOUT = 5.0
# Past this, the watchdog kills the replicas and exits. The graceful phases fit well
# inside it: about a second when nothing hangs.
HARD_STOP_AFTER = 25.0


@dataclass
class PlaneOptions:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    resources: list[AnyResource] = field(default_factory=list)
    api_keys: frozenset[str] = frozenset()
    on_event: EventSink | None = None
    on_ready: Callable[[str], None] | None = None


def check_single_plane(store: Store) -> None:
    running = store.plane()
    if running and running[0] != os.getpid() and alive(running[0]):
        raise RuntimeFailure(
            f"a plane is already running (pid {running[0]}, {running[1]}) on this AIPLANE_HOME; "
            "stop it first, or set AIPLANE_HOME to run another"
        )


async def serve(
    options: PlaneOptions, stop: asyncio.Event | None = None, watchdog: Watchdog | None = None
) -> None:
    """Run the plane until ``stop`` is set or SIGTERM/SIGINT arrives.

    ``watchdog``, when given, is armed as the stop begins and left armed: its owner
    disarms it once the whole process has wound down.
    """
    store = Store(db_path(options.home))
    check_single_plane(store)
    for resource in options.resources:
        store.apply(resource)
    stop = stop or asyncio.Event()
    load = LoadTracker()
    controller = LocalController(
        store, default_registry(), load, discover(), logs_dir(options.home), options.host, options.on_event
    )
    if watchdog is not None:
        watchdog.watch(lambda: [*controller.supervisor.pids(), *controller.jobs.pids()])
    signals = install_stop_signals(stop, on_repeat=watchdog.fire if watchdog else None)
    gateway = Gateway(
        controller.discovery,
        load=load,
        config=GatewayConfig(api_keys=options.api_keys),
        engine_hint=controller.signals.engine_hint,
    )
    gateway.metrics.registry.register(StateCollector(lambda: plane_families(controller)))
    async with controller.supervisor, controller.jobs:
        await controller.adopt_or_replace()
        # Held or streaming requests get SHUTDOWN_GRACE to finish; then the plane stops anyway.
        # A client that hangs up cancels its handler, and so the replica's generation.
        async with aio.serve_app(
            gateway.app(),
            options.host,
            options.port,
            shutdown_timeout=SHUTDOWN_GRACE,
            cleanup_timeout=2 * SHUTDOWN_GRACE + 1,  # aiohttp: drain, then cancel
            handler_cancellation=True,
        ):
            address = f"http://{options.host}:{options.port}"
            store.claim_plane(os.getpid(), address)
            # embed and generate shards reach their Model through this gateway, on loopback
            loopback = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
            controller.jobs.gateway_url = f"http://{loopback}:{options.port}/v1"
            controller.jobs.api_key = min(options.api_keys) if options.api_keys else None
            if options.on_ready:
                options.on_ready(address)
            task = asyncio.create_task(controller.run(), name="controller")
            try:
                await stop.wait()
            finally:
                if watchdog is not None:
                    watchdog.arm()
                task.cancel()
                if (await asyncio.wait({task}, timeout=CONTROLLER_STOP_TIMEOUT))[1]:
                    log.warning("the controller did not stop within %gs", CONTROLLER_STOP_TIMEOUT)
        store.release_plane(os.getpid())
    remove_stop_signals(signals)


def run(options: PlaneOptions) -> None:
    """Blocking entry point; uses uvloop where it is installed."""
    watchdog = Watchdog(HARD_STOP_AFTER)
    try:
        aio.run(serve(options, watchdog=watchdog))
    finally:
        watchdog.disarm()  # asyncio's teardown (cancelling leftover tasks) is covered too
