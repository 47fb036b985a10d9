"""GPU discovery through NVML (nvidia-ml-py), with a clean fallback to no GPUs.

``AIPLANE_FAKE_GPUS`` (e.g. ``2xH100,1xA100``) declares a fake inventory: a faithful
stand-in for NVML on machines without GPUs, used by tests of CUDA_VISIBLE_DEVICES
assignment. It is named as fake wherever it shows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

from aiplane.policies.scheduling import Gpu

log = logging.getLogger(__name__)
_FAKE_RE = re.compile(r"^\s*(\d+)x([\w.-]+)\s*$")


def _fake(spec: str) -> list[Gpu]:
    gpus: list[Gpu] = []
    for part in spec.split(","):
        match = _FAKE_RE.match(part)
        if not match:
            raise ValueError(f"AIPLANE_FAKE_GPUS: expected e.g. 2xH100,1xA100 (got {part!r})")
        for _ in range(int(match.group(1))):
            gpus.append(Gpu(len(gpus), f"fake-{match.group(2)}", 0))
    return gpus


def discover() -> list[Gpu]:
    """The GPUs of this machine; [] when there is no driver, no device or no NVML."""
    fake = os.environ.get("AIPLANE_FAKE_GPUS")
    if fake:
        return _fake(fake)
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver: run on CPU
        log.info("no NVIDIA GPUs (NVML unavailable: %s); replicas run on CPU", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            gpus.append(Gpu(index, name, int(memory)))
        return gpus
    except Exception as exc:
        log.warning("NVML failed while listing GPUs (%s); replicas run on CPU", exc)
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def visible_devices_env(devices: tuple[int, ...]) -> dict[str, str]:
    """The environment that confines a process to its devices ('' hides every GPU)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}
