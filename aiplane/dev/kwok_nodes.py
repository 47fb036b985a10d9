"""Fake GPU node fleets for KWOK: node specs -> Node manifests, plus the KWOK stage config.

Pure functions only (no I/O), so the shape of a "real looking" GPU node is unit-tested.
Labels follow what NVIDIA's GPU feature discovery puts on real nodes (`nvidia.com/gpu.*`,
memory in MiB), the taint is the one GPU node pools conventionally carry, and capacity
mirrors common 8-GPU cloud instances so bin-packing experiments see realistic ratios.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from aiplane.dev import DevClusterError
from aiplane.dev.network import FIRST_POD_IP, NODE_IP, POD_CIDR
from aiplane.policies.scheduling.gpumodel import PRODUCTS, GpuProduct, product

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_LABEL = ("type", "kwok")  # what the KWOK controller is told to manage
MODEL_LABEL = "aiplane.dev/gpu-model"
POOL_LABEL = "aiplane.dev/node-pool"
COMPLETE_AFTER_ANNOTATION = "aiplane.dev/kwok-complete-after"
READINESS_ANNOTATION = "aiplane.dev/kwok-readiness"
"""Set to ``external`` on a pod (through its owner's annotations) and KWOK reports its
containers running but neither started nor ready: whatever really runs the container
(the tests' kubelet stand-in) reports readiness, as a kubelet's probes would."""
EXTERNAL_READINESS = "external"
TERMINATION_ANNOTATION = "aiplane.dev/kwok-termination"
"""Set to ``external`` on a pod by whatever runs its containers (the tests' kubelet stand-in
puts it on each pod whose engine it starts) and KWOK leaves the pod alone once deleted:
that runner plays the kubelet's part (preStop, SIGTERM, SIGKILL at the grace period) and
removes the pod itself, with grace 0, once its containers have stopped. It takes the
annotation off again when it stops, and KWOK then removes a deleted pod at once."""
EXTERNAL_TERMINATION = "external"
MAX_PODS = 110


GpuModel = GpuProduct  # the dev fleet's GPUs are the scheduler's catalogue
GPU_MODELS = PRODUCTS

SYSTEM_NODE_CPU = 16
SYSTEM_NODE_MEMORY_GIB = 64


@dataclass(frozen=True)
class GpuPool:
    """`--gpu-nodes 16x8:H100`: 16 nodes with 8 H100 each."""

    count: int
    gpus_per_node: int
    model: GpuModel


def parse_gpu_pool(spec: str) -> GpuPool:
    """Parse ``<nodes>x<gpus>:<model>``; the model is an alias of GPU_MODELS (any case)."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*:\s*([A-Za-z0-9-]+)\s*", spec)
    if not m:
        raise DevClusterError(f"bad GPU pool {spec!r}: expected <nodes>x<gpus>:<model>, e.g. 4x8:H100")
    count, gpus, alias = int(m.group(1)), int(m.group(2)), m.group(3)
    model = product(alias)
    if model is None:
        raise DevClusterError(f"unknown GPU model {alias!r}; known: {', '.join(GPU_MODELS)}")
    if count < 1 or not 1 <= gpus <= 16:
        raise DevClusterError(f"bad GPU pool {spec!r}: need >= 1 node and 1-16 GPUs per node")
    return GpuPool(count, gpus, model)


def _node(
    name: str,
    labels: dict[str, str],
    capacity: dict[str, str],
    taints: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                KWOK_LABEL[0]: KWOK_LABEL[1],
                **labels,
            },
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"taints": taints} if taints else {},
        # Node creation keeps status; KWOK's node-initialize stage preserves these.
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


def gpu_nodes(pool: GpuPool, start: int = 0) -> list[dict[str, Any]]:
    """Node manifests for one pool, named gpu-<model>-<n> (n counts from `start`)."""
    m, g = pool.model, pool.gpus_per_node
    capacity = {
        "cpu": str(max(4, m.host_cpu * g // 8)),
        "memory": f"{max(16, m.host_memory_gib * g // 8)}Gi",
        "ephemeral-storage": "3500Gi",
        "pods": str(MAX_PODS),
        GPU_RESOURCE: str(g),
    }
    slug = m.alias.lower()
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": m.product,
        "nvidia.com/gpu.count": str(g),
        "nvidia.com/gpu.memory": str(m.memory_mib),
        "nvidia.com/gpu.family": m.family,
        "node.kubernetes.io/instance-type": m.instance_type if g == 8 else f"{slug}-x{g}",
        MODEL_LABEL: m.alias,
        POOL_LABEL: f"gpu-{slug}",
    }
    return [
        _node(f"gpu-{slug}-{i}", labels, capacity, [dict(GPU_TAINT)])
        for i in range(start, start + pool.count)
    ]


def system_nodes(count: int) -> list[dict[str, Any]]:
    """Untainted CPU nodes for system pods and everything that does not ask for a GPU."""
    capacity = {
        "cpu": str(SYSTEM_NODE_CPU),
        "memory": f"{SYSTEM_NODE_MEMORY_GIB}Gi",
        "ephemeral-storage": "500Gi",
        "pods": str(MAX_PODS),
    }
    labels = {
        "node-role.kubernetes.io/system": "",
        POOL_LABEL: "system",
        "node.kubernetes.io/instance-type": "m6i.4xlarge",
    }
    return [_node(f"cpu-{i}", labels, capacity, []) for i in range(count)]


def fleet(gpu_specs: list[str], cpu_nodes: int) -> list[dict[str, Any]]:
    """All nodes for `--gpu-nodes ... --cpu-nodes N`; pools of one model number on."""
    nodes = system_nodes(cpu_nodes)
    next_index: dict[str, int] = {}
    for spec in gpu_specs:
        pool = parse_gpu_pool(spec)
        start = next_index.get(pool.model.alias, 0)
        nodes += gpu_nodes(pool, start)
        next_index[pool.model.alias] = start + pool.count
    names = [n["metadata"]["name"] for n in nodes]
    if len(set(names)) != len(names):  # pragma: no cover - guarded by next_index
        raise DevClusterError("duplicate node names in fleet")
    return nodes


# -- KWOK configuration ----------------------------------------------------------------------

_NODE_STATUS = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with .status.addresses }}
{{ YAML . 1 }}
{{ else }}
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
{{ with NodeName }}
- address: {{ . | Quote }}
  type: Hostname
{{ end }}
{{ end }}
{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}
allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
{{ $nodeInfo := .status.nodeInfo }}
{{ $kwokVersion := printf "kwok-%s" Version }}
nodeInfo:
  architecture: {{ or $nodeInfo.architecture "amd64" }}
  bootID: {{ or $nodeInfo.bootID `""` }}
  containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
  kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
  kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
  kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
  machineID: {{ or $nodeInfo.machineID `""` }}
  operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
  osImage: {{ or $nodeInfo.osImage `""` }}
  systemUUID: {{ or $nodeInfo.systemUUID `""` }}
phase: Running
"""

_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'

# A pod annotated `aiplane.dev/kwok-readiness: external` runs, unready and unstarted,
# until something else (the tests' kubelet stand-in) reports its probes passing.
_READINESS = f"""\
{{{{ $now := Now }}}}
{{{{ $ready := "True" }}}}
{{{{ $started := true }}}}
{{{{ with .metadata.annotations }}}}
{{{{ if eq (printf "%v" (index . "{READINESS_ANNOTATION}")) "{EXTERNAL_READINESS}" }}}}
{{{{ $ready = "False" }}}}
{{{{ $started = false }}}}
{{{{ end }}}}
{{{{ end }}}}
"""

_POD_RUNNING = (
    _READINESS
    + """\
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: {{ $ready | Quote }}
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: {{ $ready | Quote }}
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: {{ $ready | Quote }}
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: {{ $started }}
  restartCount: 0
  started: {{ $started }}
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""
)

_POD_SUCCEEDED = """\
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  reason: PodCompleted
  status: "False"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  reason: PodCompleted
  status: "False"
  type: ContainersReady
phase: Succeeded
"""


def _stage(name: str, kind: str, exprs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": exprs},
            **spec,
        },
    }


def stages() -> list[dict[str, Any]]:
    """Node and pod lifecycles: nodes go Ready (leases keep them so); pods go Running with an
    IP from POD_CIDR, and Ready unless annotated `aiplane.dev/kwok-readiness: external`;
    pods annotated `aiplane.dev/kwok-complete-after: <duration>` and owned by a Job
    succeed after that long; others run until deleted. A deleted pod is removed at once,
    unless annotated `aiplane.dev/kwok-termination` (its runner removes it)."""
    alive = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    annotation = f'.metadata.annotations["{COMPLETE_AFTER_ANNOTATION}"]'
    return [
        _stage(
            "node-initialize",
            "Node",
            [{"key": _READY, "operator": "NotIn", "values": ["True"]}],
            {"next": {"statusTemplate": _NODE_STATUS}},
        ),
        _stage(
            "node-heartbeat-with-lease",
            "Node",
            [
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": _READY, "operator": "In", "values": ["True"]},
            ],
            {
                "delay": {"durationMilliseconds": 600000, "jitterDurationMilliseconds": 610000},
                "next": {"statusTemplate": _NODE_STATUS},
            },
        ),
        _stage(
            "pod-ready",
            "Pod",
            [alive, {"key": ".status.podIP", "operator": "DoesNotExist"}],
            {"next": {"statusTemplate": _POD_RUNNING}},
        ),
        _stage(
            "pod-complete",
            "Pod",
            [
                alive,
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
                {"key": annotation, "operator": "Exists"},
            ],
            {
                "delay": {"durationMilliseconds": 0, "durationFrom": {"expressionFrom": annotation}},
                "next": {"statusTemplate": _POD_SUCCEEDED},
            },
        ),
        _stage(
            "pod-delete",
            "Pod",
            [
                {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                {"key": f'.metadata.annotations["{TERMINATION_ANNOTATION}"]', "operator": "DoesNotExist"},
            ],
            {"next": {"finalizers": {"empty": True}, "delete": True}},
        ),
    ]


LOGS_KIND = "Logs"
"""The KWOK resource that names a pod's log file: ``kubectl logs`` (the API server's
``pods/log``) reaches KWOK's server as the node's kubelet, which serves that file."""


def kwok_config(server_port: int, lease_seconds: int = 40) -> str:
    """The multi-document `kwok --config` file: options plus our stages.

    KWOK's server listens on `server_port` and every node names it as its kubelet
    (`nodePort`: `status.daemonEndpoints.kubeletEndpoint.Port`), so the API server's
    `pods/log`, `exec` and the like reach it (over TLS with KWOK's own certificate, which
    the API server does not check without `--kubelet-certificate-authority`). It serves a
    pod's log from the file a `Logs` object in the pod's namespace names
    (`enableCRDs`, :func:`logs_crd`): whatever runs the pod's containers (the tests'
    job stand-in) creates one per pod.
    """
    options = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            "cidr": f"{FIRST_POD_IP}/{POD_CIDR.split('/')[1]}",  # KWOK hands out IPs from this one on
            "nodeIP": NODE_IP,
            "manageAllNodes": False,
            "manageNodesWithLabelSelector": f"{KWOK_LABEL[0]}={KWOK_LABEL[1]}",
            "nodeLeaseDurationSeconds": lease_seconds,
            "serverAddress": f"127.0.0.1:{server_port}",
            "nodePort": server_port,
            "enableCRDs": [LOGS_KIND],
            "enablePodsOnNodeSyncListPager": False,
            "enablePodsOnNodeSyncStreamWatch": True,
            "podPlayStageParallelism": 8,
            "nodePlayStageParallelism": 4,
            "nodeLeaseParallelism": 4,
        },
    }
    return yaml.safe_dump_all([options, *stages()], sort_keys=False)


def logs_crd() -> dict[str, Any]:
    """KWOK's ``Logs`` CRD (``kwok.x-k8s.io/v1alpha1``), trimmed to what its server reads:
    ``spec.logs[]`` of ``containers``, ``logsFile`` (CRI log format, as a kubelet's
    ``/var/log/pods`` files), ``previousLogsFile`` and ``follow``."""
    log_item = {
        "type": "object",
        "properties": {
            "containers": {"type": "array", "items": {"type": "string"}},
            "logsFile": {"type": "string"},
            "previousLogsFile": {"type": "string"},
            "follow": {"type": "boolean"},
        },
    }
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["logs"],
                "properties": {"logs": {"type": "array", "items": log_item}},
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "logs.kwok.x-k8s.io"},
        "spec": {
            "group": "kwok.x-k8s.io",
            "names": {"kind": LOGS_KIND, "listKind": "LogsList", "plural": "logs", "singular": "logs"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
            ],
        },
    }
