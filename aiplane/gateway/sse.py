"""Server-sent events as OpenAI streams them, pure: split, classify, count, end.

The gateway forwards a stream event by event (never a partial event, never more than one
held back), so it can tell a complete answer (``[DONE]`` after a clean end) from a
truncated one, and end the latter with an error event instead of a silent stop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

EVENT_END = re.compile(rb"\r?\n\r?\n")
LINE_END = re.compile(r"\r?\n")
DONE = b"data: [DONE]\n\n"
# Chat deltas and completion choices that carry generated text (one token each).
CONTENT_KEYS = ("content", "reasoning_content", "text", "tool_calls")


class EventSplitter:
    """Cuts a byte stream into complete events; an event split across chunks waits for its end."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events this chunk completes, each with its terminating blank line."""
        start = max(0, len(self._buffer) - 3)  # a terminator may straddle the chunk boundary
        self._buffer += chunk
        events: list[bytes] = []
        cut = 0
        while match := EVENT_END.search(self._buffer, max(cut, start)):
            events.append(self._buffer[cut : match.end()])
            cut = match.end()
        self._buffer = self._buffer[cut:]
        return events

    def rest(self) -> bytes:
        """What followed the last complete event: an event the upstream did not terminate."""
        rest, self._buffer = self._buffer, b""
        return rest


@dataclass(frozen=True)
class Event:
    raw: bytes
    kind: str  # "done", "error", "usage" (a choices-free usage chunk), "data", "other"
    data: Any = None  # the parsed JSON, when there is any
    fields: dict[str, str] = field(default_factory=dict)


def parse(raw: bytes) -> Event:
    """Classify one event: llama-server writes errors as an ``error:`` field, vLLM and OpenAI
    as ``data: {"error": ...}``, others as ``event: error``."""
    fields: dict[str, str] = {}
    for line in LINE_END.split(raw.decode(errors="replace")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = f"{fields[name]}\n{value}" if name in fields else value
    text = fields.get("data", fields.get("error"))
    if text is None:
        return Event(raw, "other", fields=fields)
    if text.strip() == "[DONE]":
        return Event(raw, "done", fields=fields)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        data = text
    if "error" in fields or fields.get("event") == "error":
        return Event(raw, "error", data, fields)
    if isinstance(data, dict):
        if "error" in data:
            return Event(raw, "error", data, fields)
        if isinstance(data.get("usage"), dict) and not data.get("choices"):
            return Event(raw, "usage", data, fields)
    return Event(raw, "data", data, fields)


def content_tokens(data: Any) -> int:
    """Generated tokens in a chunk, one per content-bearing choice (llama.cpp and vLLM stream
    one token per delta); exact counts come from the engine's ``usage`` when it sends one."""
    if not isinstance(data, dict) or not isinstance(choices := data.get("choices"), list):
        return 0
    count = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        carrier = delta if isinstance(delta, dict) else choice  # a completion's choice has "text"
        if any(carrier.get(key) for key in CONTENT_KEYS):
            count += 1
    return count


def usage_of(data: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from a chunk's ``usage``, None where it says nothing."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else None,
    )


def usage_chunk(last: Any, prompt: int | None, completion: int) -> bytes:
    """OpenAI's final ``include_usage`` chunk (``choices: []``), for engines that send none.

    ``last`` is the stream's last chunk, for its id, model and object. Prompt tokens are
    what the engine reported; when it reported none they are ``null``, not an estimate
    (the gateway has no tokenizer), and so is the total.
    """
    base = last if isinstance(last, dict) else {}
    chunk = {
        key: base[key] for key in ("id", "object", "created", "model", "system_fingerprint") if key in base
    }
    chunk["choices"] = []
    chunk["usage"] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": None if prompt is None else prompt + completion,
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def encode(event: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"
