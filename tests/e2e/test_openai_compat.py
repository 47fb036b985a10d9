"""What OpenAI clients send, against the real gateway and llama-server: it works, or is a 400.

Each of these answered 500 when the local engine was llama-cpp-python's server (or, for
the deep body, when the gateway's JSON parser recursed), and ``max_tokens: null`` held a
replica until its context was full.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import write
from tests.e2e.plane import SMOLLM2, Plane, assert_gone

pytestmark = pytest.mark.e2e

DEFAULT_MAX_TOKENS, CONTEXT = 24, 1024
MODEL_YAML = f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: smollm2}}
spec:
  engine: llamacpp
  source: {SMOLLM2}
  contextLength: {CONTEXT}
  defaultMaxTokens: {DEFAULT_MAX_TOKENS}
  replicas: {{min: 1, max: 1}}
"""
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    home = tmp_path_factory.mktemp("compat")
    plane = Plane(home, [write(home, "m.yaml", MODEL_YAML)]).start()
    plane.wait_replicas("smollm2", 1)
    yield plane
    pids = [r.pid for r in plane.replicas() if r.pid]
    plane.stop()
    assert_gone(pids)


@pytest.fixture
def client(plane: Plane) -> openai.OpenAI:
    return openai.OpenAI(base_url=plane.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(plane: Plane, path: str, body: dict[str, Any] | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(plane.url + path, content=body, timeout=60)
    return httpx.post(plane.url + path, json=body, timeout=60)


def test_content_as_an_array_of_text_parts(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the capital of France? "},
                    {"type": "text", "text": "Answer in one word."},
                ],
            }
        ],
        max_tokens=12,
        temperature=0,
    )
    assert "paris" in (reply.choices[0].message.content or "").lower()


def test_the_developer_role(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "developer", "content": "Answer in one word."}, *HI],
        max_tokens=4,
    )
    assert reply.choices[0].message.content


@pytest.mark.parametrize("content", ["null", "absent"])
def test_an_assistant_tool_call_with_no_content_as_every_tool_loop_sends_back(
    client: openai.OpenAI, content: str
) -> None:
    call: dict[str, Any] = {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    if content == "null":
        call["content"] = None
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            call,  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"},
        ],
        max_tokens=16,
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_null_for_optional_parameters_means_absent_and_max_tokens_gets_the_models_default(
    plane: Plane,
) -> None:
    nulls = dict.fromkeys(
        ("temperature", "top_p", "n", "stop", "seed", "presence_penalty", "max_tokens", "stream_options")
    )
    chat = post(plane, "/v1/chat/completions", {"model": "smollm2", "messages": HI, **nulls})
    assert chat.status_code == 200, chat.text
    # Unbounded, this prompt runs to the context's end; the Model's default caps it.
    assert 0 < chat.json()["usage"]["completion_tokens"] <= DEFAULT_MAX_TOKENS
    body = {"model": "smollm2", "prompt": "Once upon a time", "echo": None, "logprobs": None, **nulls}
    completion = post(plane, "/v1/completions", body)
    assert completion.status_code == 200, completion.text
    assert 0 < completion.json()["usage"]["completion_tokens"] <= DEFAULT_MAX_TOKENS


def test_a_prompt_of_token_ids_or_of_several_strings(client: openai.OpenAI) -> None:
    ids = client.completions.create(model="smollm2", prompt=[504, 3458, 314], max_tokens=4)
    assert ids.choices[0].text and ids.usage is not None and ids.usage.prompt_tokens == 3
    several = client.completions.create(model="smollm2", prompt=["The sky is", "Grass is"], max_tokens=4)
    assert sorted(c.index for c in several.choices) == [0, 1]
    assert all(c.text for c in several.choices)


def test_response_format_json_schema_constrains_the_answer(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        # Bounded, so the constrained answer always fits in max_tokens.
        "properties": {"city": {"type": "string", "maxLength": 30}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Give a city and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=128,
        temperature=0,
    )
    answer = json.loads(reply.choices[0].message.content or "")
    assert isinstance(answer["city"], str) and isinstance(answer["population"], int)


def test_n_above_one_gives_n_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2", messages=HI, n=3, max_tokens=4)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]


def test_content_that_is_a_number_is_a_400_naming_it(plane: Plane) -> None:
    resp = post(
        plane, "/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": 42}]}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "messages[0].content"


def test_a_body_nested_100000_levels_deep_is_a_400_not_a_500(plane: Plane) -> None:
    deep = b'{"model": "smollm2", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = post(plane, "/v1/chat/completions", deep)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_json"
    assert httpx.get(plane.url + "/health", timeout=10).status_code == 200  # still up


def test_max_tokens_beyond_the_context_is_openais_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=HI, max_tokens=CONTEXT + 1)
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]
    assert f"max_tokens is too large: {CONTEXT + 1}" in info.value.message


def test_a_prompt_longer_than_the_context_is_a_400_from_the_engine_not_a_500(plane: Plane) -> None:
    long = " ".join(["word"] * (CONTEXT * 2))
    resp = post(plane, "/v1/completions", {"model": "smollm2", "prompt": long, "max_tokens": 4})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "context_length_exceeded")
    assert "File " not in resp.text
