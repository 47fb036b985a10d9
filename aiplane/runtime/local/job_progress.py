"""How far a local job got: its workers' progress lines, read from their log files.

Workers print :mod:`aiplane.progress` lines to stdout, which the runner sends to one
log file per worker (or BatchJob slot). :class:`LogTail` reads what a file gained
since the last look, whole lines only, so the runner never parses half a line. For a
TrainingJob, rank 0's lines are the job's progress; for a BatchJob,
:func:`batch_progress` adds the shards the output directory says are done (their
manifests) to what the running shards reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiplane import progress

MAX_READ = 1 << 20  # a look reads at most this much; a flood of output is skipped, not parsed


class LogTail:
    """The progress lines a log file gains, from where it was when the tail was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.offset = path.stat().st_size
        except OSError:
            self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # truncated or replaced: start over
            self.offset = 0
        if size == self.offset:
            return []
        start = max(self.offset, size - MAX_READ)
        with self.path.open("rb") as fh:
            fh.seek(start)
            data = fh.read(size - start)
        end = data.rfind(b"\n")
        if end < 0:
            return []  # no whole line yet
        self.offset = start + end + 1
        lines = data[: end + 1].decode(errors="replace").splitlines()
        return [fields for line in lines if (fields := progress.parse(line))]


def batch_progress(
    shards: int,
    done: Iterable[int],
    done_rows: int,
    done_errors: int,
    live: Mapping[int, Mapping[str, Any]],
) -> dict[str, Any]:
    """A BatchJob's progress: finished shards from the output, running ones from their lines.

    ``live`` maps a shard to its last progress line (shards that finished are taken
    from the output, not from their last line, so nothing counts twice).
    """
    finished = set(done)
    running = {s: f for s, f in live.items() if s not in finished}
    live_errors = sum(int(f.get("errors") or 0) for f in running.values())
    # a shard's line counts the rows it processed, good and bad; "rows" here are good ones
    rows = done_rows + sum(int(f.get("rows") or 0) for f in running.values()) - live_errors
    errors = done_errors + live_errors
    rate = sum(float(f.get("rows_per_s") or 0) for f in running.values())
    out: dict[str, Any] = {"completed": len(finished), "shards": shards, "rows": rows, "errors": errors}
    if running:
        out["rows_per_s"] = round(rate, 1)
    return out
