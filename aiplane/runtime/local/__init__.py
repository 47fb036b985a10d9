"""The local runtime: supervised processes, CUDA_VISIBLE_DEVICES, state in SQLite."""

from aiplane.runtime.local.plane import PlaneOptions, run, serve
from aiplane.runtime.local.store import Store

__all__ = ["PlaneOptions", "Store", "run", "serve"]
