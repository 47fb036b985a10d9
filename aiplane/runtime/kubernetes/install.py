"""``aiplane install``: CRDs, RBAC and the platform's Deployments, for ``kubectl apply -f -``.

Three service accounts, each with only what its component does (no ``*`` verbs or
resources, no cluster-admin, and **no Secrets**: nothing in aiplane reads one through
the API; the gateway's API keys, when used, are a Secret *volume* the kubelet mounts):

* **operator** (ClusterRole): lowers Models and jobs in every namespace.
  - create/update/patch/delete the objects it lowers to: Deployments, Services, PVCs,
    PDBs, Jobs, CronJobs;
  - read and patch the aiplane resources (kopf keeps its finalizer and handler state on
    them), their ``status`` and Model ``scale``, and update their ``finalizers``
    subresource: setting ``blockOwnerDeletion`` requires it where the
    OwnerReferencesPermissionEnforcement admission plugin is on;
  - read Pods (replica state and why a replica is not ready), create Events;
  - read CRDs: kopf watches them to notice its resources appear or change.
* **scheduler** (ClusterRole): the secondary scheduler for queued work.
  - bind Pods (``pods/binding``), read and patch Pods and ``pods/status`` (the
    ``PodScheduled=False`` reason ``kubectl describe`` shows), read Nodes and Queues,
    create Events.
* **gateway** (ClusterRole): read-only discovery: Models (served names, routing),
  Services and EndpointSlices (ready replicas).

Operator and scheduler each get a namespaced Role on Leases for leader election.
kopf's own peering is not a lock (it only warns about concurrent operators), so both
run one replica with the ``Recreate`` strategy: never two at once during a rollout.

``aiplane-view``/``aiplane-edit`` aggregate into the built-in ``view``/``edit``/``admin``
roles, so whoever may edit Deployments in a namespace may also create Models there.
Queues (cluster-wide quota) stay with cluster admins.

The platform pods avoid GPU nodes by not tolerating their ``nvidia.com/gpu`` taint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from aiplane.api import GROUP
from aiplane.runtime.kubernetes.constants import (
    AIPLANE_IMAGE,
    AIPLANE_UID,
    LABEL_COMPONENT,
    LABEL_ENGINE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    MANAGED_BY,
    PROMETHEUS_ENV,
)
from aiplane.runtime.kubernetes.crds import all_crds
from aiplane.runtime.kubernetes.lowering.common import SECURE_DEFAULTS, Manifest

DEFAULT_NAMESPACE = "aiplane-system"
MONITORING = "monitoring.coreos.com/v1"  # the Prometheus Operator's API
MONITOR_CRDS = ("servicemonitors.monitoring.coreos.com", "podmonitors.monitoring.coreos.com")
GATEWAY_PORT = 8000
HEALTH_PORT = 8080
API_KEYS_MOUNT = "/etc/aiplane/api-keys"
API_KEYS_FILE = "keys"  # the key inside the Secret: one API key per line
JOBS = ["models", "trainingjobs", "batchjobs", "queues"]
NAMESPACED = ["models", "trainingjobs", "batchjobs"]
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]
EVENTS = [
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]


@dataclass(frozen=True)
class Component:
    """One platform Deployment. ``args`` is the contract with the ``aiplane`` command."""

    name: str
    args: list[str]
    port: int
    health_path: str
    metrics_path: str | None
    replicas: int
    requests: dict[str, str]
    memory_limit: str
    env: dict[str, str] = field(default_factory=dict)


def components(image: str, namespace: str = "aiplane-system") -> list[Component]:
    """``aiplane operator --liveness URL`` is kopf's liveness endpoint; the scheduler and
    gateway flags are the contract their commands must accept (change them here if not)."""
    return [
        Component(
            "operator",
            ["operator", f"--liveness=http://0.0.0.0:{HEALTH_PORT}/healthz"],  # all namespaces by default
            HEALTH_PORT,
            "/healthz",
            None,
            1,
            {"cpu": "100m", "memory": "256Mi"},
            "512Mi",
            {
                "AIPLANE_IMAGE": image,  # what preload init containers and batch shards run
                # the autoscaler sums the gateway pods' /metrics (held, in-flight, TTFT)
                "AIPLANE_GATEWAY_PODS": f"{namespace}/{LABEL_NAME}=aiplane-gateway",
            },
        ),
        Component(
            "scheduler",
            ["scheduler", f"--health-address=0.0.0.0:{HEALTH_PORT}"],
            HEALTH_PORT,
            "/healthz",
            "/metrics",
            2,  # one Lease: the follower only keeps its caches warm
            {"cpu": "100m", "memory": "256Mi"},
            "512Mi",
        ),
        Component(
            "gateway",
            ["gateway", "--host=0.0.0.0", f"--port={GATEWAY_PORT}"],
            GATEWAY_PORT,
            "/health",
            "/metrics",
            2,
            {"cpu": "500m", "memory": "512Mi"},
            "1Gi",
        ),
    ]


def _labels(component: str) -> dict[str, str]:
    return {
        LABEL_NAME: f"aiplane-{component}",
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "aiplane",
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def _meta(name: str, component: str, namespace: str | None = None, **extra: str) -> Manifest:
    meta: Manifest = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels(component) | extra
    return meta


def _rule(group: str, resources: list[str], verbs: list[str]) -> Manifest:
    return {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}


def _rules() -> dict[str, list[Manifest]]:
    return {
        "operator": [
            _rule("apps", ["deployments"], READ + WRITE),
            _rule("", ["services", "persistentvolumeclaims"], READ + WRITE),
            _rule("policy", ["poddisruptionbudgets"], READ + WRITE),
            _rule("autoscaling", ["horizontalpodautoscalers"], READ + WRITE),
            _rule("batch", ["jobs", "cronjobs"], READ + WRITE),
            _rule(GROUP, JOBS, [*READ, "update", "patch"]),
            _rule(GROUP, [f"{r}/status" for r in JOBS], ["get", "update", "patch"]),
            _rule(GROUP, ["models/scale"], ["get", "update", "patch"]),
            _rule(GROUP, [f"{r}/finalizers" for r in JOBS], ["update"]),
            _rule("", ["pods"], READ),
            _rule("apiextensions.k8s.io", ["customresourcedefinitions"], READ),
            *EVENTS,
        ],
        "scheduler": [
            _rule("", ["pods"], [*READ, "patch"]),
            _rule("", ["pods/binding"], ["create"]),
            _rule("", ["pods/status"], ["patch", "update"]),
            _rule("", ["nodes"], READ),
            _rule("batch", ["jobs"], READ),  # a gang's size is its Job's parallelism
            _rule(GROUP, ["queues", "trainingjobs", "batchjobs"], READ),
            _rule(GROUP, ["queues/status", "trainingjobs/status", "batchjobs/status"], ["get", "patch"]),
            *EVENTS,
        ],
        "gateway": [
            _rule(GROUP, ["models"], READ),
            # a request held for a Model at zero replicas scales it to one (KubeAI does the same)
            _rule(GROUP, ["models/scale"], ["get", "patch"]),
            _rule("", ["services"], READ),
            _rule("discovery.k8s.io", ["endpointslices"], READ),
        ],
    }


def rbac(namespace: str) -> list[Manifest]:
    out: list[Manifest] = []
    for component, rules in _rules().items():
        name = f"aiplane-{component}"
        subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        out += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, component, namespace)},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": _meta(name, component),
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": _meta(name, component),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subject,
            },
        ]
        if component == "gateway":
            continue
        out += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": _meta(f"{name}-leader-election", component, namespace),
                "rules": [
                    _rule("coordination.k8s.io", ["leases"], ["get", "list", "watch", "create", "update"])
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": _meta(f"{name}-leader-election", component, namespace),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": f"{name}-leader-election",
                },
                "subjects": subject,
            },
        ]
    return out + _user_roles()


def _user_roles() -> list[Manifest]:
    view = {"rbac.authorization.k8s.io/aggregate-to-view": "true"}
    edit = {
        "rbac.authorization.k8s.io/aggregate-to-edit": "true",
        "rbac.authorization.k8s.io/aggregate-to-admin": "true",
    }
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta("aiplane-view", "rbac", **view),
            "rules": [
                _rule(GROUP, [*NAMESPACED, *(f"{r}/status" for r in NAMESPACED), "models/scale"], READ)
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta("aiplane-edit", "rbac", **edit),
            "rules": [
                _rule(GROUP, NAMESPACED, [*READ, *WRITE, "deletecollection"]),
                _rule(GROUP, ["models/scale"], ["get", "update", "patch"]),
            ],
        },
    ]


def _deployment(c: Component, namespace: str, image: str, keys_secret: str | None) -> Manifest:
    name = f"aiplane-{c.name}"
    labels = _labels(c.name)
    selector = {LABEL_NAME: name, LABEL_COMPONENT: c.name}
    env = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", **c.env}
    probe = {"httpGet": {"path": c.health_path, "port": "http"}, "timeoutSeconds": 5}
    container: Manifest = {
        "name": c.name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": list(c.args),
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},  # kopf's identity
            *({"name": k, "value": v} for k, v in env.items()),
        ],
        "ports": [{"name": "http", "containerPort": c.port, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 10, "periodSeconds": 15, "failureThreshold": 4},
        # No CPU limit: CFS throttling would add tail latency to a streaming proxy and to reconciles.
        "resources": {"requests": dict(c.requests), "limits": {"memory": c.memory_limit}},
        "securityContext": {**SECURE_DEFAULTS, "readOnlyRootFilesystem": True, "runAsNonRoot": True},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
    if c.name == "gateway" and keys_secret:
        container["args"].append(f"--api-key-file={API_KEYS_MOUNT}/{API_KEYS_FILE}")
        container["volumeMounts"].append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
        volumes.append({"name": "api-keys", "secret": {"secretName": keys_secret}})
    annotations = {}
    if c.metrics_path:
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(c.port),
            "prometheus.io/path": c.metrics_path,
        }
    pod: Manifest = {
        "serviceAccountName": name,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AIPLANE_UID,
            "runAsGroup": AIPLANE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if c.replicas > 1:
        pod["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector},
            }
        ]
    strategy = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        if c.replicas > 1
        else {"type": "Recreate"}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, c.name, namespace),
        "spec": {
            "replicas": c.replicas,
            "selector": {"matchLabels": selector},
            "strategy": strategy,
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
        },
    }


def _gateway_service(namespace: str) -> list[Manifest]:
    selector = {LABEL_NAME: "aiplane-gateway", LABEL_COMPONENT: "gateway"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta("aiplane-gateway", "gateway", namespace),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {
                        "name": "http",
                        "port": 80,
                        "targetPort": "http",
                        "protocol": "TCP",
                        "appProtocol": "http",
                    }
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta("aiplane-gateway", "gateway", namespace),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        },
    ]


def monitors(namespace: str, interval: str = "15s") -> list[Manifest]:
    """The Prometheus Operator's objects for what the ``prometheus.io/*`` annotations say
    to a plain Prometheus: the gateway through its Service, the scheduler's pods, and the
    Model pods of every namespace (their engines' metrics, where the annotations point)."""
    gateway = {LABEL_NAME: "aiplane-gateway", LABEL_COMPONENT: "gateway"}
    endpoint = {"port": "http", "path": "/metrics", "interval": interval}
    return [
        {
            "apiVersion": MONITORING,
            "kind": "ServiceMonitor",
            "metadata": _meta("aiplane-gateway", "gateway", namespace),
            "spec": {"selector": {"matchLabels": gateway}, "endpoints": [endpoint]},
        },
        {
            "apiVersion": MONITORING,
            "kind": "PodMonitor",
            "metadata": _meta("aiplane-scheduler", "scheduler", namespace),
            "spec": {
                "selector": {"matchLabels": {LABEL_NAME: "aiplane-scheduler", LABEL_COMPONENT: "scheduler"}},
                "podMetricsEndpoints": [endpoint],
            },
        },
        {
            "apiVersion": MONITORING,
            "kind": "PodMonitor",
            "metadata": _meta("aiplane-model-engines", "operator", namespace),
            "spec": {
                "namespaceSelector": {"any": True},
                "selector": {"matchExpressions": [{"key": LABEL_ENGINE, "operator": "Exists"}]},
                # each engine's own path (vLLM /metrics, TGI /metrics, ...) from its annotation
                "podMetricsEndpoints": [
                    {
                        "port": "http",
                        "interval": interval,
                        "relabelings": [
                            {
                                "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                                "regex": "(.+)",
                                "targetLabel": "__metrics_path__",
                            }
                        ],
                    }
                ],
            },
        },
    ]


def install_manifests(
    namespace: str = DEFAULT_NAMESPACE,
    image: str = AIPLANE_IMAGE,
    *,
    gateway_keys_secret: str | None = None,
    prometheus_url: str | None = None,
    with_monitors: bool = False,
) -> list[Manifest]:
    """Everything in apply order: CRDs, Namespace, RBAC, Deployments, the gateway Service,
    and with ``with_monitors`` the Prometheus Operator's ServiceMonitor and PodMonitors.

    ``gateway_keys_secret`` names a Secret in ``namespace`` whose ``keys`` entry holds
    the gateway's API keys (one per line); without it the gateway accepts any caller.
    ``prometheus_url`` is the Prometheus the operator's autoscaler reads engine metrics
    from (it scrapes the pods itself without one).
    """
    namespace_obj = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {
                LABEL_PART_OF: "aiplane",
                LABEL_MANAGED_BY: MANAGED_BY,
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    parts = components(image, namespace)
    if prometheus_url:
        parts = [
            replace(c, env={**c.env, PROMETHEUS_ENV: prometheus_url}) if c.name == "operator" else c
            for c in parts
        ]
    deployments = [_deployment(c, namespace, image, gateway_keys_secret) for c in parts]
    extra = monitors(namespace) if with_monitors else []
    return [*all_crds(), namespace_obj, *rbac(namespace), *deployments, *_gateway_service(namespace), *extra]
