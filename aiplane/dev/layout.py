"""Where a dev cluster keeps its files, and how its processes are recognised.

Shared by `cluster` (which writes state and starts the supervisor) and `supervisor` (which
reads state and runs the components), so neither imports the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from aiplane import procs
from aiplane.procs import alive

SUPERVISOR = "supervisor"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def aiplane_home() -> Path:
    """``$AIPLANE_HOME``, defaulting to ``~/.local/share/aiplane``."""
    env = os.environ.get("AIPLANE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "aiplane"


def default_cluster_dir() -> Path:
    return aiplane_home() / "dev-cluster"


@dataclass(frozen=True)
class ClusterPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def kwok_config(self) -> Path:
        return self.root / "kwok.yaml"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    return " ".join(procs.cmdline(pid))


def owned_pid(paths: ClusterPaths, name: str) -> int | None:
    """The live pid recorded for `name`, only if its command line points into this cluster.

    Guards against a stale pid file whose number the kernel has since given to some
    unrelated process: we never signal a process we cannot prove is ours.
    """
    pid = read_pid(paths.pid_file(name))
    if pid is None or not alive(pid):
        return None
    cmd = cmdline(pid)
    if cmd and str(paths.root) not in cmd:
        return None
    return pid


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is `pgid` (from /proc; empty without procfs)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out
