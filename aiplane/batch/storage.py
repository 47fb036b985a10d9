"""The output directory, local or fsspec, and the one way files get into it: atomically.

A file is written under a hidden temporary name in the same directory, flushed and
fsynced, then renamed over its final name (``os.replace``), and the directory is
fsynced, so a reader (or a re-run after SIGKILL) sees the whole file or none of it.
On fsspec filesystems (object stores) the rename is ``fs.mv``: best effort, since
most object stores have no atomic rename, but the manifest still goes last.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import IO, Any, Protocol

from aiplane.batch.errors import ConfigError, ShardFailed
from aiplane.batch.remote import filesystem
from aiplane.batch.shards import temp_name

BUFFER = 1 << 20


def new_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(3)}"


class AtomicFile(Protocol):
    """A file being written; nothing appears under its final name until :meth:`commit`."""

    name: str

    def write(self, data: bytes) -> None: ...

    def commit(self) -> str:
        """Make it visible under its final name; returns its sha256 (hex)."""
        ...

    def abort(self) -> None: ...


class ChildFile(Protocol):
    """A path a child process writes to; :meth:`commit` moves what it wrote into place."""

    path: str

    def commit(self) -> tuple[str, int] | None:
        """``(sha256, lines)`` of the committed file, or None when the child wrote none."""
        ...

    def abort(self) -> None: ...


class OutputDir(Protocol):
    location: str

    def names(self) -> list[str]: ...

    def read_bytes(self, name: str) -> bytes | None: ...

    def sha256(self, name: str) -> str | None: ...

    def create(self, name: str) -> AtomicFile: ...

    def child_file(self, name: str) -> ChildFile: ...

    def remove(self, name: str) -> None: ...


def _hash_stream(stream: IO[bytes]) -> tuple[str, int]:
    digest, lines = hashlib.sha256(), 0
    while data := stream.read(BUFFER):
        digest.update(data)
        lines += data.count(b"\n")
    return digest.hexdigest(), lines


class _LocalFile:
    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.final = directory / name
        self.temp = directory / temp_name(name, new_token())
        self._digest = hashlib.sha256()
        self._file = open(self.temp, "xb", buffering=BUFFER)  # noqa: SIM115

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._file.write(data)

    def commit(self) -> str:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            os.replace(self.temp, self.final)
        except FileNotFoundError as exc:
            raise ShardFailed(f"{self.temp} vanished before its rename: another run of this shard?") from exc
        fsync_dir(self.final.parent)
        return self._digest.hexdigest()

    def abort(self) -> None:
        self._file.close()
        self.temp.unlink(missing_ok=True)


class _LocalChildFile:
    def __init__(self, directory: Path, name: str) -> None:
        self.final = directory / name
        self.temp = directory / temp_name(name, new_token())
        self.path = str(self.temp)

    def commit(self) -> tuple[str, int] | None:
        if not self.temp.exists():
            return None
        with open(self.temp, "rb") as f:
            os.fsync(f.fileno())
            found = _hash_stream(f)
        os.replace(self.temp, self.final)
        fsync_dir(self.final.parent)
        return found

    def abort(self) -> None:
        self.temp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalDir:
    def __init__(self, path: str, create: bool) -> None:
        self.location = path
        self.path = Path(path.removeprefix("file://") if path.startswith("file:///") else path)
        if create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"AIPLANE_OUTPUT {path}: cannot create the directory ({exc})") from exc
            if not os.access(self.path, os.W_OK):
                raise ConfigError(f"AIPLANE_OUTPUT {path}: the directory is not writable")

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.path.iterdir())
        except FileNotFoundError:
            return []

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def sha256(self, name: str) -> str | None:
        try:
            with open(self.path / name, "rb") as f:
                return _hash_stream(f)[0]
        except (FileNotFoundError, IsADirectoryError):
            return None

    def create(self, name: str) -> AtomicFile:
        return _LocalFile(self.path, name)

    def child_file(self, name: str) -> ChildFile:
        return _LocalChildFile(self.path, name)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class _RemoteFile:
    def __init__(self, fs: Any, directory: str, name: str) -> None:
        self.name = name
        self.fs = fs
        self.final = f"{directory}/{name}"
        self.temp = f"{directory}/{temp_name(name, new_token())}"
        self._digest = hashlib.sha256()
        self._file = fs.open(self.temp, "wb")

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._file.write(data)

    def commit(self) -> str:
        self._file.close()
        self.fs.mv(self.temp, self.final)
        return self._digest.hexdigest()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.fs.rm(self.temp)


class _RemoteChildFile:
    """The child writes a local temporary file; commit uploads it through a remote temp name."""

    def __init__(self, fs: Any, directory: str, name: str) -> None:
        self.fs, self.directory, self.name = fs, directory, name
        fd, self.path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(self.path)  # "the child wrote none" stays detectable

    def commit(self) -> tuple[str, int] | None:
        if not os.path.exists(self.path):
            return None
        remote = _RemoteFile(self.fs, self.directory, self.name)
        try:
            with open(self.path, "rb") as f:
                while data := f.read(BUFFER):
                    remote.write(data)
            with open(self.path, "rb") as f:
                found = _hash_stream(f)
            remote.commit()
        except BaseException:
            remote.abort()
            raise
        finally:
            os.unlink(self.path)
        return found

    def abort(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class RemoteDir:
    def __init__(self, url: str, create: bool) -> None:
        self.location = url
        self.fs, path = filesystem(url)
        self.path = path.rstrip("/")
        if create:
            try:
                self.fs.makedirs(self.path, exist_ok=True)
            except OSError as exc:
                raise ShardFailed(f"AIPLANE_OUTPUT {url}: cannot create it ({exc})") from exc

    def names(self) -> list[str]:
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False))
        except FileNotFoundError:
            return []

    def read_bytes(self, name: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(f"{self.path}/{name}")
        except FileNotFoundError:
            return None
        return data

    def sha256(self, name: str) -> str | None:
        try:
            with self.fs.open(f"{self.path}/{name}", "rb") as f:
                return _hash_stream(f)[0]
        except FileNotFoundError:
            return None

    def create(self, name: str) -> AtomicFile:
        return _RemoteFile(self.fs, self.path, name)

    def child_file(self, name: str) -> ChildFile:
        return _RemoteChildFile(self.fs, self.path, name)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(f"{self.path}/{name}")


def open_output(location: str, *, create: bool) -> OutputDir:
    """The output directory at ``location`` (created when ``create``; reading never writes)."""
    if "://" in location and not location.startswith("file:///"):
        return RemoteDir(location, create)
    return LocalDir(location, create)
