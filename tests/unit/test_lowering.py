"""Lowering: aiplane resources -> the native objects the operator applies.

Concrete values, because these are what the API server, kubelet, device plugin and Job
controller act on. (All of these shapes were also accepted by a real kube-apiserver's
server-side dry run while writing them; here we pin the values.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from aiplane.api import API_VERSION, BatchJob, Model, TrainingJob, load_file, parse_yaml
from aiplane.cli.kube import register
from aiplane.errors import ValidationError
from aiplane.runtime.kubernetes.lowering import (
    LoweringOptions,
    OwnerRef,
    lower,
    lower_batch_job,
    lower_model,
    lower_training_job,
    selector_string,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
UID = "0b0e9c4e-1111-2222-3333-444455556666"


def one(text: str) -> Any:
    (resource,) = parse_yaml(f"apiVersion: {API_VERSION}\n" + textwrap.dedent(text))
    return resource


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {o["kind"]: o for o in objects}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


H100 = """\
kind: Model
metadata: {name: llama, labels: {team: research}}
spec:
  engine: vllm
  source: hf://meta-llama/Meta-Llama-3-8B-Instruct
  resources: {gpus: 1, gpuModel: H100, cpu: "8", memory: 32Gi}
  replicas: {min: 2, max: 4}
  cache: {size: 40Gi}
"""


@pytest.fixture
def h100() -> Model:
    model = one(H100)
    assert isinstance(model, Model)
    return model


def test_h100_model_lowers_to_pvc_service_deployment_pdb(h100: Model) -> None:
    owner = OwnerRef.of(h100, UID)
    objects = lower_model(h100, "ml", owner, replicas=3)
    assert [o["kind"] for o in objects] == [
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ]
    kinds = by_kind(objects)
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "aiplane"
        assert meta["labels"]["app.kubernetes.io/instance"] == "llama"
        assert meta["labels"]["aiplane.dev/model"] == "llama"
        assert meta["labels"]["team"] == "research"  # users' labels follow, for cost attribution
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "aiplane.dev/v1alpha1",
                "kind": "Model",
                "name": "llama",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]

    claim = kinds["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "llama-model-cache"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "40Gi"}}}

    deploy = kinds["Deployment"]["spec"]
    assert deploy["replicas"] == 3
    assert deploy["selector"]["matchLabels"] == {
        "aiplane.dev/model": "llama",
        "app.kubernetes.io/component": "model-server",
    }
    assert deploy["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = deploy["template"]["spec"]
    assert pod["schedulerName"] == "aiplane"  # one scheduler for every GPU, shares included
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert pod["terminationGracePeriodSeconds"] == 10 + 600

    (server,) = pod["containers"]
    assert server["image"] == "vllm/vllm-openai:v0.11.0"
    assert server["args"][:2] == ["/models/meta-llama/Meta-Llama-3-8B-Instruct", "--served-model-name"]
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert server["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    startup = server["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 30 * 60
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]

    (init,) = pod["initContainers"]
    assert init["name"] == "preload"
    assert init["image"].startswith("ghcr.io/aiplane/aiplane:")
    assert init["command"] + init["args"] == [
        "aiplane", "cache", "preload",
        "--source", "hf://meta-llama/Meta-Llama-3-8B-Instruct",
        "--dest", "/models/meta-llama/Meta-Llama-3-8B-Instruct",
    ]  # fmt: skip
    assert init["volumeMounts"][0] == {"name": "model-cache", "mountPath": "/models"}
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "llama-model-cache"}} in pod[
        "volumes"
    ]

    annotations = deploy["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"

    svc = kinds["Service"]
    assert svc["metadata"]["name"] == "llama"
    assert svc["metadata"]["labels"]["aiplane.dev/served-model"] == "llama"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == deploy["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["name"] == "http" and svc["spec"]["ports"][0]["targetPort"] == "http"

    pdb = kinds["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["selector"]["matchLabels"]


def test_replicas_default_to_min_and_no_pdb_below_two() -> None:
    model = one("kind: Model\nmetadata: {name: small}\nspec: {engine: llamacpp, source: pkg://p/m.gguf}\n")
    objects = lower_model(model, "default")
    kinds = by_kind(objects)
    assert kinds["Deployment"]["spec"]["replicas"] == 1
    assert "PodDisruptionBudget" not in kinds
    assert "ownerReferences" not in kinds["Deployment"]["metadata"]
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod  # CPU model: no GPU placement
    startup = pod["containers"][0]["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] == 10 * 60
    assert selector_string(model) == "aiplane.dev/model=small,app.kubernetes.io/component=model-server"
    with pytest.raises(ValueError, match="replicas"):
        lower_model(model, "default", replicas=-1)


def test_replicas_follow_scale_within_the_bounds() -> None:
    def replicas(spec: str) -> int | None:
        model = one(
            "kind: Model\nmetadata: {name: m}\n"
            f"spec: {{engine: llamacpp, source: pkg://p/m.gguf, {spec}}}\n"
        )
        return by_kind(lower_model(model, "default"))["Deployment"]["spec"].get("replicas")

    assert replicas("replicas: {min: 0, max: 4}") == 0
    assert replicas("replicas: {min: 0, max: 4, desired: 3}") == 3  # what the autoscaler wrote to /scale
    assert replicas("replicas: {min: 1, max: 4, desired: 7}") == 4
    assert replicas("replicas: {min: 2, max: 4, desired: 0}") == 2


def test_the_grace_period_drains_a_request_timeout_after_the_prestop_sleep() -> None:
    """The kubelet counts the grace period from the deletion, preStop included: after the
    10 s sleep (endpoints drop the pod meanwhile) a stream has its request timeout to end."""

    def drain(timeouts: str) -> tuple[int, dict[str, Any]]:
        model = one(
            "kind: Model\nmetadata: {name: m}\n"
            f"spec: {{engine: llamacpp, source: pkg://p/m.gguf, timeouts: {{{timeouts}}}}}\n"
        )
        pod = by_kind(lower_model(model, "default"))["Deployment"]["spec"]["template"]["spec"]
        return pod["terminationGracePeriodSeconds"], pod["containers"][0]["lifecycle"]

    prestop = {"preStop": {"sleep": {"seconds": 10}}}  # the kubelet's own sleep: no shell in the image
    assert drain("request: 60s") == (10 + 60, prestop)
    assert drain("request: 90.5s") == (10 + 91, prestop)  # rounded up, never short
    assert drain("request: 2h") == (10 + 600, prestop)  # capped: a node drain must not wait hours


def test_a_cpu_model_lowers_to_the_textbook_hpa_and_leaves_replicas_to_it() -> None:
    model = one(
        "kind: Model\nmetadata: {name: m}\nspec: {engine: llamacpp, source: pkg://p/m.gguf,"
        " resources: {cpu: '2'}, replicas: {min: 1, max: 5}, autoscaling: {metric: cpu}}\n"
    )
    kinds = by_kind(lower_model(model, "ns"))
    assert "replicas" not in kinds["Deployment"]["spec"]  # server-side apply would fight the HPA
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "m"},
        "minReplicas": 1,
        "maxReplicas": 5,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            }
        ],
    }
    assert (
        kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        == "2"
    )
    concurrency = one("kind: Model\nmetadata: {name: c}\nspec: {engine: llamacpp, source: pkg://p/m.gguf}\n")
    assert "HorizontalPodAutoscaler" not in by_kind(lower_model(concurrency, "ns"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("autoscaling: {metric: cpu}", "autoscaling.metric cpu needs resources.cpu"),
        (
            "resources: {memory: 1Gi}, replicas: {min: 0}, autoscaling: {metric: memory}",
            "cannot scale to zero",
        ),
        (
            "autoscaling: {metric: kv-cache, target: 80}",
            "is a fraction in (0, 1] (got 80); for 70% write 0.7",
        ),
    ],
)
def test_autoscaling_specs_that_cannot_work_are_rejected_with_the_field(spec: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_yaml(
            "kind: Model\nmetadata: {name: m}\n"
            f"spec: {{engine: llamacpp, source: pkg://p/m.gguf, {spec}}}\n",
            source="m.yaml",
        )
    assert message in str(err.value) and "m.yaml" in str(err.value)


def test_fractional_gpu_requests_one_device_and_records_the_share() -> None:
    model = one(
        "kind: Model\nmetadata: {name: half}\nspec: {engine: tgi, source: hf://a/b, resources: {gpus: 0.5}}"
    )
    deploy = by_kind(lower_model(model, "default"))["Deployment"]["spec"]["template"]
    assert deploy["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert deploy["metadata"]["annotations"]["aiplane.dev/gpu-fraction"] == "0.5"
    assert deploy["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_unknown_gpu_model_matches_product_or_admin_label() -> None:
    model = one(
        "kind: Model\nmetadata: {name: m}\n"
        "spec: {engine: vllm, source: hf://a/b, resources: {gpus: 2, gpuModel: MI300X}}"
    )
    pod = by_kind(lower_model(model, "default"))["Deployment"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["MI300X"]}]},
        {"matchExpressions": [{"key": "aiplane.dev/gpu-model", "operator": "In", "values": ["MI300X"]}]},
    ]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert "--tensor-parallel-size" in pod["containers"][0]["args"]

    bad = one(
        "kind: Model\nmetadata: {name: m}\n"
        "spec: {engine: vllm, source: hf://a/b, resources: {gpus: 1, gpuModel: 'A 100'}}"
    )
    with pytest.raises(ValidationError, match=r"Model/m: spec.resources.gpuModel: must be a known GPU"):
        lower_model(bad, "default")


def test_pvc_source_is_mounted_read_only_without_cache_or_preload() -> None:
    model = one("kind: Model\nmetadata: {name: big}\nspec: {engine: sglang, source: pvc://weights/llama-70b}")
    kinds = by_kind(lower_model(model, "default"))
    assert "PersistentVolumeClaim" not in kinds
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert pod["volumes"] == [
        {"name": "model-source", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}
    ]
    server = pod["containers"][0]
    assert server["volumeMounts"] == [
        {"name": "model-source", "mountPath": "/models/weights", "readOnly": True}
    ]
    assert server["args"][server["args"].index("--model-path") + 1] == "/models/weights/llama-70b"


def test_without_preload_the_engine_fetches_hf_into_the_cache() -> None:
    model = one(
        "kind: Model\nmetadata: {name: lazy}\n"
        "spec: {engine: vllm, source: hf://org/repo, cache: {preload: false}, servedModelName: org/repo}"
    )
    kinds = by_kind(lower_model(model, "default"))
    assert kinds["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    server = pod["containers"][0]
    assert server["args"][0] == "org/repo"
    assert env_of(server)["HF_HOME"] == "/models/.hf"
    assert server["volumeMounts"] == [{"name": "model-cache", "mountPath": "/models"}]
    svc = kinds["Service"]["metadata"]
    assert "aiplane.dev/served-model" not in svc["labels"]  # '/' is not allowed in a label value
    assert svc["annotations"]["aiplane.dev/served-model"] == "org/repo"


def test_options_choose_storage_and_image() -> None:
    model = one(H100)
    options = LoweringOptions(
        image="registry.local/aiplane:dev", storage_class="nfs", cache_access_mode="ReadWriteMany"
    )
    kinds = by_kind(lower_model(model, "default", options=options))
    assert kinds["PersistentVolumeClaim"]["spec"]["storageClassName"] == "nfs"
    assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    init = kinds["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["image"] == "registry.local/aiplane:dev"


def test_a_service_name_must_start_with_a_letter() -> None:
    model = one("kind: Model\nmetadata: {name: 3b}\nspec: {engine: llamacpp, source: pkg://p/m.gguf}")
    with pytest.raises(ValidationError, match=r"Model/3b: metadata\.name: .*letter first"):
        lower_model(model, "default")


TRAINING = """\
kind: TrainingJob
metadata: {name: finetune}
spec:
  image: ghcr.io/acme/train:1
  command: [torchrun, train.py]
  workers: 3
  gpusPerWorker: 2
  gpuModel: A100
  queue: team-a
  priority: 5
  maxRestarts: 2
  activeDeadline: 2h
  checkpoint: {path: /checkpoints/finetune}
  env: {EPOCHS: "3"}
"""


def test_three_worker_training_job() -> None:
    job = one(TRAINING)
    assert isinstance(job, TrainingJob)
    objects = lower_training_job(job, "ml", OwnerRef.of(job, UID))
    assert [o["kind"] for o in objects] == ["PersistentVolumeClaim", "Service", "Job"]
    kinds = by_kind(objects)
    for obj in objects:
        assert obj["metadata"]["labels"]["aiplane.dev/job"] == "finetune"
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"

    svc = kinds["Service"]
    assert svc["metadata"]["name"] == "finetune-workers"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"aiplane.dev/job": "finetune"}

    spec = kinds["Job"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (3, 3)
    assert spec["suspend"] is True
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 7200
    template = spec["template"]
    assert template["metadata"]["labels"]["aiplane.dev/queue"] == "team-a"
    assert template["metadata"]["labels"]["aiplane.dev/job"] == "finetune"
    assert template["metadata"]["annotations"] == {"aiplane.dev/priority": "5", "aiplane.dev/gang-size": "3"}
    pod = template["spec"]
    assert pod["schedulerName"] == "aiplane"
    assert pod["subdomain"] == "finetune-workers"
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"

    (trainer,) = pod["containers"]
    assert trainer["command"] == ["torchrun", "train.py"]
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    env = env_of(trainer)
    index = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert env["NODE_RANK"] == index and env["RANK"] == index and env["PET_NODE_RANK"] == index
    assert env["MASTER_ADDR"] == "finetune-0.finetune-workers.ml.svc"
    assert env["MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == env["NNODES"] == env["PET_NNODES"] == "3"
    assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"]
    assert env["PET_NPROC_PER_NODE"] == "2"
    assert env["AIPLANE_CHECKPOINT_DIR"] == "/checkpoints/finetune"
    assert env["EPOCHS"] == "3"
    assert {"name": "checkpoints", "mountPath": "/checkpoints/finetune"} in trainer["volumeMounts"]

    claim = kinds["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "finetune-checkpoints"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every rank reads the checkpoint
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"


def test_admitted_training_job_is_not_suspended() -> None:
    job = one(TRAINING)
    assert by_kind(lower_training_job(job, "ml", suspend=False))["Job"]["spec"]["suspend"] is False


def test_scheduled_training_job_is_a_cronjob_of_the_job() -> None:
    job = one(TRAINING.replace("  env:", '  schedule: "0 3 * * *"\n  env:'))
    kinds = by_kind(lower_training_job(job, "ml"))
    assert set(kinds) == {"PersistentVolumeClaim", "Service", "CronJob"}
    cron = kinds["CronJob"]["spec"]
    assert cron["schedule"] == "0 3 * * *"
    assert cron["concurrencyPolicy"] == "Forbid"
    job_spec = cron["jobTemplate"]["spec"]
    assert job_spec["completionMode"] == "Indexed" and job_spec["suspend"] is True
    # every run is created suspended, admitted or not: each is queued on its own
    admitted = by_kind(lower_training_job(job, "ml", suspend=False))["CronJob"]["spec"]
    assert admitted["jobTemplate"]["spec"]["suspend"] is True
    env = job_spec["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    # each run's Job has a generated name: rank 0's host comes from the pod's job-name label
    assert names.index("AIPLANE_JOB_NAME") < names.index("MASTER_ADDR")
    assert env[names.index("AIPLANE_JOB_NAME")]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/job-name']"
    )
    assert env[names.index("MASTER_ADDR")]["value"] == "$(AIPLANE_JOB_NAME)-0.finetune-workers.ml.svc"


def test_training_job_needs_an_image_on_kubernetes() -> None:
    (nightly,) = [r for r in load_file(EXAMPLES / "jobs.yaml") if isinstance(r, TrainingJob)]
    nightly = nightly.model_copy(update={"spec": nightly.spec.model_copy(update={"image": None})})
    with pytest.raises(ValidationError, match=r"TrainingJob/nightly: spec\.image: required on Kubernetes"):
        lower_training_job(nightly, "default")


def test_batch_job_is_an_indexed_job_of_shards() -> None:
    job = one(
        """\
        kind: BatchJob
        metadata: {name: embed-corpus}
        spec: {task: embed, model: minilm, input: pvc://data/corpus.jsonl, output: s3://out/emb/,
               shards: 8, parallelism: 2, queue: team-a, maxRetries: 4}
        """
    )
    assert isinstance(job, BatchJob)
    (obj,) = lower_batch_job(job, "ml", OwnerRef.of(job, UID))
    assert obj["kind"] == "Job" and obj["metadata"]["labels"]["aiplane.dev/job"] == "embed-corpus"
    spec = obj["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 2)
    assert spec["backoffLimitPerIndex"] == 4 and spec["suspend"] is True
    # a shard stopped by the platform (SIGTERM: exit 143, or an eviction) is not a failure
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert {
        "action": "Ignore",
        "onExitCodes": {"containerName": "shard", "operator": "In", "values": [143]},
    } in rules
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["schedulerName"] == "aiplane"
    (shard,) = pod["containers"]
    assert shard["command"] == ["aiplane", "run-shard"]
    assert shard["image"].startswith("ghcr.io/aiplane/aiplane:")
    env = env_of(shard)
    assert env["AIPLANE_SHARD"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env["AIPLANE_SHARDS"] == "8"
    assert env["AIPLANE_TASK"] == "embed"
    assert env["AIPLANE_INPUT"] == "/data/data/corpus.jsonl"
    assert env["AIPLANE_OUTPUT"] == "s3://out/emb/"
    assert env["AIPLANE_MODEL_URL"] == "http://minilm.ml.svc/v1"
    assert shard["volumeMounts"] == [{"name": "data-0", "mountPath": "/data/data", "readOnly": True}]


def test_custom_batch_job_runs_its_command_with_gpus() -> None:
    job = one(
        "kind: BatchJob\nmetadata: {name: c}\n"
        "spec: {task: custom, image: acme/x:1, command: [python, run.py],"
        " input: a, output: b, gpusPerShard: 1}"
    )
    shard = lower_batch_job(job, "default")[0]["spec"]["template"]["spec"]["containers"][0]
    assert (shard["image"], shard["command"]) == ("acme/x:1", ["python", "run.py"])
    assert shard["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert "AIPLANE_MODEL_URL" not in env_of(shard)


def test_lower_dispatches_and_queue_lowers_to_nothing() -> None:
    resources = load_file(EXAMPLES / "jobs.yaml")
    queue = next(r for r in resources if r.kind == "Queue")
    assert lower(queue, "default") == []
    batch = next(r for r in resources if r.kind == "BatchJob")
    assert lower(batch, "x", suspend=False)[0]["spec"]["suspend"] is False
    model = one(H100)
    assert by_kind(lower(model, "x", replicas=0))["Deployment"]["spec"]["replicas"] == 0


@pytest.mark.parametrize("name", ["gpu-models.yaml", "smollm2.yaml", "embeddings.yaml"])
def test_examples_lower_to_well_formed_objects(name: str) -> None:
    for resource in load_file(EXAMPLES / name):
        for obj in lower(resource, "demo"):
            assert obj["apiVersion"] and obj["kind"]
            assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == "demo"


def test_render_prints_multi_document_yaml(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    source = tmp_path / "models.yaml"
    source.write_text(
        (EXAMPLES / "gpu-models.yaml").read_text() + "---\n" + (EXAMPLES / "jobs.yaml").read_text()
    )
    result = CliRunner().invoke(app, ["render", "-f", str(source), "--namespace", "ml"])
    assert result.exit_code == 0, result.output
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds.count("Deployment") == 3 and "CronJob" in kinds and kinds.count("Job") == 1  # + minilm

    no_image = (EXAMPLES / "jobs.yaml").read_text().replace("  image: ghcr.io/", "  # image: ghcr.io/")
    source.write_text(no_image)
    result = CliRunner().invoke(app, ["render", "-f", str(source), "--namespace", "ml"])
    assert result.exit_code == 1  # a TrainingJob without an image: the error names the field
    assert "spec.image" in str(result.exception)

    source.write_text((EXAMPLES / "gpu-models.yaml").read_text())
    result = CliRunner().invoke(app, ["render", "-f", str(source), "-n", "ml"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("PersistentVolumeClaim", "llama-3-8b-model-cache"),
        ("Service", "llama-3-8b"),
        ("Deployment", "llama-3-8b"),
        ("PersistentVolumeClaim", "mistral-7b-tgi-model-cache"),
        ("Service", "mistral-7b-tgi"),
        ("Deployment", "mistral-7b-tgi"),
    ]
    assert all(d["apiVersion"] and d["metadata"]["namespace"] == "ml" for d in docs)
    assert all("ownerReferences" not in d["metadata"] for d in docs)  # GitOps: nothing owns them


def test_lowering_is_pure() -> None:
    """No Kubernetes client, HTTP stack or runtime comes with the lowering (or CRD) modules."""
    banned = ("kopf", "kubernetes_asyncio", "aiohttp", "aiplane.gateway", "aiplane.runtime.local")
    code = (
        "import sys, aiplane.runtime.kubernetes.lowering, aiplane.runtime.kubernetes.crds;"
        f"bad = [m for m in {banned!r} if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
