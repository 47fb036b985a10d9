"""JSON schema export: the source the Kubernetes CRDs are generated from."""

from __future__ import annotations

from typing import Any

from aiplane.api.kinds import KINDS


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of one kind, by alias (the names users write in YAML)."""
    return KINDS[kind].model_json_schema(by_alias=True, mode="validation")


def all_schemas() -> dict[str, dict[str, Any]]:
    return {kind: json_schema(kind) for kind in KINDS}
