"""The informer on a real control plane: the store follows ConfigMaps, Pods and Nodes.

Each test makes changes through an ordinary ``Kube`` and waits for the informer's store
to show the values (not just the count). Interruptions are made by closing the live
watch response (what a dropped connection looks like to the client) and, for 410 Gone,
by rewinding the informer to a resourceVersion the watch cache has long forgotten.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from aiplane.errors import KubernetesError
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.informer import Informer, Informers
from tests.k8s.conftest import K8sCluster, eventually

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(60)]

SYNC_S = 10.0
FOLLOW_S = 10.0


class CountingKube(Kube):
    """Counts the informer's LISTs (its only ``request`` calls), to tell a resumed
    watch from a re-list."""

    lists = 0

    async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        self.lists += 1
        return await super().request(method, path, *args, **kwargs)


@pytest.fixture
async def kube(k8s_cluster: K8sCluster) -> AsyncIterator[Kube]:
    async with Kube.connect(str(k8s_cluster.kubeconfig)) as k:  # client certificates
        yield k


def configmap(namespace: str, name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def data_of(informer: Informer, namespace: str) -> dict[str, dict[str, str]]:
    """What the store holds of our ConfigMaps (every namespace has kube-root-ca.crt)."""
    return {
        obj["metadata"]["name"]: obj.get("data", {})
        for obj in informer.items()
        if obj["metadata"]["name"] != "kube-root-ca.crt"
    }


async def follows(informer: Informer, namespace: str, want: dict[str, dict[str, str]]) -> None:
    async def probe() -> bool:
        return data_of(informer, namespace) == want

    await eventually(probe, FOLLOW_S, f"the store to hold {want}; it holds {data_of(informer, namespace)}")


async def disconnect(informer: Informer) -> None:
    """Close the open watch stream under the informer, and wait until it noticed."""

    async def watching() -> bool:
        return informer._response is not None

    await eventually(watching, SYNC_S, "a watch to be open")
    informer._response.close()

    async def noticed() -> bool:
        return informer._response is None

    await eventually(noticed, 5, "the informer to notice the closed stream", interval=0.01)


async def test_the_store_follows_configmaps_and_reports_each_change(kube: Kube, k8s_namespace: str) -> None:
    ns = k8s_namespace
    await kube.apply(configmap(ns, "before", k="0"))
    changes: list[tuple[str, str, dict[str, str]]] = []
    informer = Informer(
        kube,
        f"/api/v1/namespaces/{ns}/configmaps",
        on_change=lambda kind, obj: changes.append((kind, obj["metadata"]["name"], obj.get("data", {}))),
    )
    await informer.start()
    try:
        assert informer.synced.is_set() and await informer.wait_synced(0)
        assert data_of(informer, ns) == {"before": {"k": "0"}}  # the LIST, before any watch event
        listed = informer.get(f"{ns}/before")
        assert listed is not None and (listed["apiVersion"], listed["kind"]) == ("v1", "ConfigMap")
        assert informer.resource_version

        await kube.apply(configmap(ns, "a", k="1"))
        await follows(informer, ns, {"before": {"k": "0"}, "a": {"k": "1"}})
        await kube.patch_merge("v1", "ConfigMap", "a", ns, {"data": {"k": "2", "extra": "x"}})
        await follows(informer, ns, {"before": {"k": "0"}, "a": {"k": "2", "extra": "x"}})
        await kube.delete("v1", "ConfigMap", "before", ns)
        await follows(informer, ns, {"a": {"k": "2", "extra": "x"}})
        assert informer.get(f"{ns}/before") is None

        ours = [c for c in changes if c[1] != "kube-root-ca.crt"]
        assert ours == [
            ("ADDED", "before", {"k": "0"}),
            ("ADDED", "a", {"k": "1"}),
            ("MODIFIED", "a", {"k": "2", "extra": "x"}),
            ("DELETED", "before", {"k": "0"}),
        ]
    finally:
        await informer.stop()


async def test_selectors_limit_what_the_store_holds(kube: Kube, k8s_namespace: str) -> None:
    ns = k8s_namespace
    path = f"/api/v1/namespaces/{ns}/configmaps"
    cache = Informers(
        {
            "labelled": Informer(kube, path, label_selector="role=watched"),
            "named": Informer(kube, path, field_selector="metadata.name=plain"),
        }
    )
    async with cache.running():
        assert await cache.wait_synced(SYNC_S)
        await kube.apply(configmap(ns, "watched", {"role": "watched"}, k="1"))
        await kube.apply(configmap(ns, "plain", k="2"))
        await follows(cache["labelled"], ns, {"watched": {"k": "1"}})
        await follows(cache["named"], ns, {"plain": {"k": "2"}})
        # relabelling moves an object out of the selection: the watch says DELETED
        await kube.patch_merge("v1", "ConfigMap", "watched", ns, {"metadata": {"labels": {"role": "other"}}})
        await follows(cache["labelled"], ns, {})
    assert cache["labelled"]._task is None and cache["named"]._task is None


async def test_a_dropped_watch_resumes_and_catches_up_without_relisting(
    k8s_cluster: K8sCluster, kube: Kube, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    await kube.apply(configmap(ns, "keep", k="0"))
    await kube.apply(configmap(ns, "change", k="0"))
    await kube.apply(configmap(ns, "drop", k="0"))
    counting = CountingKube(kube.api)
    changes: list[tuple[str, str]] = []
    # a long first backoff, so the changes below land while no watch is open
    informer = Informer(
        counting,
        f"/api/v1/namespaces/{ns}/configmaps",
        on_change=lambda kind, obj: changes.append((kind, obj["metadata"]["name"])),
        backoff=(2.0, 4.0),
    )
    await informer.start()
    try:
        await disconnect(informer)
        await kube.apply(configmap(ns, "new", k="1"))
        await kube.patch_merge("v1", "ConfigMap", "change", ns, {"data": {"k": "1"}})
        await kube.delete("v1", "ConfigMap", "drop", ns)
        assert informer._response is None, "the changes must be made while disconnected"
        await follows(informer, ns, {"keep": {"k": "0"}, "change": {"k": "1"}, "new": {"k": "1"}})
        assert counting.lists == 1  # caught up by watching from the last resourceVersion
        assert [c for c in changes if c[1] != "kube-root-ca.crt"][3:] == [
            ("ADDED", "new"),
            ("MODIFIED", "change"),
            ("DELETED", "drop"),
        ]
        # and it keeps watching after the reconnect
        await kube.apply(configmap(ns, "after", k="2"))
        await follows(
            informer, ns, {"keep": {"k": "0"}, "change": {"k": "1"}, "new": {"k": "1"}, "after": {"k": "2"}}
        )
    finally:
        await informer.stop()


async def test_a_gone_resource_version_relists_and_reports_deletions(kube: Kube, k8s_namespace: str) -> None:
    ns = k8s_namespace
    await kube.apply(configmap(ns, "stays", k="0"))
    await kube.apply(configmap(ns, "goes", k="0"))
    counting = CountingKube(kube.api)
    changes: list[tuple[str, str]] = []
    informer = Informer(
        counting,
        f"/api/v1/namespaces/{ns}/configmaps",
        on_change=lambda kind, obj: changes.append((kind, obj["metadata"]["name"])),
        backoff=(2.0, 4.0),
    )
    await informer.start()
    try:
        await disconnect(informer)
        informer._rv = "1"  # older than anything the watch cache holds: the server answers 410
        await kube.delete("v1", "ConfigMap", "goes", ns)
        await kube.apply(configmap(ns, "came", k="1"))

        async def relisted() -> bool:
            return counting.lists == 2

        await eventually(relisted, FOLLOW_S, "a re-list after 410 Gone")
        await follows(informer, ns, {"stays": {"k": "0"}, "came": {"k": "1"}})
        assert sorted(c for c in changes[3:] if c[1] != "kube-root-ca.crt") == [
            ("ADDED", "came"),
            ("DELETED", "goes"),
        ]
        assert informer.resource_version != "1"
        await kube.apply(configmap(ns, "later", k="2"))  # watching again from the new list
        await follows(informer, ns, {"stays": {"k": "0"}, "came": {"k": "1"}, "later": {"k": "2"}})
    finally:
        await informer.stop()


async def test_pods_follow_their_status_and_nodes_are_keyed_by_name(
    k8s_cluster: K8sCluster, kube: Kube, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    pods = Informer(kube, "/api/v1/pods", field_selector=f"metadata.namespace={ns}")
    nodes = Informer(kube, "/api/v1/nodes")
    async with Informers({"pods": pods, "nodes": nodes}).running():
        names = k8s_cluster.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert sorted(nodes.keys()) == sorted(n.removeprefix("node/") for n in names)
        assert all(n["kind"] == "Node" for n in nodes.items())

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "example.com/app:1"}]},
        }
        await kube.apply(pod)

        async def running() -> str | None:
            seen = pods.get(f"{ns}/p")
            if seen and seen.get("status", {}).get("phase") == "Running":
                return str(seen["spec"].get("nodeName"))
            return None

        node = await eventually(running, 30, "the pod to be Running in the store")
        assert node in nodes
        seen = pods.get(f"{ns}/p") or {}
        assert seen["spec"]["containers"][0]["image"] == "example.com/app:1"
        await kube.delete("v1", "Pod", "p", ns)

        async def gone() -> bool:
            return pods.get(f"{ns}/p") is None

        await eventually(gone, 30, "the deleted pod to leave the store")


async def test_a_bearer_token_works_as_in_cluster(
    k8s_cluster: K8sCluster, kube: Kube, k8s_namespace: str
) -> None:
    """A service account token and no client certificate, as ``load_incluster_config`` sets up."""
    ns = k8s_namespace
    await kube.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "watcher", "namespace": ns}}
    )
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]
    await kube.request(
        "POST", f"{rbac}/namespaces/{ns}/roles", {"metadata": {"name": "watch"}, "rules": rules}
    )
    binding = {
        "metadata": {"name": "watch"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "watch"},
        "subjects": [{"kind": "ServiceAccount", "name": "watcher", "namespace": ns}],
    }
    await kube.request("POST", f"{rbac}/namespaces/{ns}/rolebindings", binding)
    review = await kube.request(
        "POST",
        f"/api/v1/namespaces/{ns}/serviceaccounts/watcher/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )

    cfg = client.Configuration()
    await config.load_kube_config(str(k8s_cluster.kubeconfig), client_configuration=cfg, persist_config=False)
    cfg.cert_file = cfg.key_file = None  # the server's CA stays; the admin certificate goes
    cfg.api_key = {"BearerToken": "Bearer " + review["status"]["token"]}
    async with client.ApiClient(configuration=cfg) as api:
        as_pod = Kube(api)
        with pytest.raises(KubernetesError) as denied:  # really the service account, not admin
            await Informer(as_pod, "/api/v1/secrets").start()
        assert denied.value.status == 403

        informer = Informer(as_pod, f"/api/v1/namespaces/{ns}/configmaps")
        await informer.start()
        try:
            await kube.apply(configmap(ns, "seen", k="1"))
            await follows(informer, ns, {"seen": {"k": "1"}})
            await kube.patch_merge("v1", "ConfigMap", "seen", ns, {"data": {"k": "2"}})
            await follows(informer, ns, {"seen": {"k": "2"}})
        finally:
            await informer.stop()
