"""``examples/train-tiny.yaml`` on a real ``aiplane up``: DDP on gloo, a killed worker, a resume.

Two workers train the example's character transformer with real PyTorch. Once the
job has saved a checkpoint, worker 1 is SIGKILLed: the runtime stops worker 0,
restarts the gang, and the new run resumes from the last checkpoint, not from step 0.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from aiplane import progress
from aiplane.runtime.local.store import JobStatusRow
from tests.e2e.plane import Plane

pytestmark = pytest.mark.e2e
pytest.importorskip("torch", reason="the train extra (make install) brings torch")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train-tiny.yaml"


def wait_row(plane: Plane, done: object, timeout: float) -> JobStatusRow:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = plane.store.job_statuses().get(("TrainingJob", "train-tiny"))
        if row is not None and done(row):  # type: ignore[operator]
            return row
        if row is not None and row.phase == "Failed":
            raise AssertionError(f"train-tiny failed: {row.reason}")
        time.sleep(0.1)
    raise TimeoutError(f"train-tiny: {row}\n{plane.log_text()}")


def test_train_tiny_resumes_from_its_checkpoint_after_a_worker_is_killed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    plane = Plane(home, [EXAMPLE], cwd=ROOT).start()  # the example's paths are the repository's
    try:
        row = wait_row(plane, lambda r: r.progress.get("checkpoint_step", 0) >= 50 and len(r.pids) == 2, 120)
        assert row.phase == "Running" and row.restarts == 0
        saved = row.progress["checkpoint_step"]
        os.kill(row.pids[1], signal.SIGKILL)  # worker 1, mid-run
        row = wait_row(plane, lambda r: r.phase == "Succeeded", 180)
        logs = plane.cli("logs", "trainingjob/train-tiny", "--tail", "400").stdout
    finally:
        plane.stop()
    assert row.restarts == 1
    resumed = row.progress["resumed_from"]
    assert resumed >= saved > 0, "the restart resumed from a checkpoint, not from step 0"
    assert row.progress["step"] == row.progress["total_steps"] == 300
    events = [(r, m) for _, ref, r, m in plane.store.events(limit=200) if ref == "TrainingJob/train-tiny"]
    assert [r for r, _ in events if r in ("Started", "Restarting", "Succeeded")] == [
        "Started",
        "Restarting",
        "Succeeded",
    ]
    # worker 1 was killed; worker 0 may fail first on its own ("Connection reset by peer")
    assert re.match(r"worker [01] exited with code", next(m for r, m in events if r == "Restarting"))
    # rank 0's progress lines, run by run: the loss falls, and the second run begins right
    # after the checkpoint it resumed from
    worker0 = home / "logs" / "jobs" / "trainingjob-train-tiny" / "worker-0.log"
    runs = worker0.read_text().split("--- aiplane: starting TrainingJob/train-tiny worker 0")[1:]
    assert len(runs) == 2, "one start and one restart"
    first, second = ([f for f in map(progress.parse, r.splitlines()) if f and "loss" in f] for r in runs)
    assert first[0]["step"] == 1 and first[-1]["step"] >= saved
    assert second[0]["step"] == resumed + 1 and second[-1]["step"] == 300
    assert second[-1]["loss"] < 0.6 * first[0]["loss"]
    checkpoints = sorted(p.name for p in (home / "checkpoints" / "train-tiny" / "train-tiny").iterdir())
    assert checkpoints[-1] == "step-000300.pt" and not [c for c in checkpoints if c.endswith(".tmp")]
    assert "[worker-0]" in logs and "[worker-1]" in logs  # aiplane logs follows both workers
