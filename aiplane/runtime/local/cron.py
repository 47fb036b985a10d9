"""When a scheduled TrainingJob runs on the local runtime: the CronJob controller's rules.

Each fire of ``spec.schedule`` is a run of its own, queued and admitted like any job.
As the lowering's CronJob does (``concurrencyPolicy: Forbid``,
``startingDeadlineSeconds: 600``): a fire that comes while the last run still runs
starts no second run, it waits for that run to end and is dropped once ten minutes
old; fires missed (while busy, or while no plane ran) are not caught up one by one,
the latest of them runs if it is less than ten minutes old. Times are this machine's local time, as
``cron`` on it would read them. Pure: the caller passes ``now``.
"""

from __future__ import annotations

from datetime import datetime

from croniter import croniter

STARTING_DEADLINE_S = 600.0  # as the lowering's CronJob: a fire older than this is missed


def _local(ts: float) -> datetime:
    return datetime.fromtimestamp(ts).astimezone()


def next_fire(schedule: str, after: float) -> float:
    """The first fire strictly after ``after``."""
    return float(croniter(schedule, _local(after)).get_next(float))


def due_fire(schedule: str, last: float, now: float) -> float | None:
    """The fire to run now, or None: the latest fire in (``last``, ``now``], unless too old.

    ``last`` is the fire that ran last (or when the job was created, before any run).
    """
    if next_fire(schedule, last) > now:
        return None
    latest = float(croniter(schedule, _local(now + 1)).get_prev(float))  # get_prev excludes its start
    if latest > now:
        latest = float(croniter(schedule, _local(now)).get_prev(float))
    if latest <= last or now - latest > STARTING_DEADLINE_S:
        return None
    return latest


def fire_text(ts: float) -> str:
    return _local(ts).strftime("%Y-%m-%d %H:%M %Z")
