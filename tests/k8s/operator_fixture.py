"""The real operator as a subprocess against the dev cluster, plus kubectl helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aiplane.runtime.kubernetes.crds import all_crds
from tests.k8s.conftest import K8sCluster


def install_crds(cluster: K8sCluster) -> None:
    """Server-side apply of the CRDs: idempotent, shared by every test module."""
    text = yaml.safe_dump_all(all_crds())
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "apply", "--server-side", "--force-conflicts",
         "-f", "-"],
        input=text, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for crd in all_crds():
        wait = cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}")
        assert wait.returncode == 0, wait.stderr


@dataclass
class Operator:
    cluster: K8sCluster
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # e.g. AIPLANE_GATEWAY_METRICS for the autoscaler

    def start(self) -> Operator:
        log = self.log_dir / f"operator-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aiplane.cli.main",
                    "operator",
                    "--kubeconfig",
                    str(self.cluster.kubeconfig),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | self.env,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.logs if p.exists())


def kubectl_json(cluster: K8sCluster, *args: str) -> Any:
    out = cluster.kubectl(*args, "-o", "json")
    if out.returncode != 0:
        if "NotFound" in out.stderr or "not found" in out.stderr:
            return None
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return json.loads(out.stdout)


def apply_yaml(
    cluster: K8sCluster, text: str, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    args = ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    return subprocess.run(args, input=text, capture_output=True, text=True, timeout=60, check=False)


def wait_for(probe: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class SchedulerProcess:
    """``aiplane scheduler`` as a subprocess, with its /healthz and /metrics."""

    proc: subprocess.Popen[bytes]
    health: str
    log: Path
    stopped: bool = False

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.health + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> dict[str, float]:
        _, text = self.get("/metrics")
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line[:1] not in ("#", "")
        }

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_scheduler(cluster: K8sCluster, log_dir: Path, *args: str) -> SchedulerProcess:
    """Start ``aiplane scheduler`` (with ``args``) and wait until it answers /healthz."""
    address = f"127.0.0.1:{free_port()}"
    log = log_dir / f"scheduler-{address.rsplit(':', 1)[1]}.log"
    cmd = [sys.executable, "-m", "aiplane.cli.main", "scheduler", "--kubeconfig", str(cluster.kubeconfig),
           "--health-address", address, *args]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    sched = SchedulerProcess(proc, f"http://{address}", log)
    wait_for(lambda: sched.get("/healthz")[0] == 200 or proc.poll() is not None, 60, "scheduler /healthz")
    assert proc.poll() is None, sched.log_text()
    return sched


def live_pods_on(cluster: K8sCluster, node_prefix: str) -> list[str]:
    """``namespace/name@node`` of every bound, unfinished pod on nodes named ``node_prefix*``,
    from any test: what a test waits to be gone before it counts GPUs."""
    pods = kubectl_json(
        cluster,
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed",
    )
    return [
        f"{p['metadata']['namespace']}/{p['metadata']['name']}@{p['spec']['nodeName']}"
        for p in pods["items"]
        if p["spec"]["nodeName"].startswith(node_prefix)
    ]


@contextlib.contextmanager
def operator_and_scheduler(
    cluster: K8sCluster, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[Operator]:
    """The CRDs installed, the operator and aiplane's scheduler running (Model replicas
    name ``schedulerName: aiplane``), both stopped on exit: what a module that serves
    Models needs."""
    install_crds(cluster)
    op = Operator(cluster, log_dir, env=env or {}).start()
    scheduler = start_scheduler(cluster, log_dir)
    try:
        yield op
    finally:
        scheduler.stop()
        op.stop()
