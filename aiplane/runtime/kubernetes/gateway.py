"""``aiplane gateway`` on Kubernetes: the same OpenAI gateway, routes from the cluster.

The gateway app is :class:`aiplane.gateway.Gateway`, unchanged; only its Discovery
differs (:class:`KubernetesDiscovery`, which also scrapes the engine hints the routers
weigh). The discovery's poller and scraper live exactly as long as the app (an aiohttp
cleanup context), so tests that serve :func:`build_app` in process run what the
Deployment runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from aiplane import aio
from aiplane.aio import install_stop_signals, remove_stop_signals
from aiplane.errors import AiplaneError
from aiplane.gateway import Gateway, GatewayConfig
from aiplane.gateway.auth import load_keys
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.discovery import KubernetesDiscovery

log = logging.getLogger(__name__)


def build_app(discovery: KubernetesDiscovery, api_keys: frozenset[str] = frozenset()) -> web.Application:
    """The gateway app with the discovery poller started on startup and stopped on cleanup.

    The routers read each pod's engine queue and KV use from the discovery's scrape."""
    gateway = Gateway(discovery, config=GatewayConfig(api_keys=api_keys), engine_hint=discovery.engine_hint)
    app = gateway.app()

    async def poller(_: web.Application) -> AsyncIterator[None]:
        async with discovery.running():
            yield

    app.cleanup_ctx.append(poller)
    return app


async def serve(
    host: str,
    port: int,
    kubeconfig: str | None,
    namespace: str | None,
    api_key_file: str | None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; in-flight requests then finish."""
    try:
        keys = load_keys(api_key_file)
    except OSError as exc:
        raise AiplaneError(f"cannot read API keys from {exc.filename}: {exc.strerror}") from exc
    stop = stop or asyncio.Event()
    signals = install_stop_signals(stop)
    try:
        async with Kube.connect(kubeconfig) as kube:
            discovery = KubernetesDiscovery(kube, namespace)
            # The first refresh runs at setup: it fails here on bad credentials or RBAC.
            async with aio.serve_app(build_app(discovery, keys), host, port, handler_cancellation=True):
                scope = f"namespace {namespace}" if namespace else "all namespaces"
                log.info("gateway on http://%s:%d, routing Models in %s", host, port, scope)
                await stop.wait()
    finally:
        remove_stop_signals(signals)


def run_gateway(
    host: str, port: int, kubeconfig: str | None, namespace: str | None, api_key_file: str | None
) -> None:
    """Blocking entry point for ``aiplane gateway``; uses uvloop where it is installed.

    ``kubeconfig=None`` means in-cluster credentials, else the default kubeconfig;
    ``namespace=None`` routes Models of every namespace. Raises an
    :class:`~aiplane.errors.AiplaneError` (one line for the CLI) when it cannot start.
    """
    aio.run(serve(host, port, kubeconfig, namespace, api_key_file))
