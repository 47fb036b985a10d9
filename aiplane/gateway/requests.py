"""Validate an inference request body just enough to route it and to fail fast, then shape
what reaches the engine.

The engine validates the rest; the gateway checks what it needs (``model``), what every
OpenAI endpoint requires and the shapes engines answer badly (a 500, a hang), so a
malformed body is a 400 before a cold start. ``shape_for`` then applies what the route
knows: its default ``max_tokens``, its context length, whether its engine can give
``n > 1`` choices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from aiplane.gateway.discovery import ModelRoute
from aiplane.gateway.messages import check_messages, check_prompt, text_of
from aiplane.gateway.params import check_parameters, max_depth
from aiplane.openai_errors import OpenAIError

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
REQUIRED: dict[str, tuple[str, type | tuple[type, ...]]] = {
    CHAT: ("messages", list),
    COMPLETIONS: ("prompt", (str, list)),
    "/v1/embeddings": ("input", (str, list)),
}
GENERATING = frozenset({CHAT, COMPLETIONS})
PREFIX_CHARS = 256
# About 128 tokens of English per block; 64 blocks bound the hashing to 32 KiB of prompt.
BLOCK_CHARS = 512
MAX_BLOCKS = 64
MAX_DEPTH = 100  # OpenAI allows 10 levels of nesting in a schema; engines' parsers recurse


@dataclass(frozen=True)
class InferenceRequest:
    endpoint: str
    model: str
    stream: bool
    body: dict[str, Any]  # as the client sent it, minus parameters given as null
    prefix: str
    blocks: tuple[int, ...] = ()  # chained hashes of the prompt's blocks, for prefix-cache routing

    @property
    def include_usage(self) -> bool:
        """The client asked for the usage chunk at the end of its stream."""
        options = self.body.get("stream_options")
        return self.stream and isinstance(options, dict) and options.get("include_usage") is True


def parse_body(raw: bytes, endpoint: str) -> InferenceRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    if max_depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise _too_deep()
    body = {name: value for name, value in body.items() if value is not None}  # null means absent
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "'model' is required and must be a non-empty string", param="model")
    field, kind = REQUIRED[endpoint]
    value = body.get(field)
    if value is None:
        raise OpenAIError(400, f"'{field}' is a required property", param=field)
    if not isinstance(value, kind) or (isinstance(value, list | str) and len(value) == 0):
        raise OpenAIError(400, f"'{field}' must be a non-empty {_kind_name(kind)}", param=field)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise OpenAIError(400, "'stream' must be a boolean", param="stream")
    check_parameters(body)
    if field == "messages" and isinstance(value, list):
        check_messages(value)
    elif endpoint == COMPLETIONS:
        check_prompt(value)
    text = _prompt_text(body, field)
    return InferenceRequest(endpoint, model, stream, body, text[:PREFIX_CHARS], prompt_blocks(text))


def shape_for(inference: InferenceRequest, route: ModelRoute) -> bytes:
    """The body to forward to ``route``'s engine; a 400 for what the route cannot serve.

    ``max_tokens`` is set to the route's default when the client gives none (an engine's
    own default may be unbounded) and to ``max_completion_tokens`` when that is given
    (llama.cpp knows only ``max_tokens``). A streaming request always asks the engine
    for usage, which the stream proxy passes on only to clients that asked for it.
    """
    body = dict(inference.body)
    if inference.endpoint in GENERATING:
        _limit_tokens(body, route)
        n = body.get("n", 1)
        if n > 1 and not route.multiple_choices:
            raise OpenAIError(
                400,
                f"n={n} is not supported by this model's engine, which generates one choice per "
                "request: send n=1, or several requests",
                param="n",
                code="unsupported_value",
            )
        if inference.stream:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        else:
            body.pop("stream_options", None)  # engines (vLLM) reject it without stream
    return json.dumps(body).encode()


def _limit_tokens(body: dict[str, Any], route: ModelRoute) -> None:
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    limit = body.get(name)
    if limit is None:
        if route.default_max_tokens is None:
            return
        limit = route.default_max_tokens
        if route.context_length is not None:
            limit = min(limit, route.context_length)
    elif route.context_length is not None and limit > route.context_length:
        raise OpenAIError(
            400,
            f"{name} is too large: {limit}. This model supports at most {route.context_length} tokens "
            "of context (prompt and completion together)",
            param=name,
            code="invalid_value",
        )
    body["max_tokens"] = limit


def _too_deep() -> OpenAIError:
    return OpenAIError(400, f"request body is nested deeper than {MAX_DEPTH} levels", code="invalid_json")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if kind is list:
        return "array"
    return "string or array"


def _prompt_text(body: dict[str, Any], field: str) -> str:
    """The prompt as text, roles included, for prefix routing (bounded: see MAX_BLOCKS)."""
    value = body.get(field)
    if field == "messages" and isinstance(value, list):
        return "\n".join(f"{m.get('role')}:{text_of(m.get('content'))}" for m in value if isinstance(m, dict))
    return str(value)[: BLOCK_CHARS * MAX_BLOCKS]


def prompt_blocks(text: str) -> tuple[int, ...]:
    """Chained hashes of the prompt's successive ``BLOCK_CHARS`` blocks, as vLLM keys its
    prefix cache: block i's hash covers blocks 0..i, so equal hashes mean an equal prefix.
    Only whole blocks count (a partial block is not cached by block), at most MAX_BLOCKS."""
    blocks: list[int] = []
    digest = b""
    for start in range(0, min(len(text), BLOCK_CHARS * MAX_BLOCKS) - BLOCK_CHARS + 1, BLOCK_CHARS):
        h = hashlib.blake2b(digest + text[start : start + BLOCK_CHARS].encode(), digest_size=8)
        digest = h.digest()
        blocks.append(int.from_bytes(digest, "big"))
    return tuple(blocks)
