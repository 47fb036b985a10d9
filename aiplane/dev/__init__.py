"""Developer tooling: a real Kubernetes control plane built from Go modules, with KWOK nodes.

Nothing here is imported by the runtimes; the CLI (`aiplane dev ...`) and the k8s test
tier use it to get a cluster without Docker, kind or downloads from dl.k8s.io.
"""

from __future__ import annotations

from aiplane.errors import AiplaneError


class DevClusterError(AiplaneError):
    """The dev control plane cannot be built, started or reached; the message says why."""


__all__ = ["DevClusterError"]
