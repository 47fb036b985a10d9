"""OpenAI's documented request parameters, checked before a request reaches an engine.

Engines disagree on bad input: llama-cpp-python answers a string temperature with a
500 carrying its source path, and treats a negative ``max_tokens`` as no limit. The
gateway gives every engine's clients OpenAI's answer instead: a 400 naming the
parameter. Engine-specific extras (``top_k``, ``min_p``, ...) pass through unchecked.
"""

from __future__ import annotations

from typing import Any

from aiplane.openai_errors import OpenAIError

# name -> (low, high), inclusive, as OpenAI documents them
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}
POSITIVE_INTEGERS = ("max_tokens", "max_completion_tokens", "n", "best_of")
INTEGERS = ("seed", "top_logprobs")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_STOP = 4


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(name: str, expected: str, value: object) -> OpenAIError:
    return OpenAIError(400, f"'{name}' must be {expected} (got {value!r})", param=name)


def check_parameters(body: dict[str, Any]) -> None:
    """Raise a 400 for the first parameter outside OpenAI's documented type or range."""
    for name, (low, high) in NUMBER_RANGES.items():
        value = body.get(name)
        if value is not None and not (_is_number(value) and low <= value <= high):
            raise _bad(name, f"a number from {low:g} to {high:g}", value)
    for name in POSITIVE_INTEGERS:
        value = body.get(name)
        if value is not None and not (_is_integer(value) and value >= 1):
            raise _bad(name, "an integer >= 1", value)
    for name in INTEGERS:
        value = body.get(name)
        if value is not None and not _is_integer(value):
            raise _bad(name, "an integer", value)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("stop", f"a string or an array of up to {MAX_STOP} strings", stop)
    bias = body.get("logit_bias")
    if bias is not None and not (
        isinstance(bias, dict)
        and all(k.isdigit() and _is_number(v) and -100 <= v <= 100 for k, v in bias.items())
    ):
        raise _bad("logit_bias", "an object of token ids to numbers from -100 to 100", bias)
    _check_response_format(body.get("response_format"))
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("stream_options", "an object", options)
        if options.get("include_usage") is not None and not isinstance(options["include_usage"], bool):
            raise _bad("stream_options.include_usage", "a boolean", options["include_usage"])
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "an array of tool objects", tools)
        for i, tool in enumerate(tools):
            check_tool(f"tools[{i}]", tool, "function", ("name",))


def check_tool(name: str, tool: object, field: str, strings: tuple[str, ...]) -> None:
    """A tool (or an assistant's tool call): ``{"type": "function", field: {...}}`` whose
    ``strings`` are strings, as OpenAI documents them. ``custom`` tools pass when well
    formed; an engine that cannot run them says so (a 400)."""
    if not isinstance(tool, dict):
        raise _bad(name, "an object with 'type' and 'function'", tool)
    kind = tool.get("type")
    if kind not in ("function", "custom"):
        raise _bad(f"{name}.type", "'function' or 'custom'", kind)
    if kind == "custom":
        custom = tool.get("custom")
        if not (isinstance(custom, dict) and isinstance(custom.get("name"), str)):
            raise _bad(f"{name}.custom", "an object with a string 'name'", custom)
        return
    inner = tool.get(field)
    if not isinstance(inner, dict):
        raise _bad(f"{name}.{field}", "an object", inner)
    for key in strings:
        if not isinstance(inner.get(key), str):
            raise _bad(f"{name}.{field}.{key}", "a string", inner.get(key))


def _check_response_format(fmt: object) -> None:
    """``text``, ``json_object``, or ``json_schema`` with a named schema, as OpenAI takes them."""
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _bad("response_format", "an object with a 'type'", fmt)
    kind = fmt.get("type")
    if kind not in RESPONSE_FORMATS:
        raise _bad("response_format.type", f"one of {', '.join(RESPONSE_FORMATS)}", kind)
    if kind != "json_schema":
        return
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise _bad("response_format.json_schema", "an object with a 'name'", spec)
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise _bad("response_format.json_schema.name", "a non-empty string", spec.get("name"))
    if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
        raise _bad("response_format.json_schema.schema", "an object (a JSON schema)", spec["schema"])
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise _bad("response_format.json_schema.strict", "a boolean", spec["strict"])


def max_depth(value: object, limit: int) -> int:
    """How deeply ``value`` nests (a scalar is 0), counted up to just past ``limit``:
    iterative, so no body can exhaust the stack the way json.loads can."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest
