"""The exception tree. Errors from libraries are mapped to these at the boundary.

::

    AiplaneError
    ├── ValidationError        a resource file or field is wrong (names file, doc, field)
    ├── NotFoundError          a named resource does not exist
    ├── EngineError            a model server could not be launched or configured
    │   └── SourceError        a model source (pkg://, file://, ...) cannot be resolved
    ├── RuntimeFailure         the local runtime could not do what was asked
    ├── KubernetesError        the API server refused or failed a request (status kept)
    ├── PrometheusError        a Prometheus query failed (unreachable, slow, not its API)
    └── PlaneNotRunning        a CLI command needs `aiplane up` running

The CLI prints ``str(error)`` for any ``AiplaneError`` and exits non-zero: no traceback.
"""

from __future__ import annotations


class AiplaneError(Exception):
    """Base of every error aiplane raises on purpose."""


class ValidationError(AiplaneError):
    """Input that does not match the resource API; the message is user-facing."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class NotFoundError(AiplaneError):
    """A resource named by the user does not exist."""


class EngineError(AiplaneError):
    """A model server adapter cannot build a launch for the given spec."""


class SourceError(EngineError):
    """A model source URI cannot be resolved to local files."""


class RuntimeFailure(AiplaneError):
    """The local runtime failed to act (spawn, port, store)."""


class KubernetesError(AiplaneError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class PrometheusError(AiplaneError):
    """Prometheus could not answer a query (unreachable, too slow, an error, or not its API)."""


class PlaneNotRunning(AiplaneError):
    """A command needs a running plane and found none."""
