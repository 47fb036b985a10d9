"""Every example file parses: the examples are the documentation users copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiplane.api import Model, load_file
from aiplane.engines import default_registry, resolve_local

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses_and_lowers(path: Path) -> None:
    resources = load_file(path)
    assert resources
    engines = default_registry()
    for res in resources:
        if isinstance(res, Model):
            launch = engines.get(res.spec.engine).container(res, "/models/x")
            assert launch.image and launch.port > 0


def test_local_examples_resolve_to_installed_files() -> None:
    for name in ("smollm2.yaml", "embeddings.yaml"):
        (model,) = load_file(EXAMPLES[0].parent / name)
        assert isinstance(model, Model)
        assert resolve_local(model.spec.source).stat().st_size > 1_000_000
