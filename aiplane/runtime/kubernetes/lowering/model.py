"""``Model`` -> model-cache PVC, Service, Deployment and (from two replicas up) a PDB.

Decisions, and why:

* **The aiplane scheduler** (``schedulerName: aiplane``, ``LoweringOptions.model_scheduler``).
  One scheduler sees every GPU: a replica with ``gpus: 0.5`` gets half a device that
  another half-GPU replica shares (kube-scheduler counts whole ``nvidia.com/gpu`` units
  and would strand the other half), and serving and training are placed against the same
  fragmentation-aware policy. Replicas take no queue quota and are never preempted;
  the scheduler runs two replicas under a Lease so a scale-up never waits on one.
* **Replicas come from ``/scale``.** The operator's autoscaler writes
  ``spec.replicas.desired`` through the Model's scale subresource; lowering only
  describes it, clamped to ``min``/``max`` (``spec.replicas.count()``). A ``cpu`` or
  ``memory`` Model gets a real ``autoscaling/v2`` HorizontalPodAutoscaler instead, and
  its Deployment leaves ``replicas`` to the HPA (server-side apply would fight it).
* **Probes for slow loads.** The startup probe allows 30 minutes for GPU engines (a
  70B model from a cold cache) and 10 for CPU ones; liveness starts only after it.
  ``progressDeadlineSeconds`` exceeds the startup budget so a slow load is not reported
  as a stuck rollout.
* **Draining.** ``preStop`` sleeps (the kubelet's own sleep action: engine images need
  no shell) so endpoints drop the pod before SIGTERM; the grace period then covers the
  request timeout (capped) so streams in flight finish.
* **Rollouts** add one replica before removing one (``maxUnavailable: 0``).
* ``enableServiceLinks: false``: a Service named ``vllm`` would otherwise inject
  ``VLLM_PORT=tcp://...``, which vLLM reads as its own setting and dies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aiplane.api import Model, parse_duration
from aiplane.engines import ContainerLaunch, EngineRegistry, default_registry
from aiplane.engines.sources import container_model_path
from aiplane.runtime.kubernetes.constants import (
    AIPLANE_UID,
    ANNOTATION_SERVED_MODEL,
    LABEL_COMPONENT,
    LABEL_ENGINE,
    LABEL_MODEL,
    LABEL_SERVED_MODEL,
)
from aiplane.runtime.kubernetes.lowering.common import (
    DEFAULT_OPTIONS,
    SECURE_DEFAULTS,
    GpuPlacement,
    LoweringOptions,
    Manifest,
    OwnerRef,
    check_service_name,
    env_list,
    gpu_placement,
    is_label_value,
    labels,
    metadata,
    pvc,
    resources,
    split_pvc_uri,
    user_pod_annotations,
)

APP = "model"
COMPONENT = "model-server"
MODEL_MOUNT = "/models"
SERVICE_PORT = 80
PRESTOP_SLEEP_S = 10
MAX_DRAIN_S = 600
GPU_ENGINES = frozenset({"vllm", "tgi", "sglang"})
STARTUP_PERIOD_S = 10
GPU_STARTUP_BUDGET_S = 30 * 60
CPU_STARTUP_BUDGET_S = 10 * 60
SHM_SIZE = "2Gi"  # NCCL between tensor-parallel ranks needs more than the default 64Mi
PRELOAD_RESOURCES: Manifest = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


def selector(model: Model) -> dict[str, str]:
    """The Deployment's (immutable) selector: only labels that never change for a model."""
    return {LABEL_MODEL: model.name, LABEL_COMPONENT: COMPONENT}


def selector_string(model: Model) -> str:
    """``status.selector`` for the scale subresource (HPA wants it serialized)."""
    return ",".join(f"{k}={v}" for k, v in selector(model).items())


def cache_claim_name(model: Model) -> str:
    return f"{model.name}-model-cache"


@dataclass(frozen=True)
class _Storage:
    """Where the weights are and how they get there."""

    model_path: str
    volumes: list[Manifest] = field(default_factory=list)
    mounts: list[Manifest] = field(default_factory=list)
    init_containers: list[Manifest] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    claims: list[Manifest] = field(default_factory=list)
    writes_cache: bool = False


def _storage(model: Model, namespace: str, owner: OwnerRef | None, options: LoweringOptions) -> _Storage:
    """Three cases: a named PVC (mounted read-only), a pre-loaded cache, an engine that fetches.

    * ``pvc://claim/path``: the claim is mounted at ``/models/claim``; nothing is copied.
    * ``cache.preload``: the ``preload`` init container copies the source into the cache
      PVC (skipping when the ``.aiplane-complete`` marker says it is warm); the server
      mounts it read-only.
    * otherwise the server mounts the cache read-write; an ``hf://`` repo is handed to the
      engine by name with ``HF_HOME`` on the cache, so the engine downloads it once.
      llama.cpp's ``--model`` takes only a file, so for it the cache must already be warm.
    """
    source = model.spec.source
    model_path = container_model_path(source, MODEL_MOUNT)
    named = split_pvc_uri(source)
    if named is not None:
        claim, _ = named
        return _Storage(
            model_path=model_path,
            volumes=[
                {"name": "model-source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            ],
            mounts=[{"name": "model-source", "mountPath": f"{MODEL_MOUNT}/{claim}", "readOnly": True}],
        )
    cache = pvc(
        cache_claim_name(model),
        namespace,
        labels(model, APP, "model-cache", **{LABEL_MODEL: model.name}),
        owner,
        model.spec.cache.size or options.default_cache_size,
        options.cache_access_mode,
        options.storage_class,
    )
    volume = {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache_claim_name(model)}}
    if model.spec.cache.preload:
        preload = {
            "name": "preload",
            "image": options.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["aiplane", "cache", "preload"],
            "args": ["--source", source, "--dest", model_path],
            # spec.env carries the source's credentials (HF_TOKEN, AWS_*) to the download too.
            "env": env_list({**model.spec.env, "HOME": "/tmp"}),
            "resources": PRELOAD_RESOURCES,
            "securityContext": {
                **SECURE_DEFAULTS,
                "runAsNonRoot": True,
                "runAsUser": AIPLANE_UID,
                "readOnlyRootFilesystem": True,
            },
            "volumeMounts": [
                {"name": "model-cache", "mountPath": MODEL_MOUNT},
                {"name": "preload-tmp", "mountPath": "/tmp"},
            ],
        }
        return _Storage(
            model_path=model_path,
            volumes=[volume, {"name": "preload-tmp", "emptyDir": {}}],
            mounts=[{"name": "model-cache", "mountPath": MODEL_MOUNT, "readOnly": True}],
            init_containers=[preload],
            claims=[cache],
            writes_cache=True,
        )
    env: dict[str, str] = {}
    if source.startswith("hf://") and model.spec.engine != "llamacpp":
        model_path = source[len("hf://") :]
        env["HF_HOME"] = f"{MODEL_MOUNT}/.hf"
    return _Storage(
        model_path=model_path,
        volumes=[volume],
        mounts=[{"name": "model-cache", "mountPath": MODEL_MOUNT}],
        env=env,
        claims=[cache],
    )


def _is_gpu_engine(model: Model) -> bool:
    return model.spec.resources.gpus > 0 or model.spec.engine in GPU_ENGINES


def startup_budget_s(model: Model) -> int:
    return GPU_STARTUP_BUDGET_S if _is_gpu_engine(model) else CPU_STARTUP_BUDGET_S


def grace_period_s(model: Model) -> int:
    """PreStop sleep plus the request timeout (capped): long enough for a stream to end."""
    drain = min(parse_duration(model.spec.timeouts.request), MAX_DRAIN_S)
    return PRESTOP_SLEEP_S + math.ceil(drain)


def _probes(model: Model, launch: ContainerLaunch) -> Manifest:
    def get(path: str) -> Manifest:
        return {"httpGet": {"path": path, "port": "http"}}

    return {
        "startupProbe": {
            **get(launch.probes.health_path),
            "periodSeconds": STARTUP_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": startup_budget_s(model) // STARTUP_PERIOD_S,
        },
        "readinessProbe": {
            **get(launch.probes.ready_path),
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            **get(launch.probes.health_path),
            "periodSeconds": 15,
            "timeoutSeconds": 10,
            "failureThreshold": 4,
        },
    }


def _server(model: Model, launch: ContainerLaunch, storage: _Storage, gpu: GpuPlacement) -> Manifest:
    container: Manifest = {"name": "server", "image": launch.image, "imagePullPolicy": "IfNotPresent"}
    if launch.command:
        container["command"] = list(launch.command)
    container["args"] = list(launch.args)
    env = {**launch.env, **storage.env}
    if env:
        container["env"] = env_list(env)
    container["ports"] = [{"name": "http", "containerPort": launch.port, "protocol": "TCP"}]
    container["resources"] = resources(model.spec.resources.cpu, model.spec.resources.memory, gpu)
    container.update(_probes(model, launch))
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}}
    mounts = list(storage.mounts)
    if model.spec.resources.gpus > 1:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    container["volumeMounts"] = mounts
    return container


def _pod_annotations(model: Model, launch: ContainerLaunch, gpu: GpuPlacement) -> dict[str, str]:
    out = {ANNOTATION_SERVED_MODEL: model.served_name}
    if launch.probes.metrics_path:
        out |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(launch.port),
            "prometheus.io/path": launch.probes.metrics_path,
        }
    return user_pod_annotations(model) | out | gpu.annotations


def _deployment(
    model: Model,
    namespace: str,
    owner: OwnerRef | None,
    replicas: int,
    launch: ContainerLaunch,
    storage: _Storage,
    gpu: GpuPlacement,
    options: LoweringOptions,
) -> Manifest:
    pod_labels = labels(model, APP, COMPONENT, **{LABEL_MODEL: model.name, LABEL_ENGINE: model.spec.engine})
    volumes = list(storage.volumes)
    if model.spec.resources.gpus > 1:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
    pod: Manifest = {
        "automountServiceAccountToken": False,  # a model server has no business with the API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace_period_s(model),
        "schedulerName": options.model_scheduler,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(model)},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
    }
    if storage.writes_cache:
        # The non-root preload container must be able to write a fresh volume.
        pod["securityContext"] = {"fsGroup": AIPLANE_UID, "fsGroupChangePolicy": "OnRootMismatch"}
    gpu.apply(pod)
    if storage.init_containers:
        pod["initContainers"] = list(storage.init_containers)
    pod["containers"] = [_server(model, launch, storage, gpu)]
    pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(model.name, namespace, pod_labels, owner),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": startup_budget_s(model) + 600,
            "selector": {"matchLabels": selector(model)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": _pod_annotations(model, launch, gpu)},
                "spec": pod,
            },
        },
    }


def _service(model: Model, namespace: str, owner: OwnerRef | None) -> Manifest:
    """ClusterIP on port 80, so ``http://<model>.<ns>.svc/v1`` reaches the server.

    The served name is always in the annotation; it is also a label when it is a valid
    label value (``meta-llama/Llama-3`` is not: '/' is not allowed there).
    """
    extra = {LABEL_MODEL: model.name}
    if is_label_value(model.served_name):
        extra[LABEL_SERVED_MODEL] = model.served_name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            check_service_name(model, model.name),
            namespace,
            labels(model, APP, COMPONENT, **extra),
            owner,
            {ANNOTATION_SERVED_MODEL: model.served_name},
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(model),
            "ports": [
                {
                    "name": "http",
                    "port": SERVICE_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def _pdb(model: Model, namespace: str, owner: OwnerRef | None) -> Manifest:
    """One voluntary eviction at a time. Unready pods may always go (a stuck one must not block a drain)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(
            model.name, namespace, labels(model, APP, COMPONENT, **{LABEL_MODEL: model.name}), owner
        ),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(model)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def lower_model(
    model: Model,
    namespace: str,
    owner: OwnerRef | None = None,
    replicas: int | None = None,
    *,
    options: LoweringOptions = DEFAULT_OPTIONS,
    engines: EngineRegistry | None = None,
) -> list[Manifest]:
    """The native objects for one Model, in creation order (the PVC before the pods that mount it)."""
    count = model.spec.replicas.count() if replicas is None else replicas
    if count < 0:
        raise ValueError(f"replicas must be >= 0 (got {count})")
    storage = _storage(model, namespace, owner, options)
    launch = (engines or default_registry()).get(model.spec.engine).container(model, storage.model_path)
    gpu = gpu_placement(
        model, model.spec.resources.gpus, model.spec.resources.gpu_model, "spec.resources.gpuModel"
    )
    deployment = _deployment(model, namespace, owner, count, launch, storage, gpu, options)
    objects = [*storage.claims, _service(model, namespace, owner), deployment]
    if model.spec.autoscaling.metric in ("cpu", "memory"):
        del deployment["spec"]["replicas"]  # the HPA's to set
        objects.append(_hpa(model, namespace, owner))
    if model.spec.replicas.min >= 2:
        objects.append(_pdb(model, namespace, owner))
    return objects


def _hpa(model: Model, namespace: str, owner: OwnerRef | None) -> Manifest:
    """The textbook HorizontalPodAutoscaler: average utilization of the requested CPU (or
    memory) at ``target`` (70% by default), between ``min`` (at least 1) and ``max``."""
    spec = model.spec
    metric = spec.autoscaling.metric
    target = spec.autoscaling.target_for(None)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(
            model.name, namespace, labels(model, APP, COMPONENT, **{LABEL_MODEL: model.name}), owner
        ),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
            "minReplicas": max(1, spec.replicas.min),
            "maxReplicas": spec.replicas.max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": metric,
                        "target": {"type": "Utilization", "averageUtilization": round(target * 100)},
                    },
                }
            ],
        },
    }
