"""Input rows: JSONL, CSV or Parquet, local or through fsspec, numbered over the whole input.

Every shard counts the input (cheaply: newlines, CSV records, Parquet metadata) and
reads only its own range, so shards agree on the numbering without talking to each
other. A directory is its files (sorted by name; hidden, ``_``-prefixed and unknown
extensions skipped) concatenated. ``.gz`` works for JSONL and CSV.

Readers yield one value per row: the parsed JSON value or record dict, or
:class:`~aiplane.batch.rows.Unreadable` with the reason; :mod:`aiplane.batch.rows`
checks the fields.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from aiplane.batch.errors import InputError, ShardFailed
from aiplane.batch.remote import filesystem
from aiplane.batch.rows import Unreadable

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
EXPECTED = "expected .jsonl, .ndjson, .csv or .parquet (.jsonl.gz and .csv.gz too)"
CHUNK = 1 << 20
CSV_FIELD_LIMIT = 2**31 - 1


class Source(Protocol):
    """Rows of an input: ``count()`` them, ``read(start, stop)`` a range of them in order."""

    def count(self) -> int: ...

    def read(self, start: int, stop: int) -> Iterator[object]: ...


@dataclass(frozen=True)
class File:
    """One input file; ``fs`` is an fsspec filesystem, or None for a local path."""

    path: str
    fs: Any = None

    def open(self, gz: bool = False) -> IO[bytes]:
        if self.fs is not None:
            stream: IO[bytes] = self.fs.open(self.path, "rb", compression="gzip" if gz else None)
            return stream
        if gz:
            return cast(IO[bytes], gzip.open(self.path, "rb"))
        return open(self.path, "rb")


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Map I/O errors to one line naming the file: the user's (2) or transient (1)."""
    try:
        yield
    except FileNotFoundError as exc:
        raise InputError(f"AIPLANE_INPUT {path}: no such file") from exc
    except (PermissionError, IsADirectoryError, gzip.BadGzipFile, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"AIPLANE_INPUT {path}: cannot read it ({exc})") from exc
    except OSError as exc:
        raise ShardFailed(f"AIPLANE_INPUT {path}: read failed ({exc})") from exc


def iter_lines(stream: IO[bytes], start: int, stop: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """Lines ``start..stop-1`` (0-based, newline removed) of a byte stream.

    Whole chunks before ``start`` are only counted, not split, so skipping to a late
    shard costs about one ``bytes.count`` per megabyte. A final line without a newline
    is a line; the empty "line" after a final newline is not.
    """
    index, tail = 0, b""  # index: number of the line that ``tail`` begins
    while index < stop:
        data = stream.read(chunk)
        if not data:
            if tail and start <= index:
                yield tail
            return
        newlines = data.count(b"\n")
        if index + newlines < start:
            index, tail = index + newlines, b""  # that line began before start: never yielded
            continue
        parts = (tail + data).split(b"\n")
        tail = parts.pop()
        for part in parts:
            if index >= stop:
                return
            if index >= start:
                yield part
            index += 1


def count_lines(stream: IO[bytes], chunk: int = CHUNK) -> int:
    """Lines as :func:`iter_lines` numbers them."""
    lines, last = 0, b"\n"
    while data := stream.read(chunk):
        lines += data.count(b"\n")
        last = data[-1:]
    return lines + (last != b"\n")


def parse_json_line(line: bytes) -> object:
    if not line.strip():
        return Unreadable("malformed JSON: empty line")
    try:
        return json.loads(line)
    except UnicodeDecodeError:
        return Unreadable("malformed JSON: not UTF-8 text")
    except json.JSONDecodeError as exc:
        return Unreadable(f"malformed JSON: {exc.msg}: column {exc.colno}")
    except RecursionError:
        return Unreadable("malformed JSON: nested too deeply")


class JsonlSource:
    def __init__(self, file: File, gz: bool) -> None:
        self.file, self.gz = file, gz

    def count(self) -> int:
        with reading(self.file.path), self.file.open(self.gz) as stream:
            return count_lines(stream)

    def read(self, start: int, stop: int) -> Iterator[object]:
        with reading(self.file.path), self.file.open(self.gz) as stream:
            for line in iter_lines(stream, start, stop):
                yield parse_json_line(line)


class CsvSource:
    """A header row, then one record per non-empty data row (quoted newlines allowed)."""

    def __init__(self, file: File, gz: bool) -> None:
        self.file, self.gz = file, gz

    @contextlib.contextmanager
    def _records(self) -> Iterator[Iterator[list[str]]]:
        csv.field_size_limit(CSV_FIELD_LIMIT)  # a long text is one field, not an error
        with reading(self.file.path), self.file.open(self.gz) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            try:
                yield (record for record in csv.reader(text) if record)
            except csv.Error as exc:
                raise InputError(f"AIPLANE_INPUT {self.file.path}: not valid CSV ({exc})") from exc

    def count(self) -> int:
        with self._records() as records:
            return max(0, sum(1 for _ in records) - 1)

    def read(self, start: int, stop: int) -> Iterator[object]:
        with self._records() as records:
            header = next(records, None)
            if header is None:
                return
            width = len(header)
            for index, record in enumerate(records):
                if index >= stop:
                    return
                if index < start:
                    continue
                if len(record) != width:
                    yield Unreadable(f"{len(record)} columns, the header has {width}")
                else:
                    yield dict(zip(header, record, strict=True))


class ParquetSource:
    """Rows from the metadata's count; reads only ``columns`` (those the file has)."""

    def __init__(self, file: File, columns: Sequence[str]) -> None:
        self.file, self.columns = file, columns

    @contextlib.contextmanager
    def _parquet(self) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with reading(self.file.path), contextlib.ExitStack() as stack:
            target: Any = self.file.path
            if self.file.fs is not None:
                target = stack.enter_context(self.file.fs.open(self.file.path, "rb"))
            try:
                yield pq.ParquetFile(target)
            except pa.ArrowException as exc:
                raise InputError(
                    f"AIPLANE_INPUT {self.file.path}: not a readable Parquet file ({exc})"
                ) from exc

    def count(self) -> int:
        with self._parquet() as parquet:
            return int(parquet.metadata.num_rows)

    def read(self, start: int, stop: int) -> Iterator[object]:
        with self._parquet() as parquet:
            names = set(parquet.schema_arrow.names)
            columns = [c for c in self.columns if c in names]
            groups: list[int] = []  # row groups overlapping the range
            first = 0  # the row the first of them begins
            offset = 0
            for g in range(parquet.num_row_groups):
                size = parquet.metadata.row_group(g).num_rows
                if offset < stop and offset + size > start:
                    if not groups:
                        first = offset
                    groups.append(g)
                offset += size
            row = first
            for batch in parquet.iter_batches(batch_size=4096, row_groups=groups, columns=columns):
                lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
                if lo < hi:
                    yield from batch.slice(lo, hi - lo).to_pylist()
                row += batch.num_rows
                if row >= stop:
                    return


class ConcatSource:
    """Sources one after the other, numbered as one input (a directory of files)."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = sources
        self._counts: list[int] | None = None

    def counts(self) -> list[int]:
        if self._counts is None:
            self._counts = [s.count() for s in self.sources]
        return self._counts

    def count(self) -> int:
        return sum(self.counts())

    def read(self, start: int, stop: int) -> Iterator[object]:
        offset = 0
        for source, size in zip(self.sources, self.counts(), strict=True):
            lo, hi = max(start - offset, 0), min(stop - offset, size)
            if lo < hi:
                yield from source.read(lo, hi)
            offset += size


def input_format(name: str) -> tuple[str, bool] | None:
    """``(format, gzipped)`` from a file name, or None when it is not an input format."""
    lower = name.lower()
    gz = lower.endswith(".gz")
    stem = lower[:-3] if gz else lower
    fmt = next((f for ext, f in FORMATS.items() if stem.endswith(ext)), None)
    if fmt is None or (gz and fmt == "parquet"):
        return None
    return fmt, gz


def file_source(file: File, columns: Sequence[str]) -> Source:
    found = input_format(file.path)
    if found is None:
        raise InputError(f"AIPLANE_INPUT {file.path}: unknown format, {EXPECTED}")
    fmt, gz = found
    if fmt == "jsonl":
        return JsonlSource(file, gz)
    if fmt == "csv":
        return CsvSource(file, gz)
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"AIPLANE_INPUT {file.path}: Parquet needs pyarrow (pip install 'aiplane[batch]')"
        ) from exc
    return ParquetSource(file, columns)


def _usable(name: str) -> bool:
    return not name.startswith((".", "_")) and input_format(name) is not None


def open_input(location: str, columns: Sequence[str] = ()) -> Source:
    """The rows at ``location``: a file or a directory, a local path or an fsspec URL.

    ``columns`` are the fields the task reads (Parquet reads only those).
    """
    if "://" in location:
        fs, path = filesystem(location)
        with reading(location):
            if fs.isdir(path):
                names = sorted(p for p in fs.ls(path, detail=False) if _usable(os.path.basename(p)))
                files = [File(p, fs) for p in names if fs.isfile(p)]
            elif fs.exists(path):
                return file_source(File(path, fs), columns)
            else:
                raise InputError(f"AIPLANE_INPUT {location}: no such file or directory")
    else:
        local = Path(location)
        if local.is_dir():
            files = [File(str(p)) for p in sorted(local.iterdir()) if p.is_file() and _usable(p.name)]
        elif local.exists():
            return file_source(File(location), columns)
        else:
            raise InputError(f"AIPLANE_INPUT {location}: no such file or directory")
    if not files:
        raise InputError(f"AIPLANE_INPUT {location}: a directory with no input files ({EXPECTED})")
    return ConcatSource([file_source(f, columns) for f in files])
