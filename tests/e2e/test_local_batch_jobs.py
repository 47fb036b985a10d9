"""BatchJobs on a real ``aiplane up``: embed with the real MiniLM model, generate with SmolLM2.

The plane runs each shard as ``python -m aiplane run-shard`` (the entrypoint a
Kubernetes pod runs), reads the outputs' manifests for its status, and on restart
kills what a dead plane left running and runs the shards that are not done.
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiplane.runtime.local.store import JobStatusRow
from tests.e2e.conftest import write
from tests.e2e.plane import MINILM_YAML, Plane, assert_gone, model_yaml
from tests.sentences import sentence

pytestmark = pytest.mark.e2e


def corpus(path: Path, rows: int, seed: int = 7) -> tuple[dict[str, str], dict[int, str]]:
    """A JSONL corpus with bad rows in it: (good id -> text, bad row -> what the reason names)."""
    rng = random.Random(seed)
    good: dict[str, str] = {}
    bad: dict[int, str] = {}
    lines = []
    for row in range(rows):
        if row % 397 == 11:
            lines.append('{"id": "broken", "text": "no closing brace"')
            bad[row] = "JSON"
        elif row % 397 == 12:
            lines.append(json.dumps({"id": f"r{row}", "body": "no text field"}))
            bad[row] = "text"
        elif row % 397 == 13:
            lines.append(json.dumps({"id": f"r{row}", "text": " ".join(["overlong"] * 400)}))
            bad[row] = "256"
        else:
            text = sentence(rng)
            good[f"r{row}"] = text
            lines.append(json.dumps({"id": f"r{row}", "text": text}))
    path.write_text("\n".join(lines) + "\n")
    return good, bad


def batch_yaml(name: str, task: str, model: str, data: Path, out: Path, extra: str = "") -> str:
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: BatchJob
metadata: {{name: {name}}}
spec:
  task: {task}
  model: {model}
  input: {data}
  output: {out}
{extra}"""


def job_row(plane: Plane, name: str) -> JobStatusRow | None:
    return plane.store.job_statuses().get(("BatchJob", name))


def wait_job(plane: Plane, name: str, done: Any, timeout: float) -> JobStatusRow:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = job_row(plane, name)
        if row is not None and done(row):
            return row
        if row is not None and row.phase == "Failed":
            raise AssertionError(f"{name} failed: {row.reason}\n{plane.log_text()}")
        time.sleep(0.1)
    raise TimeoutError(f"{name}: {row}\n{plane.log_text()}")


def outputs(out: Path, suffix: str) -> list[dict[str, Any]]:
    return [
        json.loads(line) for f in sorted(out.glob(f"shard-*{suffix}")) for line in f.read_text().splitlines()
    ]


def test_an_embed_job_killed_midway_runs_again_and_writes_every_row_exactly_once(tmp_path: Path) -> None:
    data, out = tmp_path / "corpus.jsonl", tmp_path / "vectors"
    good, bad = corpus(data, 2400)
    job = batch_yaml("vectors", "embed", "minilm", data, out, "  shards: 6\n  parallelism: 2\n")
    files = [write(tmp_path, "minilm.yaml", MINILM_YAML), write(tmp_path, "job.yaml", job)]
    plane = Plane(tmp_path / "home", files)
    (tmp_path / "home").mkdir()
    plane.start()
    try:
        row = wait_job(plane, "vectors", lambda r: 1 <= r.progress.get("completed", 0) < 5 and r.pids, 120)
        workers = list(row.pids)
        plane.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]  # the plane dies mid-job
        plane.proc.wait()  # type: ignore[union-attr]
        plane.start()  # the new plane kills the old plane's shards and runs what is not done
        assert_gone(workers)
        row = wait_job(plane, "vectors", lambda r: r.phase == "Succeeded", 180)
        listed = plane.cli("get", "jobs").stdout
    finally:
        plane.stop()
    requeued = [m for _, ref, reason, m in plane.store.events(limit=200) if reason == "Requeued"]
    assert requeued, "the second plane should have requeued the job the first one ran"
    written = outputs(out, ".jsonl")
    written = [r for r in written if "embedding" in r]
    counts = collections.Counter(r["id"] for r in written)
    assert set(counts) == set(good) and set(counts.values()) == {1}, "every good row once, no other"
    errors = outputs(out, ".errors.jsonl")
    assert {e["row"] for e in errors} == set(bad)
    for e in errors:
        assert bad[e["row"]] in e["reason"], e
    assert row.progress == {"completed": 6, "shards": 6, "rows": len(good), "errors": len(bad)}
    assert "6/6 shards" in listed and f"rows {len(good)}" in listed
    # the vectors are the model's: the same texts embedded directly, in one plain call
    from aiplane.engines.minilm import MiniLMEmbedder

    sample = random.Random(1).sample(sorted(good), 300)
    direct = MiniLMEmbedder().embed([good[i] for i in sample])
    by_id = {r["id"]: r["embedding"] for r in written}
    got = np.array([by_id[i] for i in sample], dtype=np.float32)
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert all(len(v) == 384 for v in by_id.values())


def test_a_generate_job_answers_every_prompt_through_the_gateway(tmp_path: Path) -> None:
    data, out = tmp_path / "prompts.jsonl", tmp_path / "answers"
    prompts = {f"q{i}": f"Name one colour. Answer {i}." for i in range(14)}
    lines = [json.dumps({"id": k, "prompt": v}) for k, v in prompts.items()]
    lines.insert(5, json.dumps({"id": "no-prompt", "question": "?"}))
    data.write_text("\n".join(lines) + "\n")
    job = batch_yaml(
        "answers", "generate", "smollm2", data, out, "  shards: 2\n  concurrency: 4\n  maxTokens: 12\n"
    )
    files = [write(tmp_path, "m.yaml", model_yaml(min_replicas=1)), write(tmp_path, "job.yaml", job)]
    (tmp_path / "home").mkdir()
    plane = Plane(tmp_path / "home", files).start()
    try:
        row = wait_job(plane, "answers", lambda r: r.phase == "Succeeded", 240)
    finally:
        plane.stop()
    for shard in sorted(out.glob("shard-*-of-*.jsonl")):
        if shard.name.endswith(".errors.jsonl"):
            continue
        rows = [json.loads(line) for line in shard.read_text().splitlines()]
        assert [r["row"] for r in rows] == sorted(r["row"] for r in rows), "in input order"
    answers = {r["id"]: r for r in outputs(out, ".jsonl") if "output" in r}
    assert set(answers) == set(prompts)
    assert all(a["output"].strip() and a["usage"]["completion_tokens"] > 0 for a in answers.values())
    (error,) = outputs(out, ".errors.jsonl")
    assert error["row"] == 5 and "prompt" in error["reason"]
    assert row.progress["rows"] == len(prompts) and row.progress["errors"] == 1


def test_the_jobs_example_runs_on_the_local_plane(tmp_path: Path) -> None:
    """``aiplane up -f examples/jobs.yaml`` as the README shows, from a copy of examples/."""
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "examples", tmp_path / "examples")
    (tmp_path / "home").mkdir()
    plane = Plane(tmp_path / "home", [tmp_path / "examples" / "jobs.yaml"], cwd=tmp_path).start()
    try:
        # follows the job with its progress bar; exit 0 once it Succeeded
        waited = plane.cli("wait", "bj/embed-corpus", "--timeout", "180")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        row = wait_job(plane, "embed-corpus", lambda r: r.phase == "Succeeded", 10)
        nightly = plane.store.job_statuses()[("TrainingJob", "nightly")]
    finally:
        plane.stop()
    sentences = (root / "examples" / "data" / "corpus.jsonl").read_text().splitlines()
    assert row.progress == {"completed": 4, "shards": 4, "rows": len(sentences), "errors": 0}
    assert len(outputs(tmp_path / "out" / "embed-corpus", "-of-00004.jsonl")) == len(sentences)
    assert (nightly.phase, nightly.reason[:12]) == ("Scheduled", "next run at ")
    assert " 03:00 " in nightly.reason
    assert f"{len(sentences)}/{len(sentences)}" in waited.stdout and "Succeeded" in waited.stdout
