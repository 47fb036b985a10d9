"""Validate an inference request body just enough to route it and to fail fast.

The engine validates the rest; the gateway checks what it needs (``model``) and what
every OpenAI endpoint requires, so a malformed body is a 400 before a cold start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiplane.gateway.errors import GatewayError
from aiplane.gateway.params import check_messages, check_parameters

REQUIRED: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "/v1/chat/completions": ("messages", list),
    "/v1/completions": ("prompt", (str, list)),
    "/v1/embeddings": ("input", (str, list)),
}
PREFIX_CHARS = 256


@dataclass(frozen=True)
class InferenceRequest:
    endpoint: str
    model: str
    stream: bool
    body: dict[str, Any]
    prefix: str


def parse_body(raw: bytes, endpoint: str) -> InferenceRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "'model' is required and must be a non-empty string", param="model")
    field, kind = REQUIRED[endpoint]
    value = body.get(field)
    if value is None:
        raise GatewayError(400, f"'{field}' is a required property", param=field)
    if not isinstance(value, kind) or (isinstance(value, list | str) and len(value) == 0):
        raise GatewayError(400, f"'{field}' must be a non-empty {_kind_name(kind)}", param=field)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError(400, "'stream' must be a boolean", param="stream")
    check_parameters(body)
    if field == "messages" and isinstance(value, list):
        check_messages(value)
    return InferenceRequest(endpoint, model, stream, body, _prefix(body, field))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if kind is list:
        return "array"
    return "string or array"


def _prefix(body: dict[str, Any], field: str) -> str:
    """The start of the prompt, which prefix-aware routing hashes."""
    value = body.get(field)
    if field == "messages" and isinstance(value, list):
        parts = [str(m.get("content", "")) for m in value if isinstance(m, dict)]
        return "\n".join(parts)[:PREFIX_CHARS]
    return str(value)[:PREFIX_CHARS]
