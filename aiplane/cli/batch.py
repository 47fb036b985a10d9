"""``aiplane run-shard``: one BatchJob shard, configured by ``AIPLANE_*`` variables.

The same command in a Kubernetes pod and in a local process; everything it does is in
:mod:`aiplane.batch`. This only makes SIGTERM a clean stop (temporary files removed,
exit 143) and turns the result into the exit code.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import typer

EXIT_SIGTERM = 128 + signal.SIGTERM


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_SIGTERM)


def run_shard() -> None:
    """Process one shard of a BatchJob (AIPLANE_SHARD of AIPLANE_SHARDS, AIPLANE_TASK on AIPLANE_INPUT).

    Writes AIPLANE_OUTPUT/shard-NNNNN-of-NNNNN.{jsonl,errors.jsonl,manifest.json}, the manifest last;
    a shard whose manifest is there is skipped. Exit 0 when done, 2 for a configuration error.
    """
    from aiplane.batch.runner import run_env

    signal.signal(signal.SIGTERM, _stop)
    code = run_env(os.environ, stdout=sys.stdout, stderr=sys.stderr)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``run-shard`` to ``app``."""
    app.command("run-shard")(run_shard)
