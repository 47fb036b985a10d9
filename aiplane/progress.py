"""The progress line: how a training worker or batch shard tells aiplane how far it got.

A job process prints one line per report on stdout (or stderr)::

    AIPLANE_PROGRESS {"step": 120, "loss": 2.31, "samples_per_s": 850.5}

the marker, one space, one JSON object on one line. It is a line and not an API call so
that any process in any image can report, with or without aiplane installed, and so
that both runtimes read it the same way: the local runtime from the worker's log
file, Kubernetes from the pod's log. The last line wins; keys merge, so a worker may
report ``resumed_from`` once and ``step``/``loss`` on every step.

Keys aiplane shows (others are kept and shown as they are):

- training: ``step``, ``total_steps``, ``loss``, ``samples_per_s`` or ``tokens_per_s``,
  ``resumed_from`` (the checkpoint step this run started from), ``checkpoint_step``
  (the last step saved);
- batch shards: ``shard``, ``rows``, ``total``, ``errors``, ``rows_per_s``.

:func:`report` prints one; :func:`parse` and :func:`merge_lines` read them back.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

MARKER = "AIPLANE_PROGRESS "


def line(**fields: Any) -> str:
    """The progress line of ``fields`` (no newline)."""
    return MARKER + json.dumps(fields, separators=(",", ":"), allow_nan=False, default=str)


def report(stream: TextIO | None = None, **fields: Any) -> None:
    """Print one progress line and flush it, so a log reader sees it at once."""
    out = stream or sys.stdout
    out.write(line(**fields) + "\n")
    out.flush()


def parse(text: str) -> dict[str, Any] | None:
    """The fields of one progress line, or None for any other line (or a broken one)."""
    at = text.find(MARKER)
    if at < 0:
        return None
    try:
        value = json.loads(text[at + len(MARKER) :])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def merge_lines(lines: Iterable[str], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every progress line of ``lines`` merged in order: later keys win."""
    merged = dict(into or {})
    for text in lines:
        fields = parse(text)
        if fields:
            merged.update(fields)
    return merged


def summary(fields: dict[str, Any]) -> str:
    """One short human line: ``step 120/400 loss 2.31 850 samples/s`` or ``rows 900/2000``."""
    parts: list[str] = []
    if "shards" in fields:
        parts.append(f"{fields.get('completed', 0)}/{fields['shards']} shards")
    if "step" in fields:
        total = fields.get("total_steps")
        parts.append(f"step {fields['step']}" + (f"/{total}" if total else ""))
    if isinstance(fields.get("loss"), int | float):
        parts.append(f"loss {fields['loss']:.4g}")
    if "rows" in fields:
        total = fields.get("total")
        parts.append(f"rows {fields['rows']}" + (f"/{total}" if total else ""))
    for key, unit in (("samples_per_s", "samples/s"), ("tokens_per_s", "tokens/s"), ("rows_per_s", "rows/s")):
        if isinstance(fields.get(key), int | float):
            parts.append(f"{fields[key]:.0f} {unit}")
    if fields.get("errors"):
        parts.append(f"{fields['errors']} bad rows")
    if fields.get("resumed_from"):
        parts.append(f"resumed from step {fields['resumed_from']}")
    return " ".join(parts)
