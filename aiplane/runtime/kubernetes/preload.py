"""Fill a model cache from a source, once: what the ``preload`` init container runs.

``aiplane cache preload --source SRC --dest /models/...`` copies the weights so the
server starts on local files. Guarantees, because a half-written model is worse than none:

* **Atomic.** Everything is written to a ``.<name>.partial-*`` sibling and renamed into
  place. A directory carries its ``.aiplane-complete`` marker (holding the source URI)
  before the rename; a single file gets a ``.<name>.aiplane-complete`` sibling after.
* **Warm is cheap.** A destination whose marker names the same source is kept as is:
  a restarted pod starts in seconds. No marker (a killed copy, a hand-made directory)
  or another source means it is loaded again.
* **One writer.** Replicas on one node share the volume; an ``flock`` on a sibling
  lock file makes the second wait and then find the cache warm.

Sources: ``file://`` and ``pkg://`` (a path in this image), ``pvc://claim/path``
(under ``--pvc-root``, where the claim is mounted), and, when their client libraries
are installed, ``hf://org/repo[@revision][/file]`` (huggingface_hub), ``s3://bucket/key``
(boto3) and ``gs://bucket/key`` (google-cloud-storage). Credentials come from those
libraries' usual environment (``HF_TOKEN``, ``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiplane.engines.sources import resolve_local
from aiplane.errors import SourceError

MARKER = ".aiplane-complete"
DEFAULT_PVC_ROOT = Path("/pvc")


@dataclass(frozen=True)
class PreloadResult:
    path: Path
    warm: bool  # the cache already held this source; nothing was copied
    bytes: int  # bytes written (0 when warm)


def file_marker(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{MARKER}"


def is_warm(dest: Path, source: str) -> bool:
    """True when ``dest`` holds a complete copy of ``source``."""
    if dest.is_dir():
        marker = dest / MARKER
    elif dest.is_file():
        marker = file_marker(dest)
    else:
        return False
    try:
        return marker.read_text(encoding="utf-8").strip() == source
    except OSError:
        return False


def preload(source: str, dest: Path, *, pvc_root: Path = DEFAULT_PVC_ROOT) -> PreloadResult:
    """Make ``dest`` a complete copy of ``source``; a no-op when it already is."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if is_warm(dest, source):
            return PreloadResult(dest, warm=True, bytes=0)
        _remove_leftovers(dest)
        staging = dest.parent / f".{dest.name}.partial-{secrets.token_hex(4)}"
        try:
            _fetch(source, staging, pvc_root)
            _install(staging, dest, source)
        finally:
            _remove(staging)
    return PreloadResult(dest, warm=False, bytes=_size(dest))


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    with open(dest.parent / f".{dest.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_leftovers(dest: Path) -> None:
    """Partial copies from killed runs (safe: we hold the lock, nobody else is writing)."""
    for pattern in (f".{dest.name}.partial-*", f".{dest.name}.old-*"):
        for leftover in dest.parent.glob(pattern):
            _remove(leftover)


def _install(staging: Path, dest: Path, source: str) -> None:
    if not staging.exists():
        raise SourceError(f"source {source!r}: nothing was downloaded")
    _remove(file_marker(dest))  # first, so a crash below can never leave a false "warm"
    if staging.is_dir():
        (staging / MARKER).write_text(source + "\n", encoding="utf-8")
    if dest.exists() or dest.is_symlink():
        aside = dest.parent / f".{dest.name}.old-{secrets.token_hex(4)}"
        os.rename(dest, aside)
        _remove(aside)
    os.rename(staging, dest)
    if dest.is_file():
        tmp = dest.parent / f".{dest.name}.marker-{secrets.token_hex(4)}"
        tmp.write_text(source + "\n", encoding="utf-8")
        os.replace(tmp, file_marker(dest))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != MARKER)


def _fetch(source: str, staging: Path, pvc_root: Path) -> None:
    parts = urlsplit(source)
    fetchers: dict[str, Callable[[], None]] = {
        "file": lambda: _copy(resolve_local(source), staging),
        "pkg": lambda: _copy(resolve_local(source), staging),
        "pvc": lambda: _copy(_pvc_path(source, pvc_root), staging),
        "hf": lambda: _fetch_hf(source, staging),
        "s3": lambda: _fetch_s3(source, staging),
        "gs": lambda: _fetch_gs(source, staging),
    }
    fetch = fetchers.get(parts.scheme)
    if fetch is None:
        raise SourceError(
            f"source {source!r}: unknown scheme {parts.scheme!r} (expected {', '.join(fetchers)})"
        )
    fetch()


def _pvc_path(source: str, pvc_root: Path) -> Path:
    parts = urlsplit(source)
    path = pvc_root / parts.netloc / parts.path.lstrip("/")
    if not path.exists():
        raise SourceError(f"source {source!r}: {path} does not exist (is the claim mounted at {pvc_root}?)")
    return path


def _copy(src: Path, staging: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, staging, ignore=shutil.ignore_patterns(MARKER))
    else:
        shutil.copyfile(src, staging)


def _require(module: str, package: str, source: str) -> Any:
    """Import a client library only for the scheme that needs it, or say what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        scheme = urlsplit(source).scheme
        raise SourceError(
            f"source {source!r}: {scheme}:// needs the {package!r} package (pip install {package})"
        ) from exc


def _fetch_hf(source: str, staging: Path) -> None:
    """``hf://org/repo`` (a snapshot), ``hf://org/repo@rev``, ``hf://org/repo/file.gguf`` (one file)."""
    parts = urlsplit(source)
    segments = [s for s in (parts.netloc + parts.path).split("/") if s]
    if len(segments) < 2:
        raise SourceError(f"source {source!r}: expected hf://<org>/<repo>[@revision][/file]")
    repo, _, revision = f"{segments[0]}/{segments[1]}".partition("@")
    filename = "/".join(segments[2:])
    hub = _require("huggingface_hub", "huggingface_hub", source)
    if not filename:
        hub.snapshot_download(repo_id=repo, revision=revision or None, local_dir=str(staging))
        return
    scratch = staging.parent / f"{staging.name}.hf"
    try:
        got = hub.hf_hub_download(
            repo_id=repo, filename=filename, revision=revision or None, local_dir=str(scratch)
        )
        os.rename(got, staging)
    finally:
        _remove(scratch)


def _plan(source: str, key: str, keys: list[str]) -> list[tuple[str, str]]:
    """(object key, relative path) to download; ``[(key, "")]`` means one object, one file."""
    if key and key in keys:
        return [(key, "")]
    prefix = key.rstrip("/") + "/" if key else ""
    plan = [(k, k[len(prefix) :]) for k in keys if k.startswith(prefix) and not k.endswith("/")]
    if not plan:
        raise SourceError(f"source {source!r}: no objects found")
    for _, rel in plan:
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise SourceError(f"source {source!r}: object key {rel!r} escapes the destination")
    return plan


def _targets(staging: Path, plan: list[tuple[str, str]]) -> Iterator[tuple[str, Path]]:
    for key, rel in plan:
        target = staging / rel if rel else staging
        target.parent.mkdir(parents=True, exist_ok=True)
        yield key, target


def _fetch_s3(source: str, staging: Path) -> None:
    parts = urlsplit(source)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    client = _require("boto3", "boto3", source).client("s3")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/")):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    for object_key, target in _targets(staging, _plan(source, key, keys)):
        client.download_file(bucket, object_key, str(target))


def _fetch_gs(source: str, staging: Path) -> None:
    parts = urlsplit(source)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    client = _require("google.cloud.storage", "google-cloud-storage", source).Client()
    blobs = {blob.name: blob for blob in client.list_blobs(bucket, prefix=key.rstrip("/"))}
    for object_key, target in _targets(staging, _plan(source, key, list(blobs))):
        blobs[object_key].download_to_filename(str(target))
