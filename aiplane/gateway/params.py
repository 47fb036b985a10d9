"""OpenAI's documented sampling parameters, checked before a request reaches an engine.

Engines disagree on bad input: llama-cpp-python answers a string temperature with a
500 carrying its source path, and treats a negative ``max_tokens`` as no limit. The
gateway gives every engine's clients OpenAI's answer instead: a 400 naming the
parameter. Engine-specific extras (``top_k``, ``min_p``, ...) pass through unchecked.
"""

from __future__ import annotations

from typing import Any

from aiplane.gateway.errors import GatewayError

# name -> (low, high), inclusive, as OpenAI documents them
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}
POSITIVE_INTEGERS = ("max_tokens", "max_completion_tokens", "n", "best_of")
INTEGERS = ("seed", "top_logprobs")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_STOP = 4


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(name: str, expected: str, value: object) -> GatewayError:
    return GatewayError(400, f"'{name}' must be {expected} (got {value!r})", param=name)


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


def check_messages(messages: list[Any]) -> None:
    """Each chat message is an object with a known role (the engine checks the content)."""
    for i, message in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(name, "an object with 'role' and 'content'", message)
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"{name}.role", f"one of {', '.join(sorted(ROLES))}", role)
