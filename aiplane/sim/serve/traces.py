"""Read LLM request traces: the Azure LLM inference CSV and the Mooncake JSONL format.

* Azure (Patel et al., "Splitwise", ISCA 2024): ``TIMESTAMP,ContextTokens,GeneratedTokens``
  with timestamps like ``2023-11-16 18:17:03.9799600``. It has no prompt content, so each
  request gets prefix blocks of its own (ids no other request shares): no prefix hits.
* Mooncake (Qin et al., "Mooncake", FAST 2025): one JSON object a line, ``timestamp``
  (ms), ``input_length``, ``output_length`` and ``hash_ids``, the ids of the prompt's
  512-token blocks (equal leading ids: a shared prefix).

The format is told by content (a JSON object on the first line, or a CSV header naming
the Azure columns), the suffix only breaking a tie. A bad line fails with
``file:line: field: expected ... (got ...)`` before anything is simulated. Arrival times
are seconds from the first request.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aiplane.sim.traces import TraceError

BLOCK_TOKENS = 512  # the Mooncake trace's block size; Azure requests are cut the same way
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True)
class TraceRequest:
    arrival: float  # seconds since the trace's first request
    prompt_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]  # ids of the prompt's 512-token blocks, in order


@dataclass(frozen=True)
class Trace:
    name: str
    format: str  # "azure" | "mooncake"
    requests: tuple[TraceRequest, ...]

    @property
    def duration(self) -> float:
        return self.requests[-1].arrival - self.requests[0].arrival if self.requests else 0.0

    @property
    def has_prefixes(self) -> bool:
        return self.format == "mooncake"

    def scaled(self, multiplier: float, seed: int = 0, jitter: float = 5.0) -> Trace:
        """The same hour with ``multiplier`` times the users: whole copies of the trace
        superposed, each request of a copy moved by up to ``jitter`` seconds, plus a
        random share of one more copy for the fraction (below 1, a random thinning).

        Unlike time compression this keeps the trace's duration and the shape of its
        bursts against a replica's cold start: compressing an hour 16x leaves a
        3.5-minute trace, barely three cold starts long, which no autoscaler could
        follow. Each copy's prefix blocks are its own (other users do not share this
        user's cache), so copies add load, not cache hits."""
        rng = random.Random(seed)
        whole, part = int(multiplier), multiplier - int(multiplier)
        stride = 1 + max((b for r in self.requests for b in r.blocks), default=0)
        out: list[TraceRequest] = []
        for copy in range(whole + (1 if part > 0 else 0)):
            for r in self.requests:
                if copy == whole and rng.random() >= part:
                    continue
                shift = 0.0 if copy == 0 else rng.uniform(-jitter, jitter)
                blocks = r.blocks if copy == 0 else tuple(b + copy * stride for b in r.blocks)
                out.append(
                    TraceRequest(max(0.0, r.arrival + shift), r.prompt_tokens, r.output_tokens, blocks)
                )
        out.sort(key=lambda r: r.arrival)
        return Trace(f"{self.name} x{multiplier:g}", self.format, tuple(out))

    def compressed(self, multiplier: float) -> Trace:
        """The same requests arriving ``multiplier`` times faster (time compression)."""
        return Trace(
            f"{self.name} x{multiplier:g}",
            self.format,
            tuple(
                TraceRequest(r.arrival / multiplier, r.prompt_tokens, r.output_tokens, r.blocks)
                for r in self.requests
            ),
        )


def blocks_for(tokens: int) -> int:
    return max(1, math.ceil(tokens / BLOCK_TOKENS))


def detect_format(path: Path, first_line: str) -> str:
    text = first_line.strip()
    if text.startswith("{"):
        return "mooncake"
    header = [c.strip() for c in text.split(",")]
    if all(c in header for c in AZURE_COLUMNS):
        return "azure"
    if path.suffix in (".jsonl", ".json"):
        return "mooncake"
    if path.suffix == ".csv":
        return "azure"
    raise TraceError(
        f"{path}:1: expected a CSV header {','.join(AZURE_COLUMNS)} (Azure) or a JSON object with "
        f"{', '.join(MOONCAKE_FIELDS)} (Mooncake) (got {text[:60]!r})"
    )


def read_trace(path: Path, limit: int | None = None) -> Trace:
    """The requests of ``path`` in arrival order (the first ``limit`` of them, if given)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            first = f.readline()
            f.seek(0)
            fmt = detect_format(path, first)
            requests = _read_azure(path, f, limit) if fmt == "azure" else _read_mooncake(path, f, limit)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not a text file: {exc.reason}") from None
    if not requests:
        raise TraceError(f"{path}: no requests")
    requests.sort(key=lambda r: r.arrival)  # stable: equal times keep file order
    start = requests[0].arrival
    shifted = tuple(
        TraceRequest(r.arrival - start, r.prompt_tokens, r.output_tokens, r.blocks) for r in requests
    )
    return Trace(path.name, fmt, shifted)


def _count(path: Path, line: int, field: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise TraceError(f"{path}:{line}: {field}: expected an integer >= {minimum} (got {value!r})")
    try:
        number = float(value)
    except ValueError:
        raise TraceError(
            f"{path}:{line}: {field}: expected an integer >= {minimum} (got {value!r})"
        ) from None
    if not number.is_integer() or number < minimum:
        raise TraceError(f"{path}:{line}: {field}: expected an integer >= {minimum} (got {value!r})")
    return int(number)


def _timestamp(path: Path, line: int, text: str) -> float:
    value = text.strip()
    # Seven fractional digits (Azure's) are more than datetime reads: keep microseconds.
    head, dot, frac = value.partition(".")
    try:
        parsed = datetime.fromisoformat(f"{head}.{frac[:6]}" if dot else head)
    except ValueError:
        raise TraceError(
            f"{path}:{line}: TIMESTAMP: expected a date and time like 2023-11-16 18:17:03.97 (got {text!r})"
        ) from None
    return parsed.timestamp()


def _read_azure(path: Path, f: Iterable[str], limit: int | None) -> list[TraceRequest]:
    reader = csv.DictReader(f)
    missing = [c for c in AZURE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(
            f"{path}:1: header: expected columns {','.join(AZURE_COLUMNS)} (got {reader.fieldnames})"
        )
    out: list[TraceRequest] = []
    next_block = 0
    for i, row in enumerate(reader):
        if limit is not None and len(out) >= limit:
            break
        line = i + 2
        if None in row or any(row.get(c) is None for c in AZURE_COLUMNS):
            raise TraceError(f"{path}:{line}: row: expected {len(AZURE_COLUMNS)} columns (got {len(row)})")
        arrival = _timestamp(path, line, row["TIMESTAMP"])
        prompt = _count(path, line, "ContextTokens", row["ContextTokens"].strip(), minimum=1)
        output = _count(path, line, "GeneratedTokens", row["GeneratedTokens"].strip(), minimum=1)
        n = blocks_for(prompt)
        out.append(TraceRequest(arrival, prompt, output, tuple(range(next_block, next_block + n))))
        next_block += n
    return out


def _read_mooncake(path: Path, f: Iterable[str], limit: int | None) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    for i, text in enumerate(f):
        if limit is not None and len(out) >= limit:
            break
        line = i + 1
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(
                f"{path}:{line}: line: expected a JSON object (got invalid JSON: {exc.msg})"
            ) from None
        if not isinstance(obj, dict):
            raise TraceError(f"{path}:{line}: line: expected a JSON object (got {type(obj).__name__})")
        for field in MOONCAKE_FIELDS:
            if field not in obj:
                raise TraceError(f"{path}:{line}: {field}: expected a value (got nothing)")
        stamp = obj["timestamp"]
        if isinstance(stamp, bool) or not isinstance(stamp, int | float) or stamp < 0:
            raise TraceError(f"{path}:{line}: timestamp: expected milliseconds >= 0 (got {stamp!r})")
        prompt = _count(path, line, "input_length", obj["input_length"], minimum=1)
        output = _count(path, line, "output_length", obj["output_length"], minimum=1)
        ids = obj["hash_ids"]
        if not isinstance(ids, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in ids):
            raise TraceError(
                f"{path}:{line}: hash_ids: expected a list of integer block ids (got {ids!r:.60})"
            )
        out.append(TraceRequest(stamp / 1000.0, prompt, output, tuple(ids)))
    return out
