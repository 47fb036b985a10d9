"""Chat messages and completion prompts in the shapes OpenAI accepts (its OpenAPI spec).

Engines answer other shapes badly: llama-cpp-python with a 500, llama-server with a JSON
library error. OpenAI answers them with a 400 naming the field, and so does the gateway.
"""

from __future__ import annotations

from typing import Any

from aiplane.gateway.params import check_tool
from aiplane.openai_errors import OpenAIError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _bad(name: str, expected: str, value: object) -> OpenAIError:
    return OpenAIError(400, f"'{name}' must be {expected} (got {_short(value)})", param=name)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_messages(messages: list[Any]) -> None:
    """Each message an object with a known role and content OpenAI would take: a string or
    a non-empty array of typed parts; null only where OpenAI allows it (an assistant's
    tool call, a function result)."""
    for i, message in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(name, "an object with 'role' and 'content'", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(f"{name}.role", f"one of {', '.join(sorted(ROLES))}", role)
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise _bad(f"{name}.tool_calls", "an array of tool calls", calls)
            for j, call in enumerate(calls):
                check_tool(f"{name}.tool_calls[{j}]", call, "function", ("name", "arguments"))
        content = message.get("content")
        if content is None:
            calls = message.get("tool_calls") or message.get("function_call")
            if (role == "assistant" and calls) or role == "function":
                continue
            raise OpenAIError(
                400,
                f"'{name}.content' is required (only an assistant message with tool_calls may omit it)",
                param=f"{name}.content",
            )
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise _bad(f"{name}.content", "a string or a non-empty array of content parts", content)
        for j, part in enumerate(content):
            _check_part(f"{name}.content[{j}]", part)


def _check_part(name: str, part: object) -> None:
    if not isinstance(part, dict):
        raise _bad(name, "an object with a 'type'", part)
    kind = part.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{name}.type", "a string", kind)
    if kind == "text" and not isinstance(part.get("text"), str):
        raise _bad(f"{name}.text", "a string", part.get("text"))
    if kind == "refusal" and not isinstance(part.get("refusal"), str):
        raise _bad(f"{name}.refusal", "a string", part.get("refusal"))
    if kind == "image_url":
        image = part.get("image_url")
        if not (isinstance(image, dict) and isinstance(image.get("url"), str)):
            raise _bad(f"{name}.image_url", "an object with a string 'url'", image)


def check_prompt(prompt: object) -> None:
    """A completion prompt: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt) or all(_is_int(p) for p in prompt):
            return
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return
    raise _bad(
        "prompt",
        "a string, an array of strings, an array of token ids or an array of arrays of token ids",
        prompt,
    )


def text_of(content: object) -> str:
    """A message's text, for prefix routing: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
