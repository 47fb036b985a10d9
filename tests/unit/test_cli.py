"""The ``aiplane`` command in process, through ``main()`` (the entry point that wraps errors).

``CliRunner`` drives a tiny shim whose ``main`` sets ``sys.argv`` and calls
``aiplane.cli.main.main``, so the tests see exactly what a user sees: one error line
and an exit code, never a traceback. State goes to a temporary ``AIPLANE_HOME``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from builders import model
from click.testing import CliRunner, Result

from aiplane import __version__
from aiplane.cli.main import main
from aiplane.runtime.local.paths import db_path
from aiplane.runtime.local.store import JobStatusRow, Store


class _Entrypoint:
    """What CliRunner needs of a command (``name``, ``main``), calling the real entry point."""

    name = "aiplane"

    def main(self, args: list[str], prog_name: str, **_: Any) -> None:
        saved = sys.argv
        sys.argv = [prog_name, *args]
        try:
            main()
        finally:
            sys.argv = saved


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "aiplane-home"
    monkeypatch.setenv("AIPLANE_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("AIPLANE_DEBUG", raising=False)
    return home


def aiplane(*args: str) -> Result:
    return CliRunner().invoke(_Entrypoint(), list(args), catch_exceptions=False)  # type: ignore[arg-type]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_version(home: Path) -> None:
    result = aiplane("version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"aiplane {__version__}"


def test_apply_of_a_bad_file_is_one_error_line_and_exit_1(home: Path, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", model("smollm2").replicas(-1, 2).yaml())
    result = aiplane("apply", "-f", str(bad))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""
    error = " ".join(result.stderr.split())  # rich may wrap a long line
    assert error == f"error: {bad}: Model/smollm2: spec.replicas.min: must be >= 0 (got -1)"
    assert Store(db_path(home)).resources() == []  # nothing half-applied


def test_apply_reports_every_problem_and_applies_nothing(home: Path, tmp_path: Path) -> None:
    text = model("good").yaml() + "---\n" + model("bad").engine("nope").yaml()
    result = aiplane("apply", "-f", str(write(tmp_path / "two.yaml", text)))
    assert result.exit_code == 1
    assert "Model/bad: spec.engine: must be one of" in " ".join(result.stderr.split())
    assert Store(db_path(home)).resources() == []


def test_apply_then_get_models(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", model("smollm2").replicas(0, 3).gpus(0.5).yaml())
    result = aiplane("apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "model/smollm2 created"
    assert "no plane is running" in result.stderr

    again = aiplane("apply", "-f", str(path))
    assert again.stdout.strip() == "model/smollm2 unchanged"

    listing = aiplane("get", "models")
    assert listing.exit_code == 0, listing.output
    header, *rows = [line.split() for line in listing.stdout.strip().splitlines()]
    assert header == ["NAME", "ENGINE", "READY", "REPLICAS", "GPUS", "STATUS", "AGE"]
    assert len(rows) == 1
    assert rows[0][:5] == ["smollm2", "llamacpp", "0/0", "0-3", "0.5"]
    assert " ".join(rows[0][5:-1]) == "waiting for a plane"


def test_apply_changed_file_is_configured(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    aiplane("apply", "-f", str(write(path, model("m").yaml())))
    result = aiplane("apply", "-f", str(write(path, model("m").replicas(0, 5).yaml())))
    assert result.stdout.strip() == "model/m configured"
    assert Store(db_path(home)).resources()[0].generation == 1  # bounds change in place
    result = aiplane("apply", "-f", str(write(path, model("m").replicas(0, 5).gpus(1).yaml())))
    assert result.stdout.strip() == "model/m configured"
    assert Store(db_path(home)).resources()[0].generation == 2  # what runs changed: a rollout


def test_delete_missing_model_is_not_found(home: Path) -> None:
    result = aiplane("delete", "model", "x")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.strip() == "error: Model/x not found"


def test_delete_an_applied_model(home: Path, tmp_path: Path) -> None:
    aiplane("apply", "-f", str(write(tmp_path / "m.yaml", model("m").yaml())))
    result = aiplane("delete", "models", "m")
    assert result.exit_code == 0
    assert result.stdout.strip() == "model/m deleted"
    assert Store(db_path(home)).resources() == []


def test_unknown_kind_and_unknown_resource_type_are_errors(home: Path) -> None:
    result = aiplane("delete", "pod", "x")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown kind 'pod'")
    result = aiplane("get", "pods")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown resource type 'pods'")


def test_apply_without_a_file_says_so(home: Path) -> None:
    result = aiplane("apply")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: apply needs -f FILE"


def test_apply_of_a_missing_file(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = aiplane("apply", "-f", str(missing))
    assert result.exit_code == 1
    assert " ".join(result.stderr.split()) == f"error: {missing}: cannot read: No such file or directory"


BATCH = """\
apiVersion: aiplane.dev/v1alpha1
kind: BatchJob
metadata: {name: vectors}
spec: {task: embed, model: minilm, input: INPUT, output: out, shards: 2}
"""


def _job_row(phase: str, reason: str, progress: dict[str, int]) -> JobStatusRow:
    return JobStatusRow(
        "BatchJob", "vectors", 1, phase, reason, None, [], [], [], 0, None, None, 0.0, progress
    )


@pytest.mark.parametrize(
    ("phase", "code"), [("Succeeded", 0), ("Failed", 1), ("Running", 2)], ids=["ok", "failed", "timeout"]
)
def test_wait_follows_a_job_to_its_end_and_says_how_it_ended(
    home: Path, tmp_path: Path, phase: str, code: int
) -> None:
    data = write(tmp_path / "in.jsonl", "".join(f'{{"text": "t{i}"}}\n' for i in range(40)))
    job = write(tmp_path / "job.yaml", BATCH.replace("INPUT", str(data)))
    assert aiplane("apply", "-f", str(job)).exit_code == 0
    Store(home / "state.db").set_job_status(_job_row(phase, f"it {phase}", {"rows": 38, "errors": 2}))
    result = aiplane("wait", "bj/vectors", "--timeout", "0.2")
    assert result.exit_code == code
    assert "40/40" in result.stdout  # rows processed, good and bad, of the input's rows
    assert ("timed out" in result.stdout) == (code == 2)


def test_wait_names_what_it_needs(home: Path) -> None:
    assert "wait needs job/NAME" in aiplane("wait", "vectors").stderr
    assert "no TrainingJob or BatchJob named 'nope'" in aiplane("wait", "job/nope").stderr
