"""Atomic shard output: a shard counts as done only with its whole output, and scan() reads manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from uuid import uuid4

import pytest

from aiplane.batch import output as output_module
from aiplane.batch.output import ShardWriter, check_done, remove_temps, scan
from aiplane.batch.rows import BadRow
from aiplane.batch.shards import ShardNames
from aiplane.batch.storage import open_output

EXPECT = {"task": "embed", "input": "in.jsonl"}


def write_shard(location: str, shard: int, shards: int, good: int, bad: int) -> dict[str, object]:
    out = open_output(location, create=True)
    with ShardWriter(out, ShardNames(shard, shards)) as writer:
        for i in range(good):
            writer.good(json.dumps({"id": i, "row": i}))
        for i in range(bad):
            writer.bad(BadRow(good + i, good + i, "missing field 'text'"))
        return writer.commit({**EXPECT, "finished_at": "2026-01-01T00:00:00Z"})


def test_a_committed_shard_is_done_with_hashes_of_its_files(tmp_path: Path) -> None:
    manifest = write_shard(str(tmp_path), 2, 4, good=300, bad=2)  # more than one flush of lines
    names = ShardNames(2, 4)
    data = (tmp_path / names.output).read_bytes()
    assert data.count(b"\n") == 300 and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / names.errors).read_text().splitlines()[1] == (
        '{"row":301,"id":301,"reason":"missing field \'text\'"}'
    )
    assert json.loads((tmp_path / names.manifest).read_text()) == manifest
    assert (manifest["rows"], manifest["errors"]) == (300, 2)
    done, why = check_done(open_output(str(tmp_path), create=False), names, EXPECT)
    assert (done, why) == (manifest, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [names.errors, names.output, names.manifest]


def test_raising_mid_write_leaves_nothing_but_what_was_there(tmp_path: Path) -> None:
    out = open_output(str(tmp_path), create=True)
    names = ShardNames(0, 1)
    with pytest.raises(RuntimeError), ShardWriter(out, names) as writer:
        for i in range(1000):
            writer.good(json.dumps({"id": i}))
            if i == 700:
                raise RuntimeError("the model crashed")
    assert list(tmp_path.iterdir()) == []  # temporaries removed, no final names
    assert check_done(out, names, EXPECT) == (None, "no manifest")


def test_a_crash_between_output_and_manifest_is_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(output_module, "write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        write_shard(str(tmp_path), 0, 2, good=5, bad=0)
    names = ShardNames(0, 2)
    assert (tmp_path / names.output).exists()  # published, but without a manifest it does not count
    assert check_done(open_output(str(tmp_path), create=False), names, EXPECT) == (None, "no manifest")
    assert scan(str(tmp_path)).done == frozenset()


def test_a_killed_writer_leaves_temporaries_that_the_next_run_removes(tmp_path: Path) -> None:
    out = open_output(str(tmp_path), create=True)
    names = ShardNames(1, 2)
    writer = ShardWriter(out, names).__enter__()  # as if SIGKILLed inside the block: no __exit__
    for i in range(600):
        writer.good(json.dumps({"id": i}))
    temps = sorted(p.name for p in tmp_path.iterdir())
    assert len(temps) == 2 and all(names.is_temp(t) for t in temps)
    assert check_done(out, names, EXPECT) == (None, "no manifest")
    write_shard(str(tmp_path), 0, 2, good=1, bad=0)  # another shard's files are left alone
    assert remove_temps(out, names) == temps
    assert not any(names.is_temp(p.name) for p in tmp_path.iterdir())
    assert len(list(tmp_path.iterdir())) == 3


def test_a_changed_or_missing_output_or_another_task_means_redo(tmp_path: Path) -> None:
    names = ShardNames(0, 1)
    out = open_output(str(tmp_path), create=False)
    write_shard(str(tmp_path), 0, 1, good=3, bad=1)
    assert check_done(out, names, EXPECT | {"task": "generate"}) == (
        None,
        "the manifest's task is 'embed', not 'generate'",
    )
    with open(tmp_path / names.output, "a") as f:
        f.write('{"id": 99}\n')
    assert check_done(out, names, EXPECT) == (None, f"{names.output} does not have the manifest's sha256")
    (tmp_path / names.errors).unlink()
    write_shard(str(tmp_path), 0, 1, good=3, bad=1)
    assert check_done(out, names, EXPECT)[1] == "done"
    (tmp_path / names.errors).unlink()
    assert check_done(out, names, EXPECT) == (None, f"{names.errors} is missing")
    (tmp_path / names.manifest).write_text("{not json")
    assert check_done(out, names, EXPECT) == (None, "the manifest is not a JSON object")


def test_scan_counts_done_shards_from_manifests_only(tmp_path: Path) -> None:
    assert scan(str(tmp_path / "nothing-yet")) == output_module.OutputState()
    assert not (tmp_path / "nothing-yet").exists()  # scan never creates
    write_shard(str(tmp_path), 0, 4, good=10, bad=1)
    write_shard(str(tmp_path), 3, 4, good=7, bad=0)
    write_shard(str(tmp_path), 0, 2, good=100, bad=0)  # the directory re-used with 2 shards
    (tmp_path / ShardNames(2, 4).output).write_text("partial, no manifest\n")
    (tmp_path / ShardNames(1, 4).manifest).write_text("[]")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    state = scan(str(tmp_path))
    assert (state.shards, state.done, state.rows, state.errors) == (4, frozenset({0, 3}), 17, 1)
    assert state.unreadable == (ShardNames(1, 4).manifest,) and not state.complete
    other = scan(str(tmp_path), shards=2)
    assert (other.shards, other.done, other.rows) == (2, frozenset({0}), 100)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_fsspec_output_is_written_and_scanned_the_same_way() -> None:
    pytest.importorskip("fsspec")
    location = f"memory://batch-out-{uuid4().hex}/run"
    manifest = write_shard(location, 1, 2, good=4, bad=1)
    out = open_output(location, create=False)
    assert check_done(out, ShardNames(1, 2), EXPECT) == (manifest, "done")
    assert sorted(out.names()) == sorted(
        ShardNames(1, 2).__getattribute__(a) for a in ("output", "errors", "manifest")
    )
    state = scan(location)
    assert (state.done, state.rows, state.errors) == (frozenset({1}), 4, 1)


def test_a_lone_surrogate_is_written_as_its_json_escape(tmp_path: Path) -> None:
    out = open_output(str(tmp_path), create=True)
    with ShardWriter(out, ShardNames(0, 1)) as writer:
        writer.good(json.dumps({"id": "\ud800", "text": "é"}, ensure_ascii=False))
        writer.commit({})
    line = (tmp_path / "shard-00000-of-00001.jsonl").read_bytes()
    assert line == b'{"id": "\\ud800", "text": "\xc3\xa9"}\n'
    assert json.loads(line) == {"id": "\ud800", "text": "é"}
