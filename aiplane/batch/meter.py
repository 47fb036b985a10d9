"""How far the shard got: ``AIPLANE_PROGRESS`` lines on stdout, a tqdm bar on a terminal.

The lines are what both runtimes read (the local one from the log file, Kubernetes
from the pod log): at most one a second, and one at the end. The bar is for a person
watching, so only when stderr is a TTY.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from aiplane.progress import report


class Meter:
    """Counts rows done; reports at most every ``interval`` seconds of ``clock``."""

    def __init__(
        self,
        shard: int,
        total: int,
        *,
        stdout: TextIO,
        stderr: TextIO,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
        bar: bool | None = None,
    ) -> None:
        self.shard, self.total = shard, total
        self.stdout, self.stderr = stdout, stderr
        self.clock, self.interval = clock, interval
        self.rows = self.errors = 0
        self.started = self._last = clock()
        self._bar_wanted = stderr.isatty() if bar is None else bar
        self._bar: Any = None
        report(self.stdout, shard=shard, rows=0, total=total, errors=0)

    def start(self) -> None:
        """Rows per second count from now (after the model loaded), and the bar appears."""
        self.started = self.clock()
        if self._bar_wanted:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                unit="rows",
                file=self.stderr,
                desc=f"shard {self.shard}",
                dynamic_ncols=True,
            )

    def rate(self, now: float) -> float:
        elapsed = now - self.started
        return round(self.rows / elapsed, 1) if elapsed > 0 else 0.0

    def update(self, rows: int, errors: int) -> None:
        """``rows`` processed so far (good and bad), ``errors`` of them bad."""
        if self._bar is not None:
            self._bar.update(rows - self.rows)
        self.rows, self.errors = rows, errors
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._report(now)

    def _report(self, now: float, **extra: Any) -> None:
        fields = {"rows": self.rows, "total": self.total, "errors": self.errors, "rows_per_s": self.rate(now)}
        report(self.stdout, shard=self.shard, **fields, **extra)

    def close(self, **extra: Any) -> None:
        """The last line, whatever the interval (``extra``: e.g. ``done=True``)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._report(self.clock(), **extra)
