"""examples/train_tiny.py as two real DDP workers (gloo, CPU), started the way a runtime does.

No plane here: each test starts the ranks itself with the environment the local runtime
gives a TrainingJob's workers (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``/``MASTER_PORT``
on a free port, ``AIPLANE_CHECKPOINT_DIR``) and reads their progress lines. It checks
what a plane run (tests/e2e/test_local_training.py: the loss falls, a killed worker's
gang resumes from its checkpoint) does not: SIGTERM, to every rank or to one, makes all
ranks stop after the same step, with that step saved (docs/jobs.md).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiplane.progress import parse
from aiplane.runtime.local.process import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch (the 'train' extra)"),
]

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_tiny.py"
WORLD_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Gang:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def lines(self, rank: int) -> list[str]:
        return self.logs[rank].read_text(errors="replace").splitlines()

    def progress(self, rank: int = 0) -> list[dict[str, Any]]:
        return [fields for line in self.lines(rank) if (fields := parse(line))]

    def steps(self) -> list[dict[str, Any]]:
        return [p for p in self.progress() if "step" in p]

    def wait(self, timeout: float) -> list[int]:
        return [p.wait(timeout) for p in self.procs]

    def send(self, sig: int, ranks: tuple[int, ...] = (0, 1)) -> None:
        for rank in ranks:
            self.procs[rank].send_signal(sig)

    def why(self) -> str:
        return "\n".join(f"--- rank {r}:\n" + "\n".join(self.lines(r)[-15:]) for r in range(len(self.logs)))


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Gang]]:
    """Start the ranks of one gang: a fresh port per start, as the local runtime does."""
    started: list[subprocess.Popen[bytes]] = []
    runs = 0

    def start(*args: str, restart: int = 0, workers: int = 2) -> Gang:
        nonlocal runs
        runs += 1
        port = free_port()
        base = {k: v for k, v in os.environ.items() if k not in WORLD_KEYS and not k.startswith("AIPLANE_")}
        procs, logs = [], []
        for rank in range(workers):
            env = base | {
                "WORLD_SIZE": str(workers), "RANK": str(rank), "LOCAL_RANK": "0", "NODE_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1",
                "AIPLANE_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "AIPLANE_RESTART": str(restart),
            }  # fmt: skip
            log = tmp_path / f"run{runs}-worker-{rank}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, str(SCRIPT), *args], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                )  # fmt: skip
            procs.append(proc)
            logs.append(log)
        started.extend(procs)
        return Gang(procs, logs)

    yield start
    for proc in started:  # only the processes this test started, by pid
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_until(gang: Gang, what: str, done: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if any(p.poll() is not None for p in gang.procs):
            pytest.fail(f"a worker exited while waiting for {what}:\n{gang.why()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} in {timeout:g}s:\n{gang.why()}")
        time.sleep(0.1)


def checkpoints(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "ckpt").iterdir())


def newest_step(tmp_path: Path) -> int:
    return max(int(name[5:11]) for name in checkpoints(tmp_path) if name.endswith(".pt"))


@pytest.mark.parametrize("ranks", [(0, 1), (1,)], ids=["both-ranks", "rank-1-only"])
def test_sigterm_saves_the_current_step_and_exits(
    launch: Callable[..., Gang], tmp_path: Path, ranks: tuple[int, ...]
) -> None:
    """The runtime signals every worker; a pod may get it later than the others, so one is enough."""
    gang = launch("--step-delay", "0.05", "--checkpoint-every", "1000", "--sample", "0")
    wait_until(gang, "step 15", lambda: any(p["step"] >= 15 for p in gang.steps()))
    seen = gang.steps()[-1]["step"]
    gang.send(signal.SIGTERM, ranks)
    codes = gang.wait(15)  # well inside train-tiny.yaml's 30 s gracePeriod
    assert codes == [143, 143], gang.why()
    stopped = newest_step(tmp_path)
    assert seen <= stopped < 300
    assert checkpoints(tmp_path) == [f"step-{stopped:06d}.pt"]  # the only save: the one SIGTERM asked for
    last = gang.steps()[-1]
    assert last["step"] == last["checkpoint_step"] == stopped
    for rank in (0, 1):
        assert f"stopping after step {stopped}" in "\n".join(gang.lines(rank)), gang.why()
