"""Where the local plane keeps its state: ``AIPLANE_HOME`` (default ~/.local/share/aiplane)."""

from __future__ import annotations

import os
from pathlib import Path


def aiplane_home() -> Path:
    home = os.environ.get("AIPLANE_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".local" / "share" / "aiplane"
    base.mkdir(parents=True, exist_ok=True)
    return base


def db_path(home: Path) -> Path:
    return home / "state.db"


def logs_dir(home: Path) -> Path:
    path = home / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path
