"""The ``command`` task: the user's program processes the shard; run-shard makes it atomic.

The child gets run-shard's environment plus ``AIPLANE_SHARD_OUTPUT``, a temporary
path in the output directory. On exit 0 what it wrote there is moved into place and
the manifest written, so command shards are skipped when done and never half-done,
like the built-in tasks. SIGTERM (preemption, drain) is passed on to the child; a
non-zero exit is the shard's exit code. The child's stdout is relayed line by line, and
its ``AIPLANE_PROGRESS`` lines give the manifest its row counts.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TextIO

from aiplane.batch.errors import CommandFailed, ConfigError
from aiplane.batch.output import Manifest, write_manifest
from aiplane.batch.shards import ShardNames
from aiplane.batch.storage import OutputDir
from aiplane.progress import merge_lines

STOP_GRACE_S = 30.0


def run_command(
    argv: tuple[str, ...],
    env: Mapping[str, str],
    out: OutputDir,
    names: ShardNames,
    fields: Manifest,
    *,
    stdout: TextIO,
    now: Callable[[], str],
) -> Manifest:
    """Run the child to its end; on success commit its output and write the manifest."""
    target = out.child_file(names.output)
    child_env = {**env, "AIPLANE_SHARD_OUTPUT": target.path}
    try:
        proc = subprocess.Popen(list(argv), env=child_env, stdout=subprocess.PIPE)
    except OSError as exc:
        raise ConfigError(f"AIPLANE_COMMAND: cannot run {argv[0]!r} ({exc.strerror or exc})") from exc

    def forward(signum: int, frame: FrameType | None) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    progress: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode(errors="replace")
            stdout.write(text)
            stdout.flush()
            progress = merge_lines([text], progress)
        code = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        target.abort()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        target.abort()
        exit_code = 128 - code if code < 0 else code
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        raise CommandFailed(f"AIPLANE_COMMAND {argv[0]} {how}; the shard is not done", exit_code)
    committed = target.commit()
    reported_rows = progress.get("rows")
    rows = reported_rows if isinstance(reported_rows, int) else committed[1] if committed else 0
    errors = progress.get("errors") if isinstance(progress.get("errors"), int) else 0
    manifest: Manifest = {
        "shard": names.shard,
        "shards": names.shards,
        "rows": rows,
        "errors": errors,
        **fields,
        "finished_at": now(),
        "output": names.output if committed else None,
        "errors_file": None,
        "sha256": committed[0] if committed else None,
    }
    write_manifest(out, names, manifest)
    return manifest
