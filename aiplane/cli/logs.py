"""``aiplane logs``: log files of a model's replicas or a job's workers, tailed or followed.

``aiplane logs MODEL`` reads ``AIPLANE_HOME/logs/<model>/``; ``aiplane logs job/NAME``
(or ``trainingjob/NAME``, ``tj/NAME``, ``batchjob/NAME``, ``bj/NAME``) reads the job's
``AIPLANE_HOME/logs/jobs/<kind>-<name>/``, one file per worker (or BatchJob slot),
each line prefixed with its file's name, as ``kubectl logs`` prefixes pods.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from aiplane.errors import NotFoundError
from aiplane.runtime.local.paths import aiplane_home, logs_dir
from aiplane.runtime.local.workloads import JOB_TARGETS


def _roots(target: str) -> tuple[list[Path], str]:
    """The directories holding ``target``'s logs, and how to name it in an error."""
    logs = logs_dir(aiplane_home())
    prefix, slash, name = target.partition("/")
    if not slash:
        return [logs / target], f"model {target!r}"
    kinds = JOB_TARGETS.get(prefix.lower())
    if kinds is None:
        known = "MODEL, job/NAME, trainingjob/NAME, batchjob/NAME"
        raise NotFoundError(f"unknown log target {target!r} (expected {known})")
    return [logs / "jobs" / f"{kind.lower()}-{name}" for kind in kinds], f"job {name!r}"


def _files(target: str, replica: str | None) -> list[Path]:
    roots, what = _roots(target)
    files = [f for root in roots if root.exists() for f in root.glob("*.log")]
    files.sort(key=lambda p: (p.parent.name, p.stem))
    if replica:
        files = [f for f in files if f.stem == replica]
    if not files:
        what = f"{replica!r} of {what}" if replica else what
        raise NotFoundError(f"no logs for {what} under {roots[0].parent}")
    return files


def _tail(path: Path, lines: int) -> str:
    data = path.read_bytes()[-256 * 1024 :]
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def stream_logs(target: str, replica: str | None, follow: bool, lines: int) -> None:
    files = _files(target, replica)
    many = len(files) > 1
    offsets: dict[Path, int] = {}
    for path in files:
        text = _tail(path, lines)
        for line in text.splitlines():
            sys.stdout.write(f"[{path.stem}] {line}\n" if many else f"{line}\n")
        offsets[path] = path.stat().st_size
    sys.stdout.flush()
    while follow:
        time.sleep(0.25)
        for path in _files(target, replica):
            size = path.stat().st_size
            start = offsets.get(path, 0)
            if size > start:
                with path.open("rb") as fh:
                    fh.seek(start)
                    chunk = fh.read(size - start).decode(errors="replace")
                for line in chunk.splitlines():
                    sys.stdout.write(f"[{path.stem}] {line}\n" if many else f"{line}\n")
                sys.stdout.flush()
            offsets[path] = size
