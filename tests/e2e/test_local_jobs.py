"""Local TrainingJobs queue for GPUs, on a fake GPU inventory (this machine has no GPU).

``AIPLANE_FAKE_GPUS=2xH100`` is a fake NVML: it only says which GPUs exist. The
scheduling cycle (quota admission, gang placement with the ``aiplane`` scorer), the
processes with their ``CUDA_VISIBLE_DEVICES``, the Pending reason in SQLite, ``aiplane
get jobs`` and the events are the real code paths of a real ``aiplane up``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import write
from tests.e2e.plane import Plane

pytestmark = pytest.mark.e2e

WORKER = """\
import json, os, sys, time
start = time.time()
time.sleep(8)  # long enough that `aiplane get jobs` sees one waiting, even on a busy machine
record = {"devices": os.environ["CUDA_VISIBLE_DEVICES"], "rank": os.environ["RANK"],
          "world": os.environ["WORLD_SIZE"], "master": os.environ["MASTER_ADDR"],
          "port": os.environ["MASTER_PORT"], "start": start, "end": time.time()}
with open(sys.argv[1], "w") as out:
    json.dump(record, out)
"""

QUEUE = """\
apiVersion: aiplane.dev/v1alpha1
kind: Queue
metadata: {name: default}
spec: {quota: {"*": 4}}
"""


def job_yaml(name: str, script: Path, out: Path) -> str:
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  command: [{sys.executable}, {script}, {out / (name + ".json")}]
  workers: 1
  gpusPerWorker: 2
  env: {{PYTHONUNBUFFERED: "1"}}
"""


def cli(home: Path, *args: str) -> str:
    env = os.environ | {"AIPLANE_HOME": str(home), "COLUMNS": "250"}
    done = subprocess.run(
        [sys.executable, "-m", "aiplane.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(check, timeout: float = 60, what: str = ""):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise TimeoutError(what)


def test_two_jobs_wanting_four_gpus_of_two_run_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIPLANE_FAKE_GPUS", "2xH100")
    out = tmp_path / "out"
    out.mkdir()
    script = write(tmp_path, "worker.py", WORKER)
    # The plane starts with a Queue whose quota (4) admits both jobs: the GPUs (2) do not.
    plane = Plane(tmp_path, [write(tmp_path, "queue.yaml", QUEUE)]).start()
    try:
        jobs = write(
            tmp_path, "jobs.yaml", job_yaml("first", script, out) + "---\n" + job_yaml("second", script, out)
        )
        applied = cli(tmp_path, "apply", "-f", str(jobs))
        assert "trainingjob/first created" in applied and "trainingjob/second created" in applied

        def split() -> tuple[str, str] | None:
            rows = plane.store.job_statuses()
            phases = {name: row.phase for (_, name), row in rows.items()}
            if sorted(phases.values()) == ["Pending", "Running"]:
                running = next(n for n, p in phases.items() if p == "Running")
                return running, next(n for n in phases if n != running)
            return None

        running, waiting = wait_for(split, what=f"one Running, one Pending: {plane.store.job_statuses()}")
        rows = plane.store.job_statuses()
        assert rows[("TrainingJob", running)].devices == [[0, 1]]
        reason = rows[("TrainingJob", waiting)].reason
        quota = "queue default: 2 GPU fit its quota (quota 2/4 in use)"
        assert reason == f"{quota}; 0/1 nodes fit: 1 too few free GPUs", reason
        table = cli(tmp_path, "get", "jobs")
        line = next(ln for ln in table.splitlines() if f" {waiting} " in ln)
        assert "Pending" in line and "too few free GPUs" in line, table
        assert "Running" in next(ln for ln in table.splitlines() if f" {running} " in ln), table

        def both_done() -> bool:
            rows = plane.store.job_statuses()
            return len(rows) == 2 and all(r.phase in ("Succeeded", "Failed") for r in rows.values())

        wait_for(both_done, what=f"both jobs ended: {plane.store.job_statuses()}")
        rows = plane.store.job_statuses()
        assert {r.phase for r in rows.values()} == {"Succeeded"}, rows
        first, second = (json.loads((out / f"{n}.json").read_text()) for n in (running, waiting))
        assert first["devices"] == second["devices"] == "0,1"
        assert (first["rank"], first["world"], first["master"]) == ("0", "1", "127.0.0.1")
        assert second["start"] >= first["end"], "the second ran only after the first released its GPUs"
        # The Pending reason was evented once, when it appeared, not on every tick.
        events = plane.store.events(f"TrainingJob/{waiting}")
        assert [e[2] for e in events] == ["Unschedulable", "Started", "Succeeded"], events
        assert events[0][3] == reason
        assert "Succeeded" in cli(tmp_path, "get", "jobs")
        log = tmp_path / "logs" / "jobs" / f"trainingjob-{running}" / "worker-0.log"
        assert "aiplane: starting" in log.read_text()
    finally:
        plane.stop()
