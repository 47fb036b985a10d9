"""``aiplane logs``: replica log files under AIPLANE_HOME/logs/<model>/, tailed or followed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from aiplane.errors import NotFoundError
from aiplane.runtime.local.paths import aiplane_home, logs_dir


def _files(model: str, replica: str | None) -> list[Path]:
    root = logs_dir(aiplane_home()) / model
    files = sorted(root.glob("*.log"), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if replica:
        files = [f for f in files if f.stem == replica]
    if not files:
        what = f"replica {replica!r} of model {model!r}" if replica else f"model {model!r}"
        raise NotFoundError(f"no logs for {what} under {root}")
    return files


def _tail(path: Path, lines: int) -> str:
    data = path.read_bytes()[-256 * 1024 :]
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def stream_logs(model: str, replica: str | None, follow: bool, lines: int) -> None:
    files = _files(model, replica)
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
        for path in _files(model, replica):
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
