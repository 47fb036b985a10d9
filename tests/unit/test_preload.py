"""The model-cache preload: atomic copy, marker, warm skip, and clear errors for missing clients."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from aiplane.cli.kube import register
from aiplane.errors import SourceError
from aiplane.runtime.kubernetes.preload import MARKER, file_marker, is_warm, preload


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "tiny-model"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text('{"layers": 2}')
    (src / "weights.bin").write_bytes(b"\x01" * 4096)
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return src


def test_copies_a_directory_and_marks_it_complete(tmp_path: Path, model_dir: Path) -> None:
    source = f"file://{model_dir}"
    dest = tmp_path / "models" / "org" / "tiny"
    result = preload(source, dest)
    assert (result.warm, result.path) == (False, dest)
    assert result.bytes == len('{"layers": 2}') + 4096 + 4
    assert (dest / "weights.bin").read_bytes() == b"\x01" * 4096
    assert (dest / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    assert (dest / MARKER).read_text().strip() == source
    assert is_warm(dest, source)
    assert not list(dest.parent.glob(".tiny.partial-*"))  # no staging left behind


def test_second_run_is_warm_and_copies_nothing(tmp_path: Path, model_dir: Path) -> None:
    source = f"file://{model_dir}"
    dest = tmp_path / "models" / "tiny"
    preload(source, dest)
    (model_dir / "weights.bin").write_bytes(b"changed")  # would show if it copied again
    again = preload(source, dest)
    assert (again.warm, again.bytes) == (True, 0)
    assert (dest / "weights.bin").read_bytes() == b"\x01" * 4096


def test_a_partial_copy_does_not_count_as_warm(tmp_path: Path, model_dir: Path) -> None:
    source = f"file://{model_dir}"
    dest = tmp_path / "models" / "tiny"
    dest.mkdir(parents=True)
    (dest / "weights.bin").write_bytes(b"\x01" * 100)  # a killed copy: some bytes, no marker
    staging = dest.parent / ".tiny.partial-deadbeef"
    staging.mkdir()
    (staging / "junk").write_text("x")
    assert not is_warm(dest, source)
    result = preload(source, dest)
    assert not result.warm
    assert (dest / "weights.bin").stat().st_size == 4096
    assert not staging.exists()  # leftovers of killed runs are cleaned


def test_another_source_is_loaded_again(tmp_path: Path, model_dir: Path) -> None:
    dest = tmp_path / "models" / "tiny"
    preload(f"file://{model_dir}", dest)
    other = model_dir.parent / "other"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"\x02")
    result = preload(f"file://{other}", dest)
    assert not result.warm
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "weights.bin"]
    assert (dest / "weights.bin").read_bytes() == b"\x02"


def test_single_file_source_gets_a_sibling_marker(tmp_path: Path) -> None:
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 60)
    source = f"file://{gguf}"
    dest = tmp_path / "models" / "pkg" / "model.Q4.gguf"
    assert preload(source, dest).bytes == 64
    assert dest.read_bytes().startswith(b"GGUF")
    assert file_marker(dest).read_text().strip() == source
    assert preload(source, dest).warm
    file_marker(dest).unlink()  # a file without its marker may be half-written
    assert not preload(source, dest).warm


def test_pvc_sources_read_from_the_mounted_claim(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "pvc"
    (root / "weights").mkdir(parents=True)
    model_dir.rename(root / "weights" / "tiny")
    dest = tmp_path / "models" / "tiny"
    assert not preload("pvc://weights/tiny", dest, pvc_root=root).warm
    assert (dest / "config.json").exists()
    with pytest.raises(SourceError, match="is the claim mounted"):
        preload("pvc://missing/x", tmp_path / "models" / "x", pvc_root=root)


def test_missing_source_fails_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "gone"
    with pytest.raises(SourceError, match="does not exist"):
        preload(f"file://{tmp_path}/nope", dest)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == [".gone.lock"]


@pytest.mark.parametrize(
    ("source", "module", "package"),
    [
        ("hf://org/repo", "huggingface_hub", "huggingface_hub"),
        ("s3://bucket/models/x", "boto3", "boto3"),
        ("gs://bucket/models/x", "google.cloud.storage", "google-cloud-storage"),
    ],
)
def test_missing_client_library_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(SourceError, match=rf"needs the '{package}' package \(pip install {package}\)"):
        preload(source, tmp_path / "models" / "x")


class FakeS3:
    """Enough of a boto3 S3 client: one paginated listing, downloads from a dict."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        objects = self.objects

        class Paginator:
            def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                keys = [k for k in sorted(objects) if k.startswith(Prefix)]
                return [
                    {"Contents": [{"Key": k} for k in keys[:1]]},
                    {"Contents": [{"Key": k} for k in keys[1:]]},
                ]

        return Paginator()

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        Path(filename).write_bytes(self.objects[key])


def _fake_boto3(monkeypatch: pytest.MonkeyPatch, objects: dict[str, bytes]) -> None:
    module = types.ModuleType("boto3")
    module.client = lambda service: FakeS3(objects)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "boto3", module)


def test_s3_prefix_is_a_directory_and_a_key_is_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_boto3(
        monkeypatch,
        {
            "models/tiny/config.json": b"{}",
            "models/tiny/shards/0.bin": b"\x01\x02",
            "models/tiny-other/x": b"not ours",  # same prefix text, another directory
        },
    )
    dest = tmp_path / "models" / "tiny"
    preload("s3://bucket/models/tiny", dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        MARKER,
        "config.json",
        "shards/0.bin",
    ]
    single = tmp_path / "models" / "config.json"
    preload("s3://bucket/models/tiny/config.json", single)
    assert single.read_bytes() == b"{}"


def test_s3_keys_cannot_escape_the_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_boto3(monkeypatch, {"m/../../etc/x": b"!"})
    with pytest.raises(SourceError, match="escapes the destination"):
        preload("s3://bucket/m", tmp_path / "models" / "m")


def test_hf_snapshot_goes_through_huggingface_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def snapshot_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        Path(kwargs["local_dir"]).mkdir(parents=True)
        (Path(kwargs["local_dir"]) / "model.safetensors").write_bytes(b"w")
        return str(kwargs["local_dir"])

    module = types.ModuleType("huggingface_hub")
    module.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    dest = tmp_path / "models" / "org" / "repo"
    preload("hf://org/repo@v1.0", dest)
    assert calls[0]["repo_id"] == "org/repo" and calls[0]["revision"] == "v1.0"
    assert (dest / "model.safetensors").read_bytes() == b"w"
    assert preload("hf://org/repo@v1.0", dest).warm and len(calls) == 1


def test_cache_preload_cli(tmp_path: Path, model_dir: Path) -> None:
    app = typer.Typer()
    register(app)
    dest = tmp_path / "models" / "tiny"
    args = ["cache", "preload", "--source", f"file://{model_dir}", "--dest", str(dest)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "loaded 4.0 KiB" in first.stderr
    second = CliRunner().invoke(app, args)
    assert "warm" in second.stderr
