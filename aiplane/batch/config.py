"""The shard's configuration, read from ``AIPLANE_*`` environment variables.

The same variables on both runtimes (the Kubernetes lowering and the local runtime set
them), so a shard is configured in one place. A wrong value is a :class:`ConfigError`
whose one line names the variable and what it should be.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from aiplane.batch.errors import ConfigError

Task = Literal["embed", "generate", "command"]
TASKS: dict[str, Task] = {"embed": "embed", "generate": "generate", "command": "command", "custom": "command"}
K8S_TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class ShardConfig:
    shard: int
    shards: int
    task: Task
    input: str
    output: str
    job: str | None = None
    model: str | None = None
    model_url: str | None = None
    model_path: str | None = None
    api_key: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    concurrency: int = 4
    max_tokens: int = 128
    temperature: float = 0.0
    batch_size: int = 64
    retries: int = 8
    request_timeout: float = 600.0
    threads: int = 0
    command: tuple[str, ...] = ()


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = _text(env, name)
    if value is None:
        raise ConfigError(f"{name} is not set: expected {what}")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None, low: int, what: str) -> int:
    raw = _text(env, name)
    if raw is None:
        if default is None:
            raise ConfigError(f"{name} is not set: expected {what}")
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise ConfigError(f"{name}={raw!r}: expected {what}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, what: str) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= low or value == float("inf"):
        raise ConfigError(f"{name}={raw!r}: expected {what}")
    return value


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = _text(env, name)
    if raw is None:
        return None
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(
            f"{name}={raw!r}: expected an http(s) URL of an OpenAI-compatible API ending in /v1"
        )
    return raw.rstrip("/")


def _command(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _required(env, "AIPLANE_COMMAND", 'a JSON list of strings (argv), e.g. ["python", "shard.py"]')
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise ConfigError(
            f'AIPLANE_COMMAND={raw!r}: expected a non-empty JSON list of strings, e.g. ["python", "shard.py"]'
        )
    return tuple(value)


def load_config(env: Mapping[str, str]) -> ShardConfig:
    """The shard ``env`` describes; raises :class:`ConfigError` on the first wrong variable."""
    raw_task = _required(env, "AIPLANE_TASK", "embed, generate or command")
    task = TASKS.get(raw_task.lower())
    if task is None:
        raise ConfigError(f"AIPLANE_TASK={raw_task!r}: expected embed, generate or command (or custom)")
    shards = _int(env, "AIPLANE_SHARDS", 1, 1, "the number of shards, an integer >= 1")
    shard = _int(env, "AIPLANE_SHARD", None, 0, f"the shard index, an integer in 0..{shards - 1}")
    if shard >= shards:
        raise ConfigError(
            f"AIPLANE_SHARD={shard}: expected an index below AIPLANE_SHARDS={shards} (0..{shards - 1})"
        )
    output = _required(env, "AIPLANE_OUTPUT", "the output directory (a path or URL)")
    if task == "command":
        source = _text(env, "AIPLANE_INPUT") or ""
    else:
        source = _required(env, "AIPLANE_INPUT", "the input file or directory (JSONL, CSV or Parquet)")
    model_url = _url(env, "AIPLANE_MODEL_URL")
    model = _text(env, "AIPLANE_MODEL")
    if task == "generate" and model_url is None:
        raise ConfigError(
            "AIPLANE_MODEL_URL is not set: generate needs an OpenAI-compatible base URL ending in /v1"
        )
    if model_url is not None and model is None and task != "command":
        raise ConfigError(f"AIPLANE_MODEL is not set: expected the Model name to send to {model_url}")
    return ShardConfig(
        shard=shard,
        shards=shards,
        task=task,
        input=source,
        output=output,
        job=_text(env, "AIPLANE_JOB"),
        model=model,
        model_url=model_url,
        model_path=_text(env, "AIPLANE_MODEL_PATH"),
        api_key=_text(env, "AIPLANE_API_KEY"),
        text_field=_text(env, "AIPLANE_TEXT_FIELD") or ("prompt" if task == "generate" else "text"),
        id_field=_text(env, "AIPLANE_ID_FIELD") or "id",
        concurrency=_int(env, "AIPLANE_CONCURRENCY", 4, 1, "requests in flight, an integer >= 1"),
        max_tokens=_int(env, "AIPLANE_MAX_TOKENS", 128, 1, "tokens to generate per row, an integer >= 1"),
        temperature=_float(env, "AIPLANE_TEMPERATURE", 0.0, 0.0, "a sampling temperature >= 0"),
        batch_size=_int(env, "AIPLANE_BATCH_SIZE", 64, 1, "rows per model call, an integer >= 1"),
        retries=_int(env, "AIPLANE_RETRIES", 8, 1, "attempts per request, an integer >= 1"),
        request_timeout=_float(env, "AIPLANE_REQUEST_TIMEOUT", 600.0, 0.001, "seconds per request, > 0"),
        threads=_int(env, "AIPLANE_THREADS", 0, 0, "onnxruntime threads, an integer >= 0 (0: its default)"),
        command=_command(env) if task == "command" else (),
    )


def termination_log_path(env: Mapping[str, str]) -> str | None:
    """``AIPLANE_TERMINATION_LOG`` (empty disables it), else Kubernetes' file when writable."""
    if "AIPLANE_TERMINATION_LOG" in env:
        return env["AIPLANE_TERMINATION_LOG"].strip() or None
    if os.path.exists(K8S_TERMINATION_LOG) and os.access(K8S_TERMINATION_LOG, os.W_OK):
        return K8S_TERMINATION_LOG
    return None
