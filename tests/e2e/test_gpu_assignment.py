"""CUDA_VISIBLE_DEVICES assignment, on a fake GPU inventory (this machine has no GPU).

``AIPLANE_FAKE_GPUS`` stands in for NVML only; placement, the environment given to the
real llama.cpp processes and the Unschedulable status are the real code paths.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import write
from tests.e2e.plane import Plane, model_yaml

pytestmark = pytest.mark.e2e


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def with_gpus(name: str, gpus: str, gpu_model: str | None = None) -> str:
    extra = f", gpuModel: {gpu_model}" if gpu_model else ""
    return model_yaml(name, min_replicas=1, max_replicas=1).replace(
        "  replicas:", f"  resources: {{gpus: {gpus}{extra}}}\n  replicas:"
    )


def test_gpus_assigned_with_cuda_visible_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLANE_FAKE_GPUS", "2xH100")
    files = [
        write(tmp_path, "a.yaml", with_gpus("whole", "1")),
        write(tmp_path, "b.yaml", with_gpus("half-a", "0.5")),
        write(tmp_path, "c.yaml", with_gpus("half-b", "0.5")),
        write(tmp_path, "d.yaml", with_gpus("cpu", "0")),
        write(tmp_path, "e.yaml", with_gpus("wrong-model", "1", "A100")),
    ]
    plane = Plane(tmp_path, files).start()
    try:
        devices = {}
        for name in ("whole", "half-a", "half-b", "cpu"):
            (row,) = plane.wait_replicas(name, 1)
            assert row.pid
            devices[name] = environ(row.pid)["CUDA_VISIBLE_DEVICES"]
        assert devices["cpu"] == "", "a CPU replica sees no GPU"
        # The whole GPU and the two halves never share; the halves pack onto one GPU.
        assert devices["half-a"] == devices["half-b"]
        assert {devices["whole"], devices["half-a"]} == {"0", "1"}
        deadline = time.monotonic() + 10
        reasons: list[str] = []
        while time.monotonic() < deadline and not reasons:
            reasons = [e[3] for e in plane.store.events("Model/wrong-model") if e[2] == "Unschedulable"]
            time.sleep(0.1)
        assert reasons and "A100" in reasons[0] and "fake-H100" in reasons[0]
        assert plane.replicas("wrong-model") == []
        assert plane.store.statuses()["wrong-model"].reason.startswith("Pending:")
        time.sleep(1.0)  # several reconcile ticks: still one event, not one per tick
        unschedulable = [e for e in plane.store.events("Model/wrong-model") if e[2] == "Unschedulable"]
        assert len(unschedulable) == 1
    finally:
        plane.stop()
        os.environ.pop("AIPLANE_FAKE_GPUS", None)
