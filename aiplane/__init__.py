"""aiplane: an AI platform for Kubernetes and for one GPU machine.

One resource API (``aiplane.api``), pure policies (``aiplane.policies``) and three
bodies that act on their decisions: the local runtime, the Kubernetes runtime and
the simulator. See docs/architecture.md.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
