"""What of an engine's stream reaches the client, decided event by event (pure, no I/O).

``[DONE]`` is held until the engine's response has ended cleanly: an engine that errs
after it, ends without it or drops the connection gives the client one OpenAI error
event and no ``[DONE]``, so SDKs raise instead of returning truncated text as complete.
The gateway always asks the engine for usage; the usage chunk reaches only clients that
asked for it (``stream_options.include_usage``), and is synthesized when the engine
sends none.
"""

from __future__ import annotations

from typing import Any

from aiplane.gateway.sse import (
    DONE,
    Event,
    EventSplitter,
    content_tokens,
    encode,
    parse,
    usage_chunk,
    usage_of,
)
from aiplane.gateway.upstream_errors import stream_error
from aiplane.openai_errors import error_body


class StreamRelay:
    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.done = False
        self.error: dict[str, object] | None = None  # the error event the client gets
        self.counted = 0  # content-bearing deltas seen
        self.prompt_tokens: int | None = None  # from the engine's usage
        self.usage_completion: int | None = None
        self.usage_sent = False
        self.truncated = False  # the engine's response ended without [DONE] or an error
        self._last: Any = None
        self._splitter = EventSplitter()

    @property
    def completion_tokens(self) -> int:
        return self.usage_completion if self.usage_completion is not None else self.counted

    @property
    def error_is_clients(self) -> bool:
        """The engine rejected the request (the client's fault, not the replica's)."""
        error = self.error.get("error") if self.error else None
        return isinstance(error, dict) and error.get("type") == "invalid_request_error"

    def feed(self, chunk: bytes) -> bytes:
        """The events to forward now; after an error (see ``error``) nothing more."""
        return b"".join(self._take(parse(raw)) for raw in self._splitter.feed(chunk))

    def finish(self) -> bytes:
        """The stream's end once the engine's response ended cleanly: the usage chunk the
        client asked for and ``[DONE]``, or an error event when ``[DONE]`` never came."""
        rest = self._splitter.rest()
        out = self._take(parse(rest)) if rest.strip() else b""
        if self.error is None and not self.done:
            self.truncated = True
            self.error = error_body(
                502, "the engine ended the stream without [DONE]: the answer may be truncated"
            )
        if self.error is not None:
            return out + encode(self.error)
        if self.include_usage and not self.usage_sent:
            out += usage_chunk(self._last, self.prompt_tokens, self.completion_tokens)
        return out + DONE

    def broken(self, message: str, status: int = 502) -> None:
        """The connection broke or stalled mid-stream: ``finish`` ends with this error."""
        if self.error is None:
            self.error = error_body(status, message)

    def _take(self, event: Event) -> bytes:
        if self.error is not None:
            return b""
        if event.kind == "error":
            self.error = stream_error(event.data, "the engine failed mid-stream")
            return b""
        if self.done:  # nobody reads past [DONE]; only an error there matters
            return b""
        if event.kind == "done":
            self.done = True
            return b""
        if isinstance(event.data, dict):
            self._last = event.data
            prompt, completion = usage_of(event.data)
            self.prompt_tokens = prompt if prompt is not None else self.prompt_tokens
            self.usage_completion = completion if completion is not None else self.usage_completion
        if event.kind == "usage":
            if not self.include_usage:
                return b""
            self.usage_sent = True
            return event.raw
        self.counted += content_tokens(event.data)
        return event.raw
