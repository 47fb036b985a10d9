"""The engine registry: an explicit object built by a function, never mutated on import."""

from __future__ import annotations

from aiplane.engines.base import EngineAdapter
from aiplane.engines.custom import Custom
from aiplane.engines.embeddings import Embeddings
from aiplane.engines.llamacpp import LlamaCpp, LlamaCppPython
from aiplane.engines.servers import TGI, VLLM, SGLang
from aiplane.errors import EngineError


class EngineRegistry:
    def __init__(self) -> None:
        self._engines: dict[str, EngineAdapter] = {}

    def register(self, adapter: EngineAdapter) -> None:
        if adapter.name in self._engines:
            raise EngineError(f"engine {adapter.name!r} is registered twice")
        self._engines[adapter.name] = adapter

    def get(self, name: str) -> EngineAdapter:
        try:
            return self._engines[name]
        except KeyError:
            raise EngineError(
                f"unknown engine {name!r} (known: {', '.join(sorted(self._engines))})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._engines)


def default_registry() -> EngineRegistry:
    registry = EngineRegistry()
    for adapter in (LlamaCpp(), LlamaCppPython(), VLLM(), TGI(), SGLang(), Embeddings(), Custom()):
        registry.register(adapter)
    return registry
