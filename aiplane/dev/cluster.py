"""`aiplane dev cluster up|down|status`: a real control plane on 127.0.0.1 with KWOK nodes.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the KWOK controller run
as children of one detached supervisor (see `supervisor`). Everything listens on loopback
only, on free ports picked at first start and kept for later starts, so a kubeconfig
handed out stays valid. The cluster directory holds state, PKI, etcd data, logs and pids.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiplane
from aiplane.dev import DevClusterError
from aiplane.dev import kwok_nodes as kn
from aiplane.dev.apiclient import KubeApi
from aiplane.dev.k8s_build import Binary, Versions, ensure_binaries
from aiplane.dev.layout import (
    COMPONENTS,
    SUPERVISOR,
    ClusterPaths,
    alive,
    cmdline,
    default_cluster_dir,
    group_members,
    owned_pid,
    read_pid,
)
from aiplane.dev.network import FIRST_POD_IP, POD_CIDR
from aiplane.dev.pki import Pki, ensure_pki, kubeconfig
from aiplane.dev.storage import apply_storage

DEFAULT_GPU_NODES = ("4x8:H100",)
DEFAULT_CPU_NODES = 2
UP_TIMEOUT_S = 60.0
DOWN_TIMEOUT_S = 15.0
SERVICE_CIDR = "10.96.0.0/16"
PORT_NAMES = ("etcd_client", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok")

Log = Callable[[str], None]


@dataclass(frozen=True)
class ClusterInfo:
    dir: Path
    kubeconfig: Path
    server: str
    nodes: int
    seconds: float
    already_running: bool = False

    @property
    def kubectl(self) -> str:
        return f"kubectl --kubeconfig {self.kubeconfig}"


@dataclass(frozen=True)
class ClusterStatus:
    dir: Path
    pids: dict[str, int | None]  # supervisor and each component; None = not running
    server: str | None
    ready: bool  # apiserver /readyz
    nodes_ready: int
    nodes_total: int

    @property
    def running(self) -> bool:
        return self.pids.get(SUPERVISOR) is not None


def resolve_dir(directory: Path | str | None) -> ClusterPaths:
    return ClusterPaths(Path(directory or default_cluster_dir()).expanduser().resolve())


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def component_argv(
    bins: dict[str, Binary], paths: ClusterPaths, pki: Pki, ports: dict[str, int]
) -> list[dict[str, Any]]:
    """Command lines, in start order; flags chosen for a fast, loopback-only dev cluster."""
    kc = str(paths.kubeconfig)
    etcd_url = f"http://127.0.0.1:{ports['etcd_client']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    delegated = [f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"]
    return [
        {
            "name": "etcd",
            "argv": [
                str(bins["etcd"].path),
                "--name=aiplane",
                f"--data-dir={paths.etcd_data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=aiplane={peer_url}",
                "--unsafe-no-fsync",  # throwaway data; fsync dominates latency on shared disks
                "--log-level=warn",
            ],
        },
        {
            "name": "kube-apiserver",
            "argv": [
                str(bins["kube-apiserver"].path),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={pki.server_crt}",
                f"--tls-private-key-file={pki.server_key}",
                f"--client-ca-file={pki.ca_crt}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # No kubelet or pod network: nothing could reach a loopback endpoint anyway.
                "--endpoint-reconciler-type=none",
                # KWOK's nodes name their "kubelet" (KWOK's server) by InternalIP (loopback);
                # their Hostname (cpu-0, gpu-h100-0) resolves nowhere. For pods/log and exec.
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
            ],
        },
        {
            "name": "kube-controller-manager",
            "argv": [
                str(bins["kube-controller-manager"].path),
                f"--kubeconfig={kc}",
                *delegated,
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller_manager']}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                f"--cluster-signing-cert-file={pki.ca_crt}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--profiling=false",
            ],
        },
        {
            "name": "kube-scheduler",
            "argv": [
                str(bins["kube-scheduler"].path),
                f"--kubeconfig={kc}",
                *delegated,
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        },
        {
            "name": "kwok",
            "argv": [
                str(bins["kwok"].path),
                f"--kubeconfig={kc}",
                f"--config={paths.kwok_config}",
            ],
        },
    ]


def up(
    directory: Path | str | None = None,
    *,
    gpu_nodes: list[str] | None = None,
    cpu_nodes: int | None = None,
    bind_to_pid: int | None = None,
    timeout: float = UP_TIMEOUT_S,
    build: bool = True,
    log: Log = print,
) -> ClusterInfo:
    """Start the cluster (or adopt a running one) and make its node fleet match the request.

    Without node options the previous fleet of this directory is kept, else a default one.
    `bind_to_pid` makes the supervisor stop everything when that process exits (tests).
    On any failure, whatever this call started is stopped again.
    """
    t0 = time.monotonic()
    paths = resolve_dir(directory)
    for d in (paths.root, paths.logs, paths.pids):
        d.mkdir(parents=True, exist_ok=True)
    state = json.loads(paths.state.read_text()) if paths.state.exists() else {}
    fleet = state.get("fleet", {})
    gpu = list(gpu_nodes) if gpu_nodes else fleet.get("gpu_nodes", list(DEFAULT_GPU_NODES))
    cpu = cpu_nodes if cpu_nodes is not None else fleet.get("cpu_nodes", DEFAULT_CPU_NODES)
    nodes = kn.fleet(gpu, cpu)  # validate the specs before starting anything
    pki = ensure_pki(paths.pki)

    proc: subprocess.Popen[bytes] | None = None
    if owned_pid(paths, SUPERVISOR) is not None:
        log(f"dev cluster already running in {paths.root}")
    else:
        bins = ensure_binaries(Versions(), build=build, log=log)
        state = _write_state(paths, pki, bins, state.get("ports", {}), bind_to_pid)
        log(f"starting etcd, kube-apiserver, controller-manager, scheduler, kwok in {paths.root}")
        proc = _spawn_supervisor(paths)

    def sup_alive() -> bool:  # a fresh supervisor may not have written its pid file yet
        return proc.poll() is None if proc else owned_pid(paths, SUPERVISOR) is not None

    api = KubeApi(state["server"], pki)
    deadline = t0 + timeout
    try:
        _wait(lambda: api.get("/readyz").ok, deadline, "kube-apiserver /readyz", paths, sup_alive)
        state["fleet"] = {"gpu_nodes": gpu, "cpu_nodes": cpu}
        paths.state.write_text(json.dumps(state, indent=2) + "\n")
        apply_nodes(api, nodes)
        apply_storage(api)
        apply_kwok_crds(api)
        names = {n["metadata"]["name"] for n in nodes}
        what = f"{len(names)} KWOK nodes Ready"
        _wait(lambda: _nodes_ready(api) >= names, deadline, what, paths, sup_alive)
        sa = "/api/v1/namespaces/default/serviceaccounts/default"
        _wait(lambda: api.get(sa).ok, deadline, "the default service account", paths, sup_alive)
        if (why := endpoint_ip_rejection(api)) is not None:
            log(
                f"warning: this kube-apiserver rejects pod IPs ({POD_CIDR}) in EndpointSlices, so "
                f"Services get no endpoints (it is not the dev build, which allows them): {why}"
            )
    except BaseException:
        if proc is not None:
            _kill_group(proc)
            down(paths.root, log=lambda _: None)
        raise
    seconds = time.monotonic() - t0
    return ClusterInfo(paths.root, paths.kubeconfig, state["server"], len(nodes), seconds, not proc)


def _write_state(
    paths: ClusterPaths,
    pki: Pki,
    bins: dict[str, Binary],
    old_ports: dict[str, int],
    bind_to_pid: int | None,
) -> dict[str, Any]:
    """Pick ports (the previous ones if still free), write kubeconfig, kwok config, state."""
    if set(old_ports) == set(PORT_NAMES) and all(_port_free(p) for p in old_ports.values()):
        ports = dict(old_ports)
    else:
        ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    server = f"https://127.0.0.1:{ports['apiserver']}"
    paths.kubeconfig.write_text(kubeconfig(pki, server))
    paths.kubeconfig.chmod(0o600)
    paths.kwok_config.write_text(kn.kwok_config(ports["kwok"]))
    state = {
        "server": server,
        "ports": ports,
        "parent_pid": bind_to_pid,
        "binaries": {b.name: str(b.path) for b in bins.values()},
        "components": component_argv(bins, paths, pki, ports),
    }
    paths.state.write_text(json.dumps(state, indent=2) + "\n")
    for name in (SUPERVISOR, *COMPONENTS):
        paths.pid_file(name).unlink(missing_ok=True)
    return state


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a supervisor this process spawned, and its group, even before its pid file exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=DOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _spawn_supervisor(paths: ClusterPaths) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    pkg_parent = str(Path(aiplane.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    with paths.log("supervisor.out").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aiplane.dev.supervisor", str(paths.root)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            env=env,
            start_new_session=True,  # own process group: `down` signals exactly this group
        )


def endpoint_ip_rejection(api: KubeApi, address: str = FIRST_POD_IP) -> str | None:
    """None if the apiserver takes `address` in an EndpointSlice (a dry run), else its answer.

    Upstream rejects every loopback address there; the dev build of kube-apiserver takes
    the dev pod range (k8s_build.APISERVER_PATCH). Reused binaries may be upstream's.
    """
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"generateName": "aiplane-dev-probe-"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address]}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    r = api.post("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?dryRun=All", body)
    if r.ok:
        return None
    return str(r.body.get("message") if isinstance(r.body, dict) else r.body) or f"HTTP {r.status}"


def _nodes_ready(api: KubeApi) -> set[str]:
    r = api.get("/api/v1/nodes?labelSelector=type%3Dkwok")
    if not r.ok:
        return set()
    ready = set()
    for n in r.body.get("items", []):
        conds = n.get("status", {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            ready.add(n["metadata"]["name"])
    return ready


def _wait(
    cond: Callable[[], bool],
    deadline: float,
    what: str,
    paths: ClusterPaths,
    sup_alive: Callable[[], bool],
) -> None:
    """Poll `cond` until the deadline; on failure, say which component died and its log."""
    while True:
        if cond():
            return
        dead = [c for c in COMPONENTS if not _component_alive(paths, c)]
        if not sup_alive():
            logs = _tails(paths, ["supervisor.out", SUPERVISOR])
            raise DevClusterError(f"the supervisor exited while waiting for {what}\n{logs}")
        if time.monotonic() > deadline:
            detail = _tails(paths, dead or ["kube-apiserver"])
            raise DevClusterError(f"timed out waiting for {what}; logs in {paths.logs}\n{detail}")
        time.sleep(0.2)


def _component_alive(paths: ClusterPaths, name: str) -> bool:
    return owned_pid(paths, name) is not None


def _tails(paths: ClusterPaths, names: list[str], lines: int = 12) -> str:
    out = []
    for name in names:
        p = paths.log(name)
        if p.exists():
            text = p.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {p} ---\n" + "\n".join(text))
    return "\n".join(out)


def apply_nodes(api: KubeApi, nodes: list[dict[str, Any]]) -> None:
    """Make the KWOK nodes exactly `nodes`: create missing, recreate changed, delete extra."""
    r = api.get("/api/v1/nodes?labelSelector=type%3Dkwok")
    if not r.ok:
        raise DevClusterError(f"cannot list nodes: {r.status} {r.body}")
    existing = {n["metadata"]["name"]: n for n in r.body.get("items", [])}
    wanted = {n["metadata"]["name"]: n for n in nodes}
    for name in existing.keys() - wanted.keys():
        api.delete(f"/api/v1/nodes/{name}")
    for name, node in wanted.items():
        have = existing.get(name)
        if have is not None:
            if _same_shape(have, node):
                continue
            api.delete(f"/api/v1/nodes/{name}")
        r = api.post("/api/v1/nodes", node)
        if not r.ok:
            raise DevClusterError(f"cannot create node {name}: {r.status} {r.body}")


def apply_kwok_crds(api: KubeApi) -> None:
    """Create KWOK's ``Logs`` CRD if missing (KWOK watches it; it retries until it exists)."""
    crd = kn.logs_crd()
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    if api.get(f"{base}/{crd['metadata']['name']}").ok:
        return
    r = api.post(base, crd)
    if not r.ok and r.status != 409:
        raise DevClusterError(f"cannot create the {crd['metadata']['name']} CRD: {r.status} {r.body}")


def _same_shape(have: dict[str, Any], want: dict[str, Any]) -> bool:
    labels = have["metadata"].get("labels", {})
    same_labels = all(labels.get(k) == v for k, v in want["metadata"]["labels"].items())
    taints = [(t["key"], t.get("value"), t["effect"]) for t in have["spec"].get("taints", [])]
    want_taints = [(t["key"], t.get("value"), t["effect"]) for t in want["spec"].get("taints", [])]
    capacity = have.get("status", {}).get("capacity", {})
    same_cap = all(capacity.get(k) == v for k, v in want["status"]["capacity"].items())
    return same_labels and sorted(taints) == sorted(want_taints) and same_cap


def down(directory: Path | str | None = None, *, purge: bool = False, log: Log = print) -> list[int]:
    """Stop every process of the cluster; return the pids that were signalled.

    SIGTERM to the supervisor lets it stop components in order; after DOWN_TIMEOUT_S the
    whole process group gets SIGKILL. Only processes whose command line names this
    cluster directory are touched.
    """
    paths = resolve_dir(directory)
    root = str(paths.root)
    sup = read_pid(paths.pid_file(SUPERVISOR))
    ours = [p for p in (group_members(sup) if sup else []) if root in cmdline(p)]
    for name in COMPONENTS:
        pid = owned_pid(paths, name)
        if pid is not None and pid not in ours:
            ours.append(pid)
    if sup is not None and owned_pid(paths, SUPERVISOR) == sup:
        os.kill(sup, signal.SIGTERM)
    else:
        for pid in ours:
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while time.monotonic() < deadline and any(alive(p) for p in ours):
        time.sleep(0.1)
    for pid in ours:
        if alive(pid):
            log(f"pid {pid} ignored SIGTERM; killing")
            _signal(pid, signal.SIGKILL)
    for name in (SUPERVISOR, *COMPONENTS):
        paths.pid_file(name).unlink(missing_ok=True)
    if purge and paths.root.exists():
        shutil.rmtree(paths.root)
    if ours:
        log(f"stopped {len(ours)} processes of {root}")
    else:
        log(f"no dev cluster running in {root}")
    return ours


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def status(directory: Path | str | None = None) -> ClusterStatus:
    paths = resolve_dir(directory)
    pids = {name: owned_pid(paths, name) for name in (SUPERVISOR, *COMPONENTS)}
    server = None
    ready = False
    nodes_ready = nodes_total = 0
    state = json.loads(paths.state.read_text()) if paths.state.exists() else {}
    if pids[SUPERVISOR] is not None and state and Pki(paths.pki).complete():
        server = state["server"]
        api = KubeApi(server, Pki(paths.pki), timeout=3.0)
        ready = api.get("/readyz").ok
        if ready:
            r = api.get("/api/v1/nodes?labelSelector=type%3Dkwok")
            nodes_total = len(r.body.get("items", [])) if r.ok else 0
            nodes_ready = len(_nodes_ready(api))
    return ClusterStatus(paths.root, pids, server, ready, nodes_ready, nodes_total)
