"""From API objects to what the scheduler reads: quantities, pod requests, node shapes, gangs."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from aiplane.api import API_VERSION, BatchJob, TrainingJob, parse_yaml
from aiplane.dev.kwok_nodes import fleet
from aiplane.policies.scheduling.filters import AffinityTerm, MatchExpression, Toleration
from aiplane.policies.scheduling.gpumodel import canonical
from aiplane.runtime.kubernetes.lowering.batch import lower_batch_job
from aiplane.runtime.kubernetes.lowering.training import lower_training_job
from aiplane.runtime.kubernetes.scheduling_view import build_view, node_filter_info, node_shape
from aiplane.runtime.kubernetes.snapshot import (
    SnapshotError,
    assemble_gangs,
    count_indexes,
    gang_key,
    job_gang_size,
    pod_amounts,
    pod_request,
    quantity,
)

GiB = 2**30


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2.0),
        ("500m", 0.5),
        ("1.5", 1.5),
        ("1Gi", float(GiB)),
        ("512Mi", 512 * 2**20),
        ("1G", 1e9),
        ("1e3", 1000.0),
        ("100u", 1e-4),
        ("1k", 1000.0),
        (3, 3.0),
    ],
)
def test_quantities(text: str | int, value: float) -> None:
    assert quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "1.2.3", "Gi", "1 Gi", "1GB"])
def test_bad_quantities_are_named(text: str) -> None:
    with pytest.raises(SnapshotError, match="not a Kubernetes quantity"):
        quantity(text)


def pod(
    name: str,
    *,
    ns: str = "ml",
    gpus: int = 0,
    cpu: str | None = None,
    memory: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    job: str | None = None,
    node: str | None = None,
    phase: str = "Pending",
    created: str = "2025-01-01T00:00:00Z",
    **spec: Any,
) -> dict[str, Any]:
    requests = {k: v for k, v in {"cpu": cpu, "memory": memory}.items() if v}
    resources: dict[str, Any] = {"requests": requests} if requests else {}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
        "creationTimestamp": created,
    }
    if job:
        meta["labels"]["batch.kubernetes.io/job-name"] = job
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "controller": True}]
    body: dict[str, Any] = {"schedulerName": "aiplane", "containers": [{"name": "c", "resources": resources}]}
    if node:
        body["nodeName"] = node
    return {"metadata": meta, "spec": {**body, **spec}, "status": {"phase": phase}}


def indexed_job(name: str, parallelism: int, completions: int | None = None, **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"parallelism": parallelism, "completionMode": "Indexed"}
    if completions is not None:
        spec["completions"] = completions
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": spec, "status": status}


def test_pod_amounts_sum_containers_and_take_the_largest_init_container() -> None:
    p = pod("p", gpus=8, cpu="2", memory="4Gi")
    p["spec"]["containers"].append(
        {"name": "side", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}
    )
    p["spec"]["initContainers"] = [
        {"name": "preload", "resources": {"requests": {"cpu": "4", "memory": "1Gi"}}},
        {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
    ]
    p["spec"]["overhead"] = {"cpu": "250m"}
    amounts = pod_amounts(p)
    # cpu: max(2 + 0.5 + 0.1 sidecar, 4 init) + 0.25 overhead; memory: max(4+1, 1) GiB
    assert (amounts.gpus, amounts.cpu_milli, amounts.memory) == (8, 4250, 5 * GiB)


def test_a_malformed_request_names_the_pod() -> None:
    with pytest.raises(SnapshotError, match="pod ml/p: not a Kubernetes quantity: 'lots'"):
        pod_amounts(pod("p", cpu="lots"))


def test_a_lowered_training_worker_reads_as_its_request() -> None:
    (job,) = parse_yaml(
        f"apiVersion: {API_VERSION}\n"
        + textwrap.dedent("""\
        kind: TrainingJob
        metadata: {name: ft}
        spec: {image: img, command: [python], workers: 2, gpusPerWorker: 8, gpuModel: H100,
               cpu: "16", memory: 64Gi, queue: team-a}
        """)
    )
    assert isinstance(job, TrainingJob)
    template = next(o for o in lower_training_job(job, "ml") if o["kind"] == "Job")["spec"]["template"]
    worker = {"metadata": {"name": "ft-0", **template["metadata"]}, "spec": template["spec"]}
    amounts = pod_amounts(worker)
    assert (amounts.gpus, amounts.cpu_milli, amounts.memory) == (8, 16_000, 64 * GiB)
    request = pod_request(worker)
    assert request.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert request.tolerations == (Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule"),)


def test_required_node_affinity_and_match_fields_are_read() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "aiplane.dev/gpu-model", "operator": "In", "values": ["L4"]}
                        ]
                    },
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-l4-0"]}]},
                ]
            }
        }
    }
    request = pod_request(pod("p", affinity=affinity))
    assert request.required_affinity_terms == (
        AffinityTerm((MatchExpression("aiplane.dev/gpu-model", "In", ("L4",)),)),
        AffinityTerm((MatchExpression("metadata.name", "In", ("gpu-l4-0",), on_field=True),)),
    )


def test_a_kwok_gpu_node_with_bound_pods() -> None:
    node = next(n for n in fleet(["1x8:H100"], 0) if n["metadata"]["name"] == "gpu-h100-0")
    shape = node_shape(node)
    assert (shape.name, shape.gpus, shape.cpu_milli, shape.memory_mib) == (
        "gpu-h100-0",
        8,
        192_000,
        2048 * 1024,
    )
    assert shape.model == canonical("H100")
    info = node_filter_info(node)
    assert info.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert [str(t) for t in info.taints] == ["nvidia.com/gpu=present"]
    bound = [
        pod("a", gpus=4, cpu="8", memory="100Gi", node="gpu-h100-0"),
        pod("b", gpus=2, node="gpu-h100-0"),
        pod("done", gpus=2, node="gpu-h100-0", phase="Succeeded"),  # a finished pod holds nothing
    ]
    view = build_view([node], bound, [], [], {}, now=0.0)
    assert view.problems == []
    f = view.fleet
    assert int((f.gpu_free[0] == 1000).sum()) == 2  # 8 GPUs, 6 held
    assert (int(f.cpu_free[0]), int(f.memory_free[0])) == (192_000 - 8000, (2048 - 100) * 1024)


@pytest.mark.parametrize(
    ("job", "size"),
    [
        (indexed_job("j", 3, 3), 3),
        (indexed_job("j", 2, 8), 2),
        (indexed_job("j", 4, 8, succeeded=6), 2),
        (indexed_job("j", 4, 8, succeeded=3, failedIndexes="1,5-6"), 2),
        (indexed_job("j", 5), 5),
    ],
)
def test_job_gang_size_is_parallelism_capped_by_what_is_left(job: dict[str, Any], size: int) -> None:
    assert job_gang_size(job) == size


def test_count_indexes() -> None:
    assert [count_indexes(t) for t in (None, "", "3", "1,3-5", "0-9")] == [0, 0, 1, 4, 10]


def test_a_gang_waits_until_all_its_pods_exist() -> None:
    jobs = {("ml", "train"): indexed_job("train", 3, 3)}
    two = [pod(f"train-{i}", gpus=8, job="train") for i in range(2)]
    ready, waiting = assemble_gangs(two, [], jobs)
    assert ready == []
    assert [(w.key, w.reason) for w in waiting] == [("ml/train", "waiting for the gang: 2 of 3 pods exist")]
    ready, waiting = assemble_gangs([*two, pod("train-2", gpus=8, job="train")], [], jobs)
    assert waiting == []
    (g,) = ready
    assert (g.gang.job_key, g.gang.min_available, sorted(g.pods)) == (
        "ml/train",
        3,
        ["train-0", "train-1", "train-2"],
    )


def test_a_replacement_pod_joins_its_running_peers() -> None:
    jobs = {("ml", "train"): indexed_job("train", 3, 3)}
    running = [pod(f"train-{i}", gpus=8, job="train", node=f"gpu-{i}", phase="Running") for i in range(2)]
    (g,), waiting = assemble_gangs([pod("train-2", gpus=8, job="train")], running, jobs)
    assert waiting == [] and g.gang.min_available == 1


def test_suspended_missing_and_annotated_jobs() -> None:
    suspended = indexed_job("s", 1, 1)
    suspended["spec"]["suspend"] = True
    annotated = [
        pod(f"t-{i}", job="t", annotations={"aiplane.dev/gang-size": "4", "aiplane.dev/priority": "7"})
        for i in range(2)
    ]
    jobs = {("ml", "s"): suspended, ("ml", "t"): indexed_job("t", 4, 4, succeeded=2), ("ml", "gone"): None}
    ready, waiting = assemble_gangs([pod("s-0", job="s"), pod("gone-0", job="gone"), *annotated], [], jobs)
    assert [(w.key, w.reason) for w in waiting] == [
        ("ml/gone", "Job gone not found"),
        ("ml/s", "Job s is suspended"),
    ]
    (g,) = ready  # gang-size 4, but only 2 indexes are left to run
    assert (g.gang.job_key, g.gang.min_available, g.gang.priority) == ("ml/t", 2, 7)


def test_a_pod_of_no_job_is_a_gang_of_one_and_deleting_pods_are_skipped() -> None:
    alone = pod("alone", labels={"app": "x"}, created="2025-01-02T00:00:00Z")
    leaving = pod("leaving")
    leaving["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    (g,), waiting = assemble_gangs([alone, leaving], [], {})
    assert waiting == []
    assert (g.gang.job_key, g.gang.min_available, g.gang.created) == ("ml/pod/alone", 1, 1735776000.0)
    assert gang_key(pod("x", labels={"aiplane.dev/job": "bj"})) == "ml/bj"


def pods_of(job: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Pods as the Job controller creates them from the lowered template."""
    name, template = job["metadata"]["name"], job["spec"]["template"]
    return [
        {
            "metadata": {
                "name": f"{name}-{i}-x",
                "namespace": "ml",
                "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name},
                "annotations": dict(template["metadata"]["annotations"]),
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": name, "controller": True}
                ],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        for i in range(count)
    ]


def test_training_workers_are_a_gang_and_batch_shards_are_not() -> None:
    training, batch = parse_yaml(
        f"apiVersion: {API_VERSION}\n"
        + textwrap.dedent("""\
        kind: TrainingJob
        metadata: {name: ft}
        spec: {image: img, command: [python], workers: 3, gpusPerWorker: 8, queue: team-a}
        ---
        apiVersion: aiplane.dev/v1alpha1
        kind: BatchJob
        metadata: {name: emb}
        spec: {task: embed, model: minilm, input: a, output: b, shards: 8, parallelism: 2, queue: team-a}
        """)
    )
    assert isinstance(training, TrainingJob) and isinstance(batch, BatchJob)
    ft = next(o for o in lower_training_job(training, "ml", suspend=False) if o["kind"] == "Job")
    (emb,) = lower_batch_job(batch, "ml", suspend=False)
    jobs = {("ml", "ft"): ft, ("ml", "emb"): emb}
    ready, waiting = assemble_gangs([*pods_of(ft, 2), *pods_of(emb, 1)], [], jobs)
    assert [(w.key, w.reason) for w in waiting] == [("ml/ft", "waiting for the gang: 2 of 3 pods exist")]
    assert [(g.gang.job_key, g.gang.min_available) for g in ready] == [("ml/emb", 1)]
    ready, _ = assemble_gangs([*pods_of(ft, 3), *pods_of(emb, 2)], [], jobs)
    assert [(g.gang.job_key, len(g.gang.pods), g.gang.min_available) for g in ready] == [
        ("ml/emb", 2, 1),
        ("ml/ft", 3, 3),
    ]
