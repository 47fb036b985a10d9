from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.plane import Plane, assert_gone, model_yaml


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def warm_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """One plane with one warm SmolLM2 replica, shared by a module's tests."""
    home = tmp_path_factory.mktemp("plane")
    plane = Plane(home, [write(home, "m.yaml", model_yaml(min_replicas=1, max_replicas=1))]).start()
    plane.wait_replicas("smollm2", 1)
    yield plane
    pids = [r.pid for r in plane.replicas() if r.pid]
    plane.stop()
    assert_gone(pids)
