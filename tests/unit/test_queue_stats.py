"""Queue and GPU figures for metrics (policies.scheduling.stats) and their families."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiplane.observe import catalogue as c
from aiplane.observe.families import (
    JobRow,
    ModelRow,
    StateCollector,
    job_families,
    model_families,
    queue_families,
)
from aiplane.policies.scheduling.cycle import Candidate, Holder, Wait
from aiplane.policies.scheduling.fleet import Fleet, NodeShape, Placement, PodShape
from aiplane.policies.scheduling.gpumodel import canonical
from aiplane.policies.scheduling.quota import QueueSpec
from aiplane.policies.scheduling.stats import NO_QUEUE, pending_of, queue_stats
from aiplane.policies.scheduling.workload import Demand, WorkloadInfo


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def fleet_with(holders: list[Holder]) -> Fleet:
    fleet = Fleet([NodeShape("a", 64000, 512000, 8, "H100"), NodeShape("b", 64000, 512000, 8, "H100")])
    for h in holders:
        for pod, placement in h.pods:
            fleet.bind(pod, placement)
    return fleet


def job(key: str, queue: str, gpus: int) -> WorkloadInfo:
    return WorkloadInfo(key, queue, Demand(gpu=gpus, gpu_model="H100"))


def test_free_gpus_where_the_waiting_shape_cannot_fit_are_stranded_the_rest_idle() -> None:
    six = PodShape("six", gpus=6, gpu_milli=1000)
    holder = Holder(job("TrainingJob/six", "team-a", 6), "H100", ((six, Placement(0, (0, 1, 2, 3, 4, 5))),))
    four = PodShape("four", gpus=4, gpu_milli=1000)
    waiting = Candidate(job("TrainingJob/four", "team-a", 4), (four,))
    queues = {"team-a": QueueSpec("team-a", {"H100": 4}), "team-b": QueueSpec("team-b", {"H100": 8})}
    pending = pending_of([Wait("TrainingJob/four", "quota: 6/4 H100 used", "quota")], [waiting])
    stats = queue_stats(fleet_with([holder]), queues, [holder], [waiting], pending)

    # node a: 6 held, 2 free but a 4-GPU pod (the only shape that waits) cannot use them
    h100 = canonical("H100")  # the node's GPU product, as GFD labels it
    assert stats.gpus == {(h100, "allocated"): 6.0, (h100, "idle"): 8.0, (h100, "stranded"): 2.0}
    assert stats.pending == {("team-a", "quota"): 1}
    assert stats.admitted == {"team-a": 1, "team-b": 0}
    assert stats.used == {("team-a", "H100"): 6.0, ("team-b", "H100"): 0.0}
    assert stats.borrowed == {("team-a", "H100"): 2.0, ("team-b", "H100"): 0.0}
    assert stats.nominal == {("team-a", "H100"): 4.0, ("team-b", "H100"): 8.0}


def test_a_reserved_wait_and_quota_free_work_are_told_apart() -> None:
    replica = Candidate(job("Model/m", "", 1), (PodShape("r", gpus=1, gpu_milli=1000),), queued=False)
    gang = Candidate(job("TrainingJob/g", "team-a", 16), (PodShape("g", gpus=8, gpu_milli=1000),) * 2)
    waits = [Wait("Model/m", "no GPU", "placement"), Wait("TrainingJob/g", "no fit", "placement", (0, 1))]
    assert pending_of(waits, [replica, gang]) == {(NO_QUEUE, "placement"): 1, ("team-a", "reserved"): 1}


def test_families_export_every_row_under_the_catalogue_names_and_omit_the_unknown() -> None:
    registry = CollectorRegistry()
    six = PodShape("six", gpus=6, gpu_milli=1000)
    holder = Holder(job("TrainingJob/six", "team-a", 6), "H100", ((six, Placement(0, tuple(range(6)))),))
    stats = queue_stats(fleet_with([holder]), {"team-a": QueueSpec("team-a", {"H100": 8})}, [holder], [], {})
    models = [ModelRow("smollm2", 2, 1, 1, 3, "concurrency", 5.5, 4.0, 2.0), ModelRow("quiet", 0, 0, 0, 1)]
    jobs = [
        JobRow("TrainingJob", "six", "team-a", "Running", None, 6.0, step=40, total_steps=100, loss=1.5),
        JobRow("BatchJob", "emb", "team-a", "Pending", 12.5, shards_completed=1, shards_total=4, rows=30),
    ]
    registry.register(
        StateCollector(lambda: [*model_families(models), *job_families(jobs), *queue_families(stats)])
    )
    got = samples(registry)
    assert got[c.AUTOSCALER_DESIRED.name, (("model", "smollm2"),)] == 2
    assert got[c.AUTOSCALER_VALUE.name, (("metric", "concurrency"), ("model", "smollm2"))] == 5.5
    assert (c.AUTOSCALER_VALUE.name, (("metric", "concurrency"), ("model", "quiet"))) not in got
    assert got[c.MODEL_GPUS.name, (("model", "smollm2"),)] == 2.0
    assert got[c.JOB_STEP.name, (("job_name", "six"),)] == 40
    assert got[c.JOB_ROWS.name, (("job_name", "emb"),)] == 30
    assert got[c.JOB_PENDING.name, (("job_name", "emb"), ("kind", "BatchJob"), ("queue", "team-a"))] == 12.5
    running = (("job_name", "six"), ("kind", "TrainingJob"), ("queue", "team-a"))
    assert (c.JOB_PENDING.name, running) not in got
    phase = (("job_name", "six"), ("kind", "TrainingJob"), ("phase", "Running"), ("queue", "team-a"))
    assert got[c.JOB_PHASE.name, phase] == 1
    assert got[c.CLUSTER_GPUS.name, (("gpu_model", canonical("H100")), ("state", "allocated"))] == 6.0
    assert got[c.QUEUE_USED.name, (("gpu_model", "H100"), ("queue", "team-a"))] == 6.0
    # every series exported is declared in the catalogue
    names = {name.removesuffix("_created") for name, _ in got}
    assert names <= set(c.CATALOGUE)
