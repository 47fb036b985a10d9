"""The dev cluster's supervisor: one detached process that owns every component.

`cluster up` starts it in a new session, so it and all components share one process
group; `cluster down` signals that group and nothing else. The supervisor restarts a
component that dies (with backoff), and stops everything when told to or when the
process it is bound to (the pytest session) goes away, so a killed test run cannot leak
an apiserver.

Run as ``python -m aiplane.dev.supervisor <cluster dir>``; it reads ``state.json``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from aiplane.dev.layout import SUPERVISOR, ClusterPaths, alive

POLL_S = 0.25
MAX_BACKOFF_S = 10.0
STOP_GRACE_S = 8.0
ETCD_WAIT_S = 15.0


@dataclass
class _Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    log: IO[bytes] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, paths: ClusterPaths, state: dict[str, Any]) -> None:
        self.paths = paths
        self.children = [_Child(c["name"], list(c["argv"])) for c in state["components"]]
        self.parent_pid: int | None = state.get("parent_pid")
        self.etcd_port: int = state["ports"]["etcd_client"]
        self.stopping = False
        self.out = paths.log(SUPERVISOR).open("a", buffering=1)

    def say(self, msg: str) -> None:
        self.out.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    def start(self, child: _Child) -> None:
        if child.log is None:
            child.log = self.paths.log(child.name).open("ab")
        child.proc = subprocess.Popen(
            child.argv,
            stdin=subprocess.DEVNULL,
            stdout=child.log,
            stderr=subprocess.STDOUT,
            cwd=self.paths.root,
        )
        self.paths.pid_file(child.name).write_text(f"{child.proc.pid}\n")
        self.say(f"started {child.name} pid={child.proc.pid} (restarts={child.restarts})")

    def wait_etcd(self) -> None:
        """Start the apiserver only once etcd accepts connections; saves its retry backoff."""
        deadline = time.monotonic() + ETCD_WAIT_S
        while time.monotonic() < deadline and not self.stopping:
            try:
                with socket.create_connection(("127.0.0.1", self.etcd_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)

    def run(self) -> int:
        self.paths.pid_file(SUPERVISOR).write_text(f"{os.getpid()}\n")
        for child in self.children:
            if self.stopping:
                break
            self.start(child)
            if child.name == "etcd":
                self.wait_etcd()
        while not self.stopping:
            time.sleep(POLL_S)
            if self.parent_pid and not alive(self.parent_pid):
                self.say(f"bound process {self.parent_pid} is gone; stopping")
                break
            now = time.monotonic()
            for child in self.children:
                if child.proc is None or child.proc.poll() is None:
                    continue
                if child.next_start == 0.0:
                    delay = min(MAX_BACKOFF_S, 0.5 * 2**child.restarts)
                    child.next_start = now + delay
                    self.say(f"{child.name} exited with {child.proc.returncode}; restart in {delay:.1f}s")
                elif now >= child.next_start:
                    child.restarts += 1
                    child.next_start = 0.0
                    self.start(child)
        self.stop()
        return 0

    def stop(self) -> None:
        """SIGTERM in reverse start order, SIGKILL whatever outlives the grace period."""
        running = [c for c in reversed(self.children) if c.proc and c.proc.poll() is None]
        for c in running:
            assert c.proc is not None
            c.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for c in running:
            assert c.proc is not None
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{c.name} ignored SIGTERM; killing")
                c.proc.kill()
                c.proc.wait(timeout=5)
        for c in self.children:
            self.paths.pid_file(c.name).unlink(missing_ok=True)
            if c.log:
                c.log.close()
        self.say("stopped")
        self.paths.pid_file(SUPERVISOR).unlink(missing_ok=True)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m aiplane.dev.supervisor <cluster dir>", file=sys.stderr)
        return 2
    paths = ClusterPaths(Path(argv[1]))
    sup = Supervisor(paths, json.loads(paths.state.read_text()))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, sup.on_signal)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
