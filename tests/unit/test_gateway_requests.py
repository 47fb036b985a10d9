"""Request shaping: what OpenAI accepts reaches the engine, in a shape the engine takes;
what it rejects is a 400 naming the field, before any cold start."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from builders import InMemoryDiscovery, route
from fake_openai import CHAT, StartUpstream, assert_openai_error, gateway

from aiplane.gateway.discovery import ModelRoute
from aiplane.gateway.params import max_depth

COMPLETIONS = "/v1/completions"
USER = {"role": "user", "content": "hello"}
HELLO = {"model": "m", "messages": [USER]}


def shaped(**fields: Any) -> ModelRoute:
    return dataclasses.replace(route("m"), **fields)


async def forwarded(
    upstream: StartUpstream, body: dict[str, Any], r: ModelRoute | None = None, endpoint: str = CHAT
) -> dict[str, Any]:
    """What the engine received for ``body``, which must have been answered with a 200."""
    fake, up = await upstream("r")
    async with gateway(InMemoryDiscovery.of(r or route("m"), upstreams={"m": [up]})) as (client, _):
        resp = await client.post(endpoint, json=body)
        assert resp.status == 200, await resp.text()
    assert len(fake.requests) == 1
    return fake.requests[0]


async def rejected(
    body: dict[str, Any] | bytes, r: ModelRoute | None = None, endpoint: str = CHAT
) -> dict[str, Any]:
    """The 400 for ``body``, answered with no replica and without waiting for one."""
    discovery = InMemoryDiscovery.of(r or route("m"))
    async with gateway(discovery) as (client, _):
        if isinstance(body, bytes):
            resp = await client.post(endpoint, data=body, headers={"Content-Type": "application/json"})
        else:
            resp = await client.post(endpoint, json=body)
        assert resp.status == 400
        data = await resp.json()
    assert discovery.waits == 0
    return data


# -- null is absent ---------------------------------------------------------------------------
NULLABLE = [
    "temperature",
    "top_p",
    "n",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "stream_options",
    "parallel_tool_calls",
]


async def test_null_parameters_are_dropped_as_if_absent(upstream: StartUpstream) -> None:
    sent = await forwarded(upstream, {**HELLO, **dict.fromkeys(NULLABLE)})
    assert sent == HELLO


async def test_null_parameters_are_dropped_from_completions_too(upstream: StartUpstream) -> None:
    body = {"model": "m", "prompt": "hi", "echo": None, "suffix": None, "best_of": None, "logprobs": None}
    assert await forwarded(upstream, body, endpoint=COMPLETIONS) == {"model": "m", "prompt": "hi"}


# -- max_tokens -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"max_tokens": 256}),
        ({"max_tokens": None}, {"max_tokens": 256}),
        ({"max_tokens": 20}, {"max_tokens": 20}),
        ({"max_completion_tokens": 50}, {"max_completion_tokens": 50, "max_tokens": 50}),
        ({"max_completion_tokens": 50, "max_tokens": None}, {"max_completion_tokens": 50, "max_tokens": 50}),
    ],
)
async def test_max_tokens_defaults_to_the_routes_and_follows_max_completion_tokens(
    upstream: StartUpstream, given: dict[str, Any], expected: dict[str, Any]
) -> None:
    sent = await forwarded(upstream, {**HELLO, **given}, shaped(default_max_tokens=256, context_length=2048))
    assert sent == {**HELLO, **expected}


async def test_completions_get_the_default_max_tokens(upstream: StartUpstream) -> None:
    body = {"model": "m", "prompt": "once upon"}
    assert await forwarded(upstream, body, shaped(default_max_tokens=64), COMPLETIONS) == {
        **body,
        "max_tokens": 64,
    }


async def test_no_default_max_tokens_leaves_the_body_alone(upstream: StartUpstream) -> None:
    assert await forwarded(upstream, HELLO, shaped(context_length=2048)) == HELLO


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_beyond_the_context_is_a_400(name: str) -> None:
    data = await rejected({**HELLO, name: 5000}, shaped(context_length=2048))
    assert assert_openai_error(data, type_="invalid_request_error", code="invalid_value") == (
        f"{name} is too large: 5000. This model supports at most 2048 tokens of context "
        "(prompt and completion together)"
    )
    assert data["error"]["param"] == name


# -- n ----------------------------------------------------------------------------------------
async def test_n_above_one_on_an_engine_that_gives_one_choice_is_a_400() -> None:
    data = await rejected({**HELLO, "n": 3}, shaped(multiple_choices=False))
    message = assert_openai_error(data, type_="invalid_request_error", code="unsupported_value")
    assert message.startswith("n=3 is not supported by this model's engine")
    assert data["error"]["param"] == "n"


async def test_n_passes_through_where_the_engine_supports_it(upstream: StartUpstream) -> None:
    assert (await forwarded(upstream, {**HELLO, "n": 3}))["n"] == 3
    assert (await forwarded(upstream, {**HELLO, "n": 1}, shaped(multiple_choices=False)))["n"] == 1


# -- messages ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        [{"role": "developer", "content": "be brief"}, USER],
        [{"role": "system", "content": [{"type": "text", "text": "be brief"}]}, USER],
        [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        [
            USER,
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
        ],
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}],
            }
        ],
    ],
    ids=[
        "text-parts",
        "developer",
        "system-parts",
        "tool-call-null-content",
        "tool-call-no-content",
        "image",
    ],
)
async def test_message_shapes_openai_accepts_pass_unchanged(
    upstream: StartUpstream, messages: list[Any]
) -> None:
    body = {"model": "m", "messages": messages}
    assert await forwarded(upstream, body) == body


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": 42}, "messages[0].content"),
        ({"role": "user", "content": True}, "messages[0].content"),
        ({"role": "user", "content": {"type": "text", "text": "x"}}, "messages[0].content"),
        ({"role": "user", "content": []}, "messages[0].content"),
        ({"role": "user", "content": None}, "messages[0].content"),
        ({"role": "user"}, "messages[0].content"),
        ({"role": "assistant", "content": None}, "messages[0].content"),
        ({"role": "user", "content": ["hi"]}, "messages[0].content[0]"),
        ({"role": "user", "content": [{"text": "hi"}]}, "messages[0].content[0].type"),
        (
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": 7}]},
            "messages[0].content[1].text",
        ),
        ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0].text"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
            "messages[0].content[0].image_url",
        ),
        # Found by schemathesis: an unhashable role was a 500, and these tool calls were
        # llama-server 500s ("Missing tool call type", "Missing tool call function", ...).
        ({"role": {}, "content": "x"}, "messages[0].role"),
        (
            {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}]},
            "messages[0].tool_calls[0].type",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}]},
            "messages[0].tool_calls[0].function",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": 0}]},
            "messages[0].tool_calls[0].function",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"role": "assistant", "tool_calls": {"id": "1"}}, "messages[0].tool_calls"),
    ],
)
async def test_message_content_openai_rejects_is_a_400_naming_it(message: dict[str, Any], param: str) -> None:
    data = await rejected({"model": "m", "messages": [message]})
    assert_openai_error(data, type_="invalid_request_error")
    assert data["error"]["param"] == param


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ([{"function": {"name": "f"}}], "tools[0].type"),
        ([{"type": "function"}], "tools[0].function"),
        ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
        ([{"type": "custom", "custom": 3}], "tools[0].custom"),
        ([{"type": "retrieval"}], "tools[0].type"),
        ({"type": "function"}, "tools"),
    ],
)
async def test_tools_openai_rejects_are_a_400_naming_the_field(tools: Any, param: str) -> None:
    data = await rejected({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools})
    assert_openai_error(data, type_="invalid_request_error")
    assert data["error"]["param"] == param


# -- completion prompts ------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
async def test_completion_prompts_in_openais_four_shapes_pass(upstream: StartUpstream, prompt: Any) -> None:
    body = {"model": "m", "prompt": prompt}
    assert await forwarded(upstream, body, endpoint=COMPLETIONS) == body


@pytest.mark.parametrize(
    "prompt", [[1, "a"], [[1], "a"], [True, False], [[]], [{"a": 1}], [[1.5]], 5, {"a": 1}]
)
async def test_other_completion_prompts_are_a_400_naming_prompt(prompt: Any) -> None:
    data = await rejected({"model": "m", "prompt": prompt}, endpoint=COMPLETIONS)
    assert_openai_error(data, type_="invalid_request_error")
    assert data["error"]["param"] == "prompt"


# -- response_format ---------------------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}},
        {"type": "json_schema", "json_schema": {"name": "thing"}},
    ],
)
async def test_response_formats_openai_documents_pass(upstream: StartUpstream, fmt: dict[str, Any]) -> None:
    assert (await forwarded(upstream, {**HELLO, "response_format": fmt}))["response_format"] == fmt


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ("json", "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "response_format.json_schema.name"),
        (
            {"type": "json_schema", "json_schema": {"name": "t", "schema": "x"}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "t", "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
    ],
)
async def test_other_response_formats_are_a_400_naming_the_field(fmt: Any, param: str) -> None:
    data = await rejected({**HELLO, "response_format": fmt})
    assert_openai_error(data, type_="invalid_request_error")
    assert data["error"]["param"] == param


# -- streams -----------------------------------------------------------------------------------
async def test_stream_options_without_stream_are_not_forwarded(upstream: StartUpstream) -> None:
    assert await forwarded(upstream, {**HELLO, "stream_options": {"include_usage": True}}) == HELLO


@pytest.mark.parametrize(
    ("options", "param"),
    [("yes", "stream_options"), ({"include_usage": "yes"}, "stream_options.include_usage")],
)
async def test_malformed_stream_options_are_a_400(options: Any, param: str) -> None:
    data = await rejected({**HELLO, "stream": True, "stream_options": options})
    assert data["error"]["param"] == param


# -- nesting -----------------------------------------------------------------------------------
async def test_a_body_nested_100000_deep_is_a_400_not_a_500() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 100_000
    raw += b"]" * 100_000 + b"}"
    data = await rejected(raw)
    assert assert_openai_error(data, type_="invalid_request_error", code="invalid_json") == (
        "request body is nested deeper than 100 levels"
    )


async def test_a_body_deeper_than_engines_should_parse_is_not_forwarded() -> None:
    deep: Any = "leaf"
    for _ in range(150):  # json.loads takes it; an engine's recursive parser may not
        deep = {"a": deep}
    data = await rejected({**HELLO, "metadata": deep})
    assert data["error"]["code"] == "invalid_json"


def test_depth_is_measured_without_recursion() -> None:
    assert max_depth("x", 10) == 0
    assert max_depth({"a": [1, {"b": []}]}, 10) == 4
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    assert max_depth(deep, 100) == 101  # stops counting past the limit
