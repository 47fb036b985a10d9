"""Engine errors as the client sees them: a bad request is a 400 whatever status the engine
gave it, a genuine server error stays a 5xx, and no stack frame gets through."""

from __future__ import annotations

import json
from typing import Any

import pytest
from builders import InMemoryDiscovery, route
from fake_openai import CHAT, HELLO, StartUpstream, assert_openai_error, gateway

from aiplane.gateway.upstream_errors import openai_error, param_from_loc

FRAME = '\n  File "/venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, in chat\n    raise'


def error(message: str, type_: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None, **extra}}


@pytest.mark.parametrize(
    ("reply", "status", "type_", "param", "message"),
    [
        # an OpenAI-shaped error that says it is the client's, sent as a 500
        (
            (500, error("'messages' is too short", "invalid_request_error", param="messages")),
            400,
            "invalid_request_error",
            "messages",
            "'messages' is too short",
        ),
        # FastAPI's validation detail, sent as a 500
        (
            (500, {"detail": [{"loc": ["body", "messages", 0, "content"], "msg": "Field required"}]}),
            400,
            "invalid_request_error",
            "messages[0].content",
            None,
        ),
        # llama-server: its JSON library's type error on a bad field
        (
            (
                500,
                {
                    "error": {
                        "code": 500,
                        "type": "server_error",
                        "message": "[json.exception.type_error.302] type must be string, but is number",
                    }
                },
            ),
            400,
            "invalid_request_error",
            None,
            "[json.exception.type_error.302] type must be string, but is number",
        ),
        # pydantic v2's text, with a stack frame after it
        (
            (
                500,
                error(
                    "1 validation error for CreateChatCompletionRequest\nmessages.0.content\n"
                    "  Input should be a valid string [type=string_type]" + FRAME,
                    "internal_server_error",
                ),
            ),
            400,
            "invalid_request_error",
            "messages[0].content",
            "1 validation error for CreateChatCompletionRequest\nmessages.0.content\n"
            "  Input should be a valid string [type=string_type]",
        ),
        # genuine server errors stay server errors, minus stack frames
        (
            (
                500,
                error(
                    "1 validation error for ChatCompletionResponse\nchoices\n  Field required", "server_error"
                ),
            ),
            500,
            "server_error",
            None,
            None,
        ),
        (
            (500, error("CUDA error: out of memory" + FRAME, "server_error")),
            500,
            "server_error",
            None,
            "CUDA error: out of memory",
        ),
        ((503, error("Loading model", "unavailable_error")), 503, "unavailable_error", None, "Loading model"),
        ((500, b"Internal Server Error"), 500, "server_error", None, "upstream: Internal Server Error"),
        # an upstream 4xx keeps its status
        ((404, error("no such adapter", "invalid_request_error")), 404, "invalid_request_error", None, None),
    ],
    ids=[
        "openai-500",
        "fastapi-500",
        "llama-server-500",
        "pydantic-500",
        "response-500",
        "oom-500",
        "503",
        "text-500",
        "404",
    ],
)
async def test_upstream_errors_get_the_status_openai_would_give(
    upstream: StartUpstream,
    reply: tuple[int, Any],
    status: int,
    type_: str,
    param: str | None,
    message: str | None,
) -> None:
    _, up = await upstream("r", mode="reply", reply=reply)
    discovery = InMemoryDiscovery.of(route("m"), upstreams={"m": [up]})
    async with gateway(discovery) as (client, gw):
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status == status
        data = await resp.json()
        text = assert_openai_error(data, type_=type_)
        assert data["error"]["param"] == param
        assert 'File "' not in text
        if message is not None:
            assert text == message
        labels = {"model": "m", "endpoint": CHAT, "status": str(status)}
        assert gw.metrics.registry.get_sample_value("aiplane_gateway_requests_total", labels) == 1
        assert discovery.failures == []  # an engine that answers is not reported


def test_an_openai_error_without_frames_passes_byte_for_byte() -> None:
    raw = json.dumps(error("bad n", "invalid_request_error", param="n")).encode()
    assert openai_error(400, raw) == (400, raw)


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (["body", "temperature"], "temperature"),
        (["body", "messages", 0, "content"], "messages[0].content"),
        (("body", "tools", "3", "function"), "tools[3].function"),
        (["query", "x"], "x"),
        ([], None),
        ("temperature", None),
    ],
)
def test_fastapi_locations_become_openai_param_names(loc: object, param: str | None) -> None:
    assert param_from_loc(loc) == param


def test_llama_servers_own_error_types_become_openais() -> None:
    raw = json.dumps(
        {"error": {"code": 400, "message": "request (2050 tokens) exceeds the context (1024)",
                   "type": "exceed_context_size_error", "n_prompt_tokens": 2050, "n_ctx": 1024}}
    ).encode()  # fmt: skip
    status, body = openai_error(400, raw)
    error = json.loads(body)["error"]
    assert status == 400
    assert (error["type"], error["code"]) == ("invalid_request_error", "context_length_exceeded")
    assert error["message"] == "request (2050 tokens) exceeds the context (1024)"


def test_an_integer_code_is_dropped_from_an_otherwise_openai_shaped_error() -> None:
    raw = json.dumps({"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}}).encode()
    status, body = openai_error(400, raw)
    assert status == 400 and json.loads(body)["error"] == {
        "code": None, "message": "bad", "type": "invalid_request_error"
    }  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        'Failed to parse tools: Unsupported tool type: {"type":"custom","custom":{"name":""}}',
        "Failed to parse messages: Missing tool call function",
        "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
        "audio input is not supported",
    ],
)
def test_what_llama_server_cannot_take_is_a_400_though_it_says_500(message: str) -> None:
    """Found by schemathesis against OpenAI's spec: llama-server answers these with a 500."""
    status, body = openai_error(500, json.dumps(error(message, "server_error")).encode())
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_a_genuine_engine_failure_stays_a_500() -> None:
    status, _ = openai_error(500, json.dumps(error("failed to decode the batch", "server_error")).encode())
    assert status == 500
