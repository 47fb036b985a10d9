"""``aiplane install``: least-privilege RBAC, hardened Deployments, apply order.

(Applied to a real kube-apiserver while writing this, ``kubectl auth can-i`` agreed:
the operator cannot read Secrets or bind pods; the gateway can only read.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import typer
import yaml
from typer.testing import CliRunner

from aiplane.cli.kube import register
from aiplane.runtime.kubernetes.constants import AIPLANE_IMAGE
from aiplane.runtime.kubernetes.install import install_manifests

READ = {"get", "list", "watch"}


def roles(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {o["metadata"]["name"]: o["rules"] for o in objects if o["kind"] in ("ClusterRole", "Role")}


def allowed(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


def test_everything_is_there_in_apply_order() -> None:
    objects = install_manifests()
    kinds = [o["kind"] for o in objects]
    assert Counter(kinds) == Counter(
        {
            "CustomResourceDefinition": 4,
            "Namespace": 1,
            "ServiceAccount": 3,
            "ClusterRole": 5,
            "ClusterRoleBinding": 3,
            "Role": 2,
            "RoleBinding": 2,
            "Deployment": 3,
            "Service": 1,
            "PodDisruptionBudget": 1,
        }
    )
    assert kinds[:5] == ["CustomResourceDefinition"] * 4 + ["Namespace"]
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"]
        if obj["kind"] in (
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ):
            assert obj["metadata"]["namespace"] == "aiplane-system"


def test_rbac_has_no_wildcards_and_no_secrets() -> None:
    for name, rules in roles(install_manifests()).items():
        for rule in rules:
            for key in ("apiGroups", "resources", "verbs"):
                assert all("*" not in value for value in rule[key]), f"{name}: {rule}"
            assert not any(r.startswith("secrets") for r in rule["resources"]), f"{name}: {rule}"
            assert (
                "escalate" not in rule["verbs"]
                and "bind" not in rule["verbs"]
                and "impersonate" not in rule["verbs"]
            )
    bindings = [o for o in install_manifests() if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert all(b["roleRef"]["name"] != "cluster-admin" for b in bindings)


def test_each_component_gets_what_it_does() -> None:
    by_name = roles(install_manifests())
    operator = by_name["aiplane-operator"]
    crud = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for group, resource in [
        ("apps", "deployments"),
        ("", "services"),
        ("", "persistentvolumeclaims"),
        ("policy", "poddisruptionbudgets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    ]:
        assert allowed(operator, group, resource) == crud, resource
    assert allowed(operator, "aiplane.dev", "models") == READ | {"update", "patch"}
    assert allowed(operator, "aiplane.dev", "models/status") == {"get", "update", "patch"}
    assert allowed(operator, "aiplane.dev", "models/scale") == {"get", "update", "patch"}
    assert allowed(operator, "", "pods") == READ
    assert allowed(operator, "", "events") == {"create", "patch"}
    assert allowed(operator, "", "pods/binding") == set()

    scheduler = by_name["aiplane-scheduler"]
    assert allowed(scheduler, "", "pods/binding") == {"create"}
    assert allowed(scheduler, "", "pods") == READ | {"patch"}
    assert allowed(scheduler, "", "nodes") == READ
    assert allowed(scheduler, "batch", "jobs") == READ
    assert allowed(scheduler, "aiplane.dev", "queues") == READ
    assert allowed(scheduler, "apps", "deployments") == set()

    gateway = by_name["aiplane-gateway"]
    assert allowed(gateway, "discovery.k8s.io", "endpointslices") == READ
    assert allowed(gateway, "", "services") == READ
    assert allowed(gateway, "aiplane.dev", "models") == READ
    # It writes one thing: a Model's /scale, to start a replica for a request held at zero.
    assert allowed(gateway, "aiplane.dev", "models/scale") == {"get", "patch"}
    assert all(set(rule["verbs"]) <= READ for rule in gateway if rule["resources"] != ["models/scale"])
    assert allowed(operator, "autoscaling", "horizontalpodautoscalers") >= READ | {
        "create",
        "patch",
        "delete",
    }

    for name in ("aiplane-operator-leader-election", "aiplane-scheduler-leader-election"):
        assert allowed(by_name[name], "coordination.k8s.io", "leases") >= {"get", "create", "update"}


def test_user_roles_aggregate_into_the_builtin_ones() -> None:
    objects = {o["metadata"]["name"]: o for o in install_manifests() if o["kind"] == "ClusterRole"}
    assert (
        objects["aiplane-edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    )
    assert (
        objects["aiplane-view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    )
    edit = objects["aiplane-edit"]["rules"]
    assert "create" in allowed(edit, "aiplane.dev", "models")
    assert allowed(edit, "aiplane.dev", "queues") == set()  # quota is for cluster admins


def test_deployments_are_hardened_and_probed() -> None:
    deployments = {
        o["metadata"]["name"]: o
        for o in install_manifests(image="reg/aiplane:dev")
        if o["kind"] == "Deployment"
    }
    assert set(deployments) == {"aiplane-operator", "aiplane-scheduler", "aiplane-gateway"}
    for name, deploy in deployments.items():
        pod = deploy["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        assert container["image"] == "reg/aiplane:dev"
        assert container["args"][0] == name.removeprefix("aiplane-")
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["readinessProbe"]["httpGet"]["port"] == "http"
        assert container["livenessProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        assert "tolerations" not in pod  # stays off tainted GPU nodes
    operator = deployments["aiplane-operator"]
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIPLANE_IMAGE"] == "reg/aiplane:dev"
    assert (
        "--liveness=http://0.0.0.0:8080/healthz"
        in operator["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    gateway = deployments["aiplane-gateway"]
    assert gateway["spec"]["replicas"] == 2
    assert gateway["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_gateway_service_and_api_keys_from_a_secret_volume() -> None:
    objects = install_manifests("platform", gateway_keys_secret="gw-keys")
    (svc,) = [o for o in objects if o["kind"] == "Service"]
    assert svc["metadata"] == {
        "name": "aiplane-gateway",
        "namespace": "platform",
        "labels": svc["metadata"]["labels"],
    }
    assert svc["spec"]["ports"][0]["port"] == 80 and svc["spec"]["ports"][0]["targetPort"] == "http"
    (gateway,) = [
        o for o in objects if o["metadata"]["name"] == "aiplane-gateway" and o["kind"] == "Deployment"
    ]
    pod = gateway["spec"]["template"]["spec"]
    assert {"name": "api-keys", "secret": {"secretName": "gw-keys"}} in pod["volumes"]
    assert "--api-key-file=/etc/aiplane/api-keys/keys" in pod["containers"][0]["args"]
    subjects = [s for o in objects if o["kind"] == "ClusterRoleBinding" for s in o["subjects"]]
    assert {s["namespace"] for s in subjects} == {"platform"}


def test_install_cli_prints_applyable_yaml() -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["install", "--namespace", "ai"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert docs[0]["kind"] == "CustomResourceDefinition"
    assert any(d["kind"] == "Namespace" and d["metadata"]["name"] == "ai" for d in docs)
    image = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    assert image == AIPLANE_IMAGE


def test_monitors_for_the_prometheus_operator_only_when_asked_and_the_autoscalers_prometheus() -> None:
    plain = install_manifests("ops")
    assert not [d for d in plain if d["apiVersion"].startswith("monitoring.coreos.com/")]
    docs = install_manifests("ops", prometheus_url="http://prometheus.monitoring:9090", with_monitors=True)
    monitors = {
        (d["kind"], d["metadata"]["name"]): d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"
    }
    assert set(monitors) == {
        ("ServiceMonitor", "aiplane-gateway"),
        ("PodMonitor", "aiplane-scheduler"),
        ("PodMonitor", "aiplane-model-engines"),
    }
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "aiplane-gateway")
    selector = monitors["ServiceMonitor", "aiplane-gateway"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()  # it selects the gateway's Service
    assert monitors["PodMonitor", "aiplane-model-engines"]["spec"]["namespaceSelector"] == {"any": True}
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "aiplane-operator"
    )
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIPLANE_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    for name in ("aiplane-scheduler", "aiplane-gateway"):
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        notes = deployment["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
