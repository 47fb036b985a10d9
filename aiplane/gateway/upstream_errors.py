"""An engine's error answer in OpenAI's shape and with the status OpenAI would give.

Engines answer some bad requests with a 500: llama-cpp-python wraps pydantic's
validation errors in one, llama-server its JSON library's type errors. A client must see
a 400 it should not retry, not a server error; genuine 5xx stay 5xx, and no stack frame
ever reaches a client.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from aiplane.openai_errors import error_body

TRACE_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')
# Messages that say the request was bad, whatever status the engine gave them: pydantic's
# errors about a request model or a body field (not about a response model, a server
# bug), as llama-cpp-python formats them; llama-server's JSON library's type errors, and
# its words for what it cannot take ("Failed to parse tools: Unsupported tool type",
# "Missing tool call function", "image input is not supported").
CLIENT_ERROR_TEXT = re.compile(
    r"validation errors? for \w*Request\b|^\d+ validation errors?:|'loc': \(\s*'body'"
    r"|\[json\.exception\.(type_error|parse_error|out_of_range)"
    r"|Failed to parse (tools|messages|tool_choice)\b|\b(Unsupported|Missing) (tool|content)"
    r"|input is not supported",
    re.MULTILINE,
)
TUPLE_LOC = re.compile(r"'loc': (\([^()]*\)|\[[^\[\]]*\])")
PYDANTIC_HEADER_LOC = re.compile(r"validation errors? for \w+\n(\S+)")
LOC_PREFIXES = frozenset({"body", "query", "path"})
# llama-server's own error types, as OpenAI answers the same errors: (status, code); the
# type is then OpenAI's invalid_request_error.
ENGINE_TYPES = {
    "exceed_context_size_error": (400, "context_length_exceeded"),
    "not_supported_error": (400, "unsupported_value"),
}


def without_traceback(message: str) -> str:
    """Drop the stack frames some engines put in error messages (llama-cpp-python does)."""
    kept: list[str] = []
    in_frame = False
    for line in message.splitlines():
        if line.startswith("Traceback (most recent call last)") or TRACE_FRAME.match(line):
            in_frame = True
        elif not (in_frame and line.startswith("    ")):  # a frame's source line follows it
            in_frame = False
            kept.append(line)
    return "\n".join(kept).strip()


def param_from_loc(loc: object) -> str | None:
    """FastAPI's ``['body', 'messages', 0, 'content']`` as OpenAI names it: messages[0].content."""
    if not isinstance(loc, list | tuple) or not loc:
        return None
    parts = list(loc[1:] if loc[0] in LOC_PREFIXES else loc)
    name = ""
    for part in parts:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            name += f"[{part}]"
        elif isinstance(part, str):
            name += f".{part}" if name else part
    return name or None


def _param_in_text(message: str) -> str | None:
    if match := TUPLE_LOC.search(message):
        try:
            return param_from_loc(ast.literal_eval(match.group(1)))
        except (ValueError, SyntaxError):
            return None
    if match := PYDANTIC_HEADER_LOC.search(message):
        return param_from_loc(match.group(1).split("."))
    return None


def _is_client_error(error: dict[str, Any], detail: object) -> bool:
    if error.get("type") == "invalid_request_error" or isinstance(detail, list):
        return True
    message = error.get("message")
    return isinstance(message, str) and CLIENT_ERROR_TEXT.search(message) is not None


def openai_error(status: int, raw: bytes) -> tuple[int, bytes]:
    """The status and body to answer for an upstream error: OpenAI's shape (FastAPI's
    ``detail`` rewrapped), 400 for a 500 that is the client's fault, no stack frames."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        data = None
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(error := data.get("error"), dict):
        message = error.get("message")
        clean = without_traceback(message) if isinstance(message, str) else message
    else:
        error = {}
        text = detail if detail is not None else raw.decode(errors="replace")[:500]
        clean = f"upstream: {without_traceback(str(text))}"
    param = error.get("param") if isinstance(error.get("param"), str) else None
    if param is None and isinstance(detail, list) and detail and isinstance(detail[0], dict):
        param = param_from_loc(detail[0].get("loc"))
    if param is None and isinstance(clean, str):
        param = _param_in_text(clean)
    if status == 500 and _is_client_error({**error, "message": clean}, detail):
        body = error_body(400, str(clean), param=param, code=_code(error))
        return 400, json.dumps(body).encode()
    if (kind := error.get("type")) in ENGINE_TYPES:
        status, code = ENGINE_TYPES[str(kind)]
        return status, json.dumps(error_body(status, str(clean), param=param, code=code)).encode()
    if error:  # already OpenAI's shape: keep it, minus any stack frames
        if clean == error.get("message") and (
            error.get("code") is None or isinstance(error.get("code"), str)
        ):
            return status, raw
        error = {**error, "code": _code(error)}  # llama-server puts the HTTP status in code
        return status, json.dumps({**data, "error": {**error, "message": clean}}).encode()
    return status, json.dumps(error_body(status, str(clean), param=param)).encode()


def _code(error: dict[str, Any]) -> str | None:
    code = error.get("code")
    return code if isinstance(code, str) else None


def stream_error(data: object, fallback: str) -> dict[str, object]:
    """An error an engine sent inside a stream, as the one OpenAI-shaped event a client gets."""
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, str) and error.strip():
        return error_body(502, without_traceback(error))
    if not isinstance(error, dict):
        return error_body(502, fallback)
    message = error.get("message")
    kind = error.get("type")
    return {
        "error": {
            "message": without_traceback(message) if isinstance(message, str) and message else fallback,
            "type": kind if isinstance(kind, str) and kind else "server_error",
            "param": error.get("param") if isinstance(error.get("param"), str) else None,
            "code": _code(error),
        }
    }
