"""Rich tables and formatting shared by CLI commands."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def age(since: float | None, now: float | None = None) -> str:
    """Kubernetes-style age: 45s, 12m, 3h, 2d."""
    if since is None:
        return "-"
    seconds = max(0, int((now or time.time()) - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(*columns: str) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        t.add_column(column)
    return t


def event_line(ref: str, reason: str, message: str) -> str:
    style = "red" if reason in ("CrashLoopBackOff", "Unschedulable", "EngineError") else "cyan"
    return f"[{style}]{reason:<16}[/{style}] {ref}: {message}"
