"""Schema-driven fuzzing of the gateway with schemathesis, against OpenAI's own OpenAPI description.

A real plane serves SmolLM2 on ``llamacpp`` (llama-server); schemathesis generates valid
and invalid requests for the five operations the gateway serves, from
``../shared/specs/openai/openapi.yaml`` (read in place, never copied here).

What is checked, and why only that:
  * ``not_a_server_error``: no 5xx, whatever the body. The spec documents only 200 and
    429, so undocumented 400/404/405 answers are expected and not checked.
  * Not ``response_schema_conformance``: llama-server's 200 bodies lack members OpenAI
    marks required but nullable (``choices[].logprobs``, ``message.refusal``), so every
    successful chat completion would fail it; that is the engine's shape, not a fault
    of the gateway, and the openai client accepts it.
  * A streamed 200 that ends in a ``server_error`` event counts as a 5xx too: it is how
    the gateway reports an upstream failure after the first byte.
  * The gateway still answers an ordinary chat completion afterwards.

A ``before_call`` hook sends string ``model`` values to the served model (otherwise nearly
every request is a 404 that never reaches llama-server) and caps token counts, ``n`` and
prompt batches so one generation stays short; other values, invalid ones included, go as
generated. Schemathesis runs with a fixed seed, ``--max-examples`` per cycle and
``--max-time`` for the whole run, in a temporary directory (reports, no example database).

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_openapi_fuzz.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import write
from tests.e2e.plane import SMOLLM2, Plane, assert_gone

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "specs" / "openai" / "openapi.yaml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
OPERATIONS = ("listModels", "retrieveModel", "createChatCompletion", "createCompletion", "createEmbedding")
PATHS = ("/v1/models", "/v1/models/{model}", "/v1/chat/completions", "/v1/completions", "/v1/embeddings")
SERVED = "smollm2"
SEED = 20260821
MAX_EXAMPLES = 25
MAX_TIME_S = 150
REQUEST_TIMEOUT_S = 120

FUZZ_MODEL = f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: {SERVED}}}
spec:
  engine: llamacpp
  source: {SMOLLM2}
  replicas: {{min: 1, max: 1}}
  contextLength: 512
  defaultMaxTokens: 32
"""

# Loaded by the schemathesis process (SCHEMATHESIS_HOOKS); it edits each case in place just
# before it is sent, so the reports show what was really sent.
HOOKS = """\
import schemathesis

SERVED = {served!r}
CAPS = {{"max_tokens": 16, "max_completion_tokens": 16, "n": 2, "best_of": 2}}
CAPS.update({{"logprobs": 2, "top_logprobs": 2}})
MAX_PROMPTS = 2


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = SERVED
    for key, cap in CAPS.items():
        if type(body.get(key)) is int and body[key] > cap:
            body[key] = cap
    if isinstance(body.get("prompt"), list) and len(body["prompt"]) > MAX_PROMPTS:
        body["prompt"] = body["prompt"][:MAX_PROMPTS]
"""


@dataclass(frozen=True)
class Finding:
    method: str
    path: str
    status: int
    body: str
    response: str

    def __str__(self) -> str:
        head = f"{self.method} {self.path} -> {self.status}"
        return f"{head}\n  request:  {self.body[:600]}\n  response: {self.response[:400]}"


@dataclass
class FuzzRun:
    returncode: int
    output: str
    entries: list[dict[str, Any]]
    junit: ET.Element

    def server_errors(self) -> list[Finding]:
        """Every 5xx the gateway answered, and every 200 stream that ended in a server error."""
        found: list[Finding] = []
        for entry in self.entries:
            request, response = entry["request"], entry["response"]
            status = int(response["status"])
            text = response.get("content", {}).get("text") or ""
            if status >= 500 or (status == 200 and _stream_server_error(text)):
                path = urlsplit(request["url"]).path
                body = (request.get("postData") or {}).get("text", "")
                found.append(Finding(request["method"], path, status, body, text))
        return found

    def failures(self, code: str) -> list[str]:
        """JUnit failures of one schemathesis check (``ST101`` is a server error), by operation."""
        return [
            f"{case.get('name')}: {node.get('message')}"
            for case in self.junit.iter("testcase")
            for node in case.iter("failure")
            if code in (node.get("message") or "")
        ]

    def errors(self) -> list[str]:
        """Requests schemathesis could not complete (network errors, timeouts) and internal errors."""
        return [
            f"{case.get('name')}: {(node.text or '').strip()[:300]}"
            for case in self.junit.iter("testcase")
            for node in case.iter("error")
        ]

    def paths_hit(self) -> set[str]:
        """The gateway paths requests went to, a model's own path as ``/v1/models/{model}``."""
        paths = {urlsplit(e["request"]["url"]).path for e in self.entries}
        return {"/v1/models/{model}" if p.startswith("/v1/models/") else p for p in paths}


def _stream_server_error(text: str) -> bool:
    for line in text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            try:
                error = json.loads(line[len("data: ") :]).get("error")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(error, dict) and (
                error.get("type") == "server_error" or str(error.get("code")).startswith("5")
            ):
                return True
    return False


def run_schemathesis(
    base_url: str,
    workdir: Path,
    operations: tuple[str, ...] = OPERATIONS,
    *,
    max_examples: int = MAX_EXAMPLES,
    max_time_s: int | None = MAX_TIME_S,
    phases: str = "examples,coverage,fuzzing",
) -> FuzzRun:
    if not SPEC.is_file():
        pytest.fail(
            f"OpenAI's OpenAPI description is expected at {SPEC} (../shared/specs/openai/openapi.yaml "
            "beside the repository; see ../shared/specs/README.md); it is read in place, not vendored"
        )
    if not SCHEMATHESIS.exists():
        pytest.fail(f"schemathesis is not installed at {SCHEMATHESIS}: .venv/bin/pip install -e '.[dev]'")
    hooks = write(workdir, "st_hooks.py", HOOKS.format(served=SERVED))
    har, junit = workdir / "schemathesis.har.json", workdir / "schemathesis.junit.xml"
    args = [str(SCHEMATHESIS), "--no-color", "run", str(SPEC), "--url", base_url]
    for operation in operations:
        args += ["--include-operation-id", operation]
    args += [
        "--checks", "not_a_server_error",
        "--continue-on-failure",
        "--phases", phases,
        "--seed", str(SEED),
        "--max-examples", str(max_examples),
        "--no-shrink",  # shrinking re-sends a failing generation many times; the report has the case
        "--workers", "1",
        "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--generation-database", "none",
        "--report", "junit,har",
        "--report-junit-path", str(junit),
        "--report-har-path", str(har),
    ]  # fmt: skip
    if max_time_s is not None:
        args += ["--max-time", str(max_time_s)]
    env = os.environ | {"SCHEMATHESIS_HOOKS": str(hooks), "NO_PROXY": "127.0.0.1,localhost"}
    bound = (max_time_s or 120) + REQUEST_TIMEOUT_S + 60
    proc = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=bound)
    output = proc.stdout + proc.stderr
    # 0: nothing found; 1: failures or errors found. Anything else: schemathesis itself failed.
    assert proc.returncode in (0, 1), f"schemathesis exited {proc.returncode}:\n{output[-4000:]}"
    assert har.exists() and junit.exists(), f"schemathesis wrote no reports:\n{output[-4000:]}"
    entries = json.loads(har.read_text())["log"]["entries"]
    return FuzzRun(proc.returncode, output, entries, ET.parse(junit).getroot())


def _signature(finding: Finding) -> str:
    """What a server error says, without the echoed request: ``Failed to parse tools: Missing tool type``."""
    try:
        message = str(json.loads(finding.response)["error"]["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        message = finding.response
    # llama-server appends the offending value: "Failed to parse tools: Missing tool type: {...}".
    head = ": ".join(message.split(": ")[:2])
    return re.split(r"[{\[;]", head, maxsplit=1)[0].strip()[:160] or finding.response[:160]


def _report(run: FuzzRun) -> str:
    """Each distinct server error once, with how often it came and its shortest request."""
    groups: dict[tuple[str, str, int, str], list[Finding]] = {}
    for f in run.server_errors():
        groups.setdefault((f.method, f.path, f.status, _signature(f)), []).append(f)
    lines = [f"{len(groups)} distinct server errors in {len(run.entries)} requests:"]
    for (method, path, status, signature), found in groups.items():
        shortest = min(found, key=lambda f: len(f.body))
        lines += [f"* {method} {path} -> {status} x{len(found)}: {signature}"]
        lines += [f"  request:  {shortest.body[:600]}", f"  response: {shortest.response[:400]}"]
    lines += ["schemathesis ST101:", *run.failures("ST101"), "schemathesis errors:", *run.errors()]
    return "\n".join(lines)


@pytest.fixture
def fuzz_plane(tmp_path: Path) -> Iterator[Plane]:
    plane = Plane(tmp_path, [write(tmp_path, "smollm2.yaml", FUZZ_MODEL)]).start()
    try:
        plane.wait_replicas(SERVED, 1, timeout=120)
        yield plane
    finally:
        pids = [r.pid for r in plane.replicas() if r.pid]
        plane.stop()
        assert_gone(pids)


@pytest.mark.timeout(MAX_TIME_S + REQUEST_TIMEOUT_S + 180)
def test_openai_schema_fuzzing_finds_no_server_errors(fuzz_plane: Plane, tmp_path: Path) -> None:
    run = run_schemathesis(fuzz_plane.url + "/v1", tmp_path)

    hit = run.paths_hit()
    assert set(PATHS) <= hit, f"not every operation was exercised: {sorted(hit)}"
    assert not run.server_errors() and not run.failures("ST101"), _report(run)
    assert not run.errors(), _report(run)

    reply = httpx.post(
        fuzz_plane.url + "/v1/chat/completions",
        json={"model": SERVED, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]


class _FailsOnce(BaseHTTPRequestHandler):
    """``GET /v1/models`` answers schemathesis's first test case with a 500, then a valid list."""

    failed = threading.Event()

    def do_GET(self) -> None:
        if not self.path.startswith("/v1/models"):
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        elif self.headers.get("X-Schemathesis-TestCaseId") and not self.failed.is_set():
            self.failed.set()
            self._send(500, {"error": {"message": "boom", "type": "server_error"}})
        else:
            self._send(200, {"object": "list", "data": []})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_fuzz_check_catches_a_single_server_error(tmp_path: Path) -> None:
    """The harness itself: one 500 among the answers must fail the check above."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailsOnce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        run = run_schemathesis(
            url, tmp_path, ("listModels",), max_examples=3, max_time_s=None, phases="fuzzing"
        )
    finally:
        server.shutdown()
        server.server_close()
    (finding,) = run.server_errors()
    assert (finding.method, finding.path, finding.status) == ("GET", "/v1/models", 500)
    assert run.failures("ST101") and run.returncode == 1
