"""One shard, start to end: skip it if done, else read its rows, run the task, publish.

:func:`run_env` is the whole of ``aiplane run-shard``: configuration from the
environment, the shard, the termination message, the exit code. :func:`run_shard`
is the same without the environment, for tests and embedding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aiplane.batch.command import run_command
from aiplane.batch.config import ShardConfig, load_config, termination_log_path
from aiplane.batch.errors import BatchError, ConfigError, ShardFailed
from aiplane.batch.inputs import open_input
from aiplane.batch.meter import Meter
from aiplane.batch.output import Manifest, ShardWriter, check_done, remove_temps
from aiplane.batch.rows import BadRow, Fields, Item, to_items
from aiplane.batch.shards import ShardNames, shard_range
from aiplane.batch.storage import OutputDir, open_output
from aiplane.batch.tasks import Task
from aiplane.errors import AiplaneError
from aiplane.progress import report

if TYPE_CHECKING:
    from aiplane.engines.minilm import MiniLMEmbedder

TERMINATION_LOG_LIMIT = 4096


@dataclass(frozen=True)
class ShardResult:
    shard: int
    rows: int
    errors: int
    skipped: bool
    manifest: Manifest

    def summary(self) -> dict[str, Any]:
        """The termination message: what the operator counts."""
        return {"shard": self.shard, "rows": self.rows, "errors": self.errors, "skipped": self.skipped}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fields_of(config: ShardConfig) -> Fields:
    return Fields(text=config.text_field, id=config.id_field, messages=config.task == "generate")


def build_task(config: ShardConfig, embedder: MiniLMEmbedder | None = None) -> Task:
    """The task object; for in-process embed this loads the model (once per process)."""
    from aiplane.batch.openai_client import OpenAIClient

    def client() -> OpenAIClient:
        assert config.model_url is not None
        return OpenAIClient(
            config.model_url,
            api_key=config.api_key,
            concurrency=config.concurrency,
            retries=config.retries,
            timeout=config.request_timeout,
        )

    if config.task == "generate":
        from aiplane.batch.generate import Generate

        assert config.model is not None
        return Generate(
            client(),
            config.model,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            concurrency=config.concurrency,
        )
    from aiplane.batch.embed import LocalEmbed, RemoteEmbed

    if config.model_url is not None:
        assert config.model is not None
        return RemoteEmbed(client(), config.model, config.batch_size, config.concurrency)
    if embedder is None:
        embedder = load_embedder(config)
    return LocalEmbed(embedder, config.batch_size)


def load_embedder(config: ShardConfig) -> MiniLMEmbedder:
    try:
        from aiplane.engines.minilm import MiniLMEmbedder
    except ImportError as exc:
        raise ConfigError(
            "AIPLANE_MODEL_URL is not set, so embed runs in-process, which needs aiplane[embeddings] "
            f"({exc.name} is missing)"
        ) from exc
    try:
        return MiniLMEmbedder(config.model_path, threads=config.threads)
    except AiplaneError as exc:
        where = f"AIPLANE_MODEL_PATH={config.model_path!r}: " if config.model_path else ""
        raise ConfigError(f"{where}{exc}") from exc


def check_paths(config: ShardConfig) -> None:
    """An output inside a local input directory would be read as input by the next shard."""
    if "://" in config.input or "://" in config.output or not os.path.isdir(config.input):
        return
    source, target = Path(config.input).resolve(), Path(config.output).resolve()
    if target == source or source in target.parents:
        raise ConfigError(f"AIPLANE_OUTPUT {config.output}: inside the input directory {config.input}")


def run_shard(
    config: ShardConfig,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    embedder: MiniLMEmbedder | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], str] = utc_now,
) -> ShardResult:
    """Process ``config``'s shard, or skip it when its output is already done."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    check_paths(config)
    out = open_output(config.output, create=True)
    names = ShardNames(config.shard, config.shards)
    remove_temps(out, names)
    expect = {"task": config.task, "input": config.input}
    manifest, why = check_done(out, names, expect)
    if manifest is not None:
        result = ShardResult(config.shard, manifest["rows"], manifest["errors"], True, manifest)
        done = result.rows + result.errors  # progress counts rows processed, good and bad
        report(
            stdout, shard=config.shard, rows=done, total=done, errors=result.errors, skipped=True, done=True
        )
        return result
    if why != "no manifest":
        stderr.write(f"shard {config.shard}: redoing it, {why}\n")
        out.remove(names.manifest)
    fields = {**expect, "job": config.job}
    if config.task == "command":
        child_env = os.environ if env is None else env
        manifest = run_command(config.command, child_env, out, names, fields, stdout=stdout, now=now)
        report(stdout, shard=config.shard, rows=manifest["rows"], errors=manifest["errors"], done=True)
        return ShardResult(config.shard, manifest["rows"], manifest["errors"], False, manifest)
    try:
        return _run_rows(config, out, names, fields, stdout, stderr, embedder, clock, now)
    except OSError as exc:  # reading errors are mapped where the input is read: this is the output
        raise ShardFailed(f"AIPLANE_OUTPUT {config.output}: {exc}") from exc


def _run_rows(
    config: ShardConfig,
    out: OutputDir,
    names: ShardNames,
    fields: Manifest,
    stdout: TextIO,
    stderr: TextIO,
    embedder: MiniLMEmbedder | None,
    clock: Callable[[], float],
    now: Callable[[], str],
) -> ShardResult:
    row_fields = fields_of(config)
    source = open_input(config.input, (row_fields.text, row_fields.id, "messages"))
    rows = shard_range(source.count(), config.shard, config.shards)
    meter = Meter(config.shard, len(rows), stdout=stdout, stderr=stderr, clock=clock)
    task = build_task(config, embedder)
    meter.start()
    items = to_items(rows.start, source.read(rows.start, rows.stop), row_fields)
    with ShardWriter(out, names) as writer:
        asyncio.run(_drive(task, items, writer, meter))
        if writer.rows + writer.errors != len(rows):
            raise ShardFailed(f"shard {config.shard}: read {writer.rows + writer.errors} rows of {len(rows)}")
        manifest = writer.commit(
            {
                "first_row": rows.start if rows else None,
                "last_row": rows.stop - 1 if rows else None,
                **fields,
                "finished_at": now(),
            }
        )
    meter.close(done=True)
    return ShardResult(config.shard, writer.rows, writer.errors, False, manifest)


async def _drive(task: Task, items: Iterator[Item | BadRow], writer: ShardWriter, meter: Meter) -> None:
    async with aclosing(task.outcomes(items)) as outcomes:
        async for outcome in outcomes:
            if isinstance(outcome, BadRow):
                writer.bad(outcome)
            else:
                writer.good(outcome)
            meter.update(writer.rows + writer.errors, writer.errors)


def write_termination_log(path: str | None, message: dict[str, Any]) -> None:
    """Kubernetes copies this file into the pod's terminated state (at most 4096 bytes)."""
    if path is None:
        return
    text = json.dumps(message, separators=(",", ":"), default=str)
    if len(text.encode()) > TERMINATION_LOG_LIMIT:
        text = json.dumps({**message, "error": str(message.get("error", ""))[:2000]}, separators=(",", ":"))
    with contextlib.suppress(OSError):
        Path(path).write_text(text)


def run_env(env: Mapping[str, str], *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``aiplane run-shard``: the exit code; errors are one line on ``stderr``, never a traceback."""
    stderr = stderr or sys.stderr
    log = termination_log_path(env)
    raw_shard = env.get("AIPLANE_SHARD", "").strip()
    shard: int | str = int(raw_shard) if raw_shard.isdigit() else raw_shard
    try:
        config = load_config(env)
        result = run_shard(config, env=env, stdout=stdout, stderr=stderr)
    except BatchError as exc:
        stderr.write(f"error: {exc}\n")
        write_termination_log(log, {"shard": shard, "error": str(exc)})
        return exc.exit_code
    except AiplaneError as exc:
        stderr.write(f"error: {exc}\n")
        write_termination_log(log, {"shard": shard, "error": str(exc)})
        return 1
    except Exception as exc:  # a bug: the caller prints it; the operator still learns the shard failed
        write_termination_log(log, {"shard": shard, "error": f"internal error: {type(exc).__name__}: {exc}"})
        raise
    write_termination_log(log, result.summary())
    return 0
