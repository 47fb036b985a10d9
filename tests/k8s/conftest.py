"""Fixtures for the Kubernetes tier: one dev cluster (real control plane + KWOK) per session.

The binaries are built (or found) once after collection, outside any test's timeout, since
a cold build takes many minutes. If they cannot be had, every k8s test FAILS with the
reason: a missing cluster must never look like a pass.

The session fixture is synchronous on purpose: pytest-asyncio gives each test its own
event loop, so the fixture hands out a kubeconfig and a client *factory*, and each test
builds its client inside its own loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from aiplane.dev import DevClusterError
from aiplane.dev import cluster as dev_cluster
from aiplane.dev.k8s_build import ensure_binaries, ensure_helm

GPU_POOLS = ["4x8:H100", "2x8:A100"]
CPU_NODES = 2
_BUILD_ERROR = pytest.StashKey[str]()

T = TypeVar("T")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build or find the binaries before the first k8s test starts its timeout clock."""
    if not any(item.get_closest_marker("k8s") for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def log(msg: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[k8s] {msg}")

    try:
        ensure_binaries(log=log)
        ensure_helm(log=log)  # for the Helm chart test; a one-time ~1 min build
    except DevClusterError as e:
        session.config.stash[_BUILD_ERROR] = str(e)


@dataclass(frozen=True)
class K8sCluster:
    """What tests get: where the cluster is, and how to talk to it from their own loop."""

    dir: Path
    kubeconfig: Path
    server: str

    @asynccontextmanager
    async def client(self) -> AsyncIterator[client.ApiClient]:
        cfg = client.Configuration()
        await config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=cfg, persist_config=False
        )
        async with client.ApiClient(configuration=cfg) as api:
            yield api

    def kubectl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def k8s_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[K8sCluster]:
    if err := request.config.stash.get(_BUILD_ERROR, None):
        pytest.fail(f"Kubernetes binaries unavailable: {err}", pytrace=False)
    root = tmp_path_factory.mktemp("dev-cluster")
    try:
        info = dev_cluster.up(
            root,
            gpu_nodes=GPU_POOLS,
            cpu_nodes=CPU_NODES,
            bind_to_pid=os.getpid(),  # the supervisor stops everything if pytest dies
            build=False,
            log=lambda _: None,
        )
    except DevClusterError as e:
        pytest.fail(f"dev cluster did not start: {e}", pytrace=False)
    try:
        yield K8sCluster(info.dir, info.kubeconfig, info.server)
    finally:
        stopped = dev_cluster.down(root, log=lambda _: None)
        assert stopped, "down found no processes to stop"


@pytest.fixture
async def k8s_namespace(k8s_cluster: K8sCluster) -> AsyncIterator[str]:
    """A fresh namespace with its default service account; deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    async with k8s_cluster.client() as api:
        core = client.CoreV1Api(api)
        await core.create_namespace(obj({"metadata": {"name": name}}))

        async def sa() -> bool:
            try:
                await core.read_namespaced_service_account("default", name)
            except ApiException as e:
                if e.status == 404:
                    return False
                raise
            return True

        await eventually(sa, 15, f"default service account in {name}")
    yield name
    async with k8s_cluster.client() as api:
        try:
            await client.CoreV1Api(api).delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise


def obj(manifest: dict[str, Any]) -> Any:
    """Pass a plain-dict body: the client accepts it; its annotations only name V1* models."""
    return manifest


async def eventually(
    probe: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.25
) -> T:
    """Await `probe` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)
