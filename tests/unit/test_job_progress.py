"""How far jobs got and when scheduled ones run: progress lines, log tails, cron fires, shard counts."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import pytest

from aiplane import progress
from aiplane.runtime.kubernetes.constants import COMPLETION_INDEX_ANNOTATION
from aiplane.runtime.kubernetes.status import rank_zero_pod, shard_counts, training_progress
from aiplane.runtime.local import cron
from aiplane.runtime.local.job_progress import LogTail, batch_progress


def at(*parts: int) -> float:
    return datetime(*parts).astimezone().timestamp()  # type: ignore[arg-type]


# -- the progress line ------------------------------------------------------------------
def test_a_reported_line_parses_back_and_later_keys_win() -> None:
    out = io.StringIO()
    progress.report(out, resumed_from=50)
    progress.report(out, step=60, loss=2.5, samples_per_s=800.0)
    progress.report(out, step=70, loss=2.25)
    lines = ["plain output", *out.getvalue().splitlines(), "AIPLANE_PROGRESS {broken", "AIPLANE_PROGRESS [1]"]
    merged = progress.merge_lines(lines)
    assert merged == {"resumed_from": 50, "step": 70, "loss": 2.25, "samples_per_s": 800.0}
    assert progress.parse('rank0: AIPLANE_PROGRESS {"step": 3}') == {"step": 3}  # a prefixed log line
    assert progress.summary(merged | {"total_steps": 100}) == (
        "step 70/100 loss 2.25 800 samples/s resumed from step 50"
    )


def test_a_log_tail_reads_whole_new_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    log.write_text(progress.line(step=1) + "\n")  # a previous run's line: not this run's
    tail = LogTail(log)
    assert tail.read() == []
    with log.open("a") as fh:
        fh.write("noise\n" + progress.line(step=2) + "\n" + progress.line(step=3)[:10])
    assert tail.read() == [{"step": 2}]  # the half-written third line waits
    with log.open("a") as fh:
        fh.write(progress.line(step=3)[10:] + "\n")
    assert tail.read() == [{"step": 3}]
    assert tail.read() == []
    log.write_text(progress.line(step=9) + "\n")  # replaced by a shorter file: read from its start
    assert tail.read() == [{"step": 9}]
    assert LogTail(tmp_path / "missing.log").read() == []


def test_batch_progress_counts_finished_shards_from_the_output_and_running_ones_from_lines() -> None:
    live = {
        0: {"shard": 0, "rows": 500, "errors": 2, "rows_per_s": 90.0},  # finished: its manifest counts
        2: {"shard": 2, "rows": 120, "errors": 1, "rows_per_s": 40.0},
        3: {"shard": 3, "rows": 30, "rows_per_s": 10.5},
    }
    got = batch_progress(4, done={0, 1}, done_rows=1000, done_errors=3, live=live)
    assert got == {"completed": 2, "shards": 4, "rows": 1149, "errors": 4, "rows_per_s": 50.5}
    assert progress.summary(got) == "2/4 shards rows 1149 50 rows/s 4 bad rows"
    assert batch_progress(2, {0, 1}, 10, 0, {}) == {"completed": 2, "shards": 2, "rows": 10, "errors": 0}


# -- cron -------------------------------------------------------------------------------
def test_a_fire_is_due_once_it_passed_and_until_it_is_ten_minutes_old() -> None:
    nightly = "0 3 * * *"
    created = at(2026, 1, 1, 0, 0)
    assert cron.due_fire(nightly, created, at(2026, 1, 1, 2, 59, 59)) is None
    assert cron.due_fire(nightly, created, at(2026, 1, 1, 3, 0)) == at(2026, 1, 1, 3, 0)
    assert cron.due_fire(nightly, created, at(2026, 1, 1, 3, 9)) == at(2026, 1, 1, 3, 0)
    assert cron.due_fire(nightly, created, at(2026, 1, 1, 3, 11)) is None  # missed (startingDeadline)
    assert cron.due_fire(nightly, at(2026, 1, 1, 3, 0), at(2026, 1, 1, 3, 5)) is None  # it ran
    assert cron.next_fire(nightly, at(2026, 1, 1, 3, 0)) == at(2026, 1, 2, 3, 0)


def test_many_missed_fires_run_once_the_latest() -> None:
    every_minute = "* * * * *"
    last = at(2026, 1, 1, 3, 0)
    assert cron.due_fire(every_minute, last, at(2026, 1, 1, 3, 7, 30)) == at(2026, 1, 1, 3, 7)
    assert cron.due_fire("@hourly", at(2026, 1, 1, 2, 0), at(2026, 1, 1, 3, 0, 1)) == at(2026, 1, 1, 3, 0)


# -- Kubernetes shard counts ------------------------------------------------------------
def pod(index: int, phase: str, message: str | None = None) -> dict[str, object]:
    terminated = {"exitCode": 0 if phase == "Succeeded" else 1, **({"message": message} if message else {})}
    return {
        "metadata": {"annotations": {COMPLETION_INDEX_ANNOTATION: str(index)}},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "shard", "state": {"terminated": terminated}}],
        },
    }


@pytest.mark.parametrize("retried_phase", ["Failed", "Running"])
def test_shard_counts_count_each_index_once_from_succeeded_pods(retried_phase: str) -> None:
    report = lambda i, rows, errors: json.dumps({"shard": i, "rows": rows, "errors": errors})  # noqa: E731
    pods = [
        pod(0, "Succeeded", report(0, 500, 2)),
        pod(1, "Failed", "Traceback ... MemoryError"),  # FallbackToLogsOnError: the log's tail
        pod(1, "Succeeded", report(1, 499, 0)),
        pod(2, retried_phase),
    ]
    assert shard_counts(pods) == {"shardsCompleted": 2, "rows": 999, "errors": 2, "shardsReported": 2}


def test_pods_without_a_report_count_as_shards_not_rows() -> None:
    assert shard_counts([pod(0, "Succeeded"), pod(1, "Succeeded", "not json")]) == {"shardsCompleted": 2}
    assert shard_counts([]) == {"shardsCompleted": 0}


def worker(index: int, phase: str, created: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": f"t-{index}-{created}",
            "creationTimestamp": created,
            "annotations": {COMPLETION_INDEX_ANNOTATION: str(index)},
        },
        "status": {"phase": phase},
    }


def test_the_progress_of_a_training_job_is_in_its_newest_rank_zero_pod() -> None:
    first_run = worker(0, "Failed", "2026-01-01T03:00:00Z")
    restarted = worker(0, "Running", "2026-01-01T03:05:00Z")
    rank1 = worker(1, "Running", "2026-01-01T03:06:00Z")
    pending = worker(0, "Pending", "2026-01-01T03:07:00Z")
    assert rank_zero_pod([first_run, rank1, restarted, pending]) is restarted
    assert rank_zero_pod([first_run, rank1]) is first_run
    assert rank_zero_pod([rank1, pending]) is None
    log = "\n".join(["loading", progress.line(resumed_from=100), progress.line(step=120, loss=1.5), "sample"])
    assert training_progress(log, {"step": 100, "checkpoint_step": 100}) == {
        "step": 120, "checkpoint_step": 100, "resumed_from": 100, "loss": 1.5,
    }  # fmt: skip
