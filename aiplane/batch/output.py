"""A shard's results: the output and errors files, then the manifest that marks it done.

A shard is done iff its manifest exists and the output it names has the sha256 it
records (the errors file too). The manifest is written last, each file atomically
(:mod:`aiplane.batch.storage`), so a crash at any point leaves either a done shard with
complete files or a shard that is not done and is redone whole. :func:`scan` reads
manifests only, for status; it never writes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiplane.batch.rows import BadRow
from aiplane.batch.shards import ShardNames, parse_manifest_name
from aiplane.batch.storage import AtomicFile, OutputDir, open_output

FLUSH_LINES = 256
Manifest = dict[str, Any]


def encode_lines(lines: list[str]) -> bytes:
    """UTF-8; a lone surrogate (JSON allows ``"\\ud800"``) becomes that escape again, still JSON."""
    return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")


class ShardWriter:
    """Writes good rows and bad rows to temporary files; :meth:`commit` publishes them.

    Leaving the ``with`` block without a commit (an exception, SIGTERM) removes the
    temporary files: nothing of the shard becomes visible.
    """

    def __init__(self, out: OutputDir, names: ShardNames) -> None:
        self.out, self.names = out, names
        self.rows = self.errors = 0
        self._good: list[str] = []
        self._bad: list[str] = []
        self._files: list[AtomicFile] = []
        self._committed = False

    def __enter__(self) -> ShardWriter:
        self._output = self.out.create(self.names.output)
        self._files.append(self._output)
        self._errors = self.out.create(self.names.errors)
        self._files.append(self._errors)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            for f in self._files:
                f.abort()

    def good(self, line: str) -> None:
        self._good.append(line)
        self.rows += 1
        if len(self._good) >= FLUSH_LINES:
            self._flush()

    def bad(self, row: BadRow) -> None:
        self._bad.append(row.line())
        self.errors += 1
        if len(self._bad) >= FLUSH_LINES:
            self._flush()

    def _flush(self) -> None:
        if self._good:
            self._output.write(encode_lines(self._good))
            self._good.clear()
        if self._bad:
            self._errors.write(encode_lines(self._bad))
            self._bad.clear()

    def commit(self, fields: Manifest) -> Manifest:
        """Publish output, then errors, then the manifest (``fields`` plus counts and hashes)."""
        self._flush()
        manifest = {
            "shard": self.names.shard,
            "shards": self.names.shards,
            "rows": self.rows,
            "errors": self.errors,
            **fields,
            "output": self.names.output,
            "errors_file": self.names.errors,
            "sha256": self._output.commit(),
            "errors_sha256": self._errors.commit(),
        }
        write_manifest(self.out, self.names, manifest)
        self._committed = True
        return manifest


def write_manifest(out: OutputDir, names: ShardNames, manifest: Manifest) -> None:
    file = out.create(names.manifest)
    try:
        file.write(json.dumps(manifest, indent=1, default=str).encode() + b"\n")
        file.commit()
    except BaseException:
        file.abort()
        raise


def read_manifest(out: OutputDir, names: ShardNames) -> Manifest | None:
    raw = out.read_bytes(names.manifest)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def check_done(out: OutputDir, names: ShardNames, expect: Manifest) -> tuple[Manifest | None, str]:
    """``(manifest, "done")`` when the shard is done, else ``(None, why not)``.

    ``expect`` holds manifest fields that must match (task, input): a manifest of
    another job's run in the same directory does not count.
    """
    manifest = read_manifest(out, names)
    if manifest is None:
        return None, "no manifest"
    if not manifest:
        return None, "the manifest is not a JSON object"
    for key, value in {"shard": names.shard, "shards": names.shards, **expect}.items():
        if manifest.get(key) != value:
            return None, f"the manifest's {key} is {manifest.get(key)!r}, not {value!r}"
    if not all(isinstance(manifest.get(k), int) for k in ("rows", "errors")):
        return None, "the manifest has no row counts"
    for name_key, hash_key in (("output", "sha256"), ("errors_file", "errors_sha256")):
        name = manifest.get(name_key)
        if name is None:
            continue
        if not isinstance(name, str) or "/" in name:
            return None, f"the manifest's {name_key} is {name!r}"
        actual = out.sha256(name)
        if actual is None:
            return None, f"{name} is missing"
        if manifest.get(hash_key) is not None and actual != manifest.get(hash_key):
            return None, f"{name} does not have the manifest's sha256"
    return manifest, "done"


def remove_temps(out: OutputDir, names: ShardNames) -> list[str]:
    """Delete temporary files an earlier (killed) run of this shard left; returns their names."""
    stale = [n for n in out.names() if names.is_temp(n)]
    for name in stale:
        out.remove(name)
    return stale


@dataclass(frozen=True)
class OutputState:
    """What the manifests of an output directory say: which shards are done, rows, errors."""

    shards: int | None = None
    done: frozenset[int] = frozenset()
    rows: int = 0
    errors: int = 0
    unreadable: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return self.shards is not None and len(self.done) == self.shards


def scan(output: str, shards: int | None = None) -> OutputState:
    """Read the manifests in ``output`` (never the data files, never a write).

    Counts manifests of ``shards`` shards; when not given, of the shard count most
    manifests name (a directory re-used with another count holds both).
    """
    out = open_output(output, create=False)
    found: dict[int, list[tuple[int, Manifest]]] = {}
    unreadable: list[str] = []
    for name in out.names():
        parsed = parse_manifest_name(name)
        if parsed is None:
            continue
        shard, count = parsed
        if shards is not None and count != shards:
            continue
        manifest = read_manifest(out, ShardNames(shard, count))
        if not manifest or not all(isinstance(manifest.get(k), int) for k in ("rows", "errors")):
            unreadable.append(name)
            continue
        found.setdefault(count, []).append((shard, manifest))
    if shards is None:
        if not found:
            return OutputState(unreadable=tuple(unreadable))
        sizes = Counter({count: len(items) for count, items in found.items()})
        shards = max(sizes, key=lambda count: (sizes[count], count))
    items = found.get(shards, [])
    return OutputState(
        shards=shards,
        done=frozenset(shard for shard, _ in items if shard < shards),
        rows=sum(m["rows"] for _, m in items),
        errors=sum(m["errors"] for _, m in items),
        unreadable=tuple(unreadable),
    )
