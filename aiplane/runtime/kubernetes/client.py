"""A thin async Kubernetes client: server-side apply, get, list, delete, status patch.

Built on kubernetes_asyncio's ApiClient for authentication (kubeconfig or in-cluster)
and TLS, with the paths of the handful of kinds aiplane manages in one table instead
of API discovery at start-up. Every ApiException becomes a :class:`KubernetesError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from aiplane.errors import KubernetesError

Manifest = dict[str, Any]
FIELD_MANAGER = "aiplane"


@dataclass(frozen=True)
class KindInfo:
    prefix: str
    plural: str
    namespaced: bool


KIND_TABLE: dict[tuple[str, str], KindInfo] = {
    ("v1", "Namespace"): KindInfo("/api/v1", "namespaces", False),
    ("v1", "Service"): KindInfo("/api/v1", "services", True),
    ("v1", "ServiceAccount"): KindInfo("/api/v1", "serviceaccounts", True),
    ("v1", "PersistentVolumeClaim"): KindInfo("/api/v1", "persistentvolumeclaims", True),
    ("v1", "Pod"): KindInfo("/api/v1", "pods", True),
    ("v1", "ConfigMap"): KindInfo("/api/v1", "configmaps", True),
    ("apps/v1", "Deployment"): KindInfo("/apis/apps/v1", "deployments", True),
    ("batch/v1", "Job"): KindInfo("/apis/batch/v1", "jobs", True),
    ("batch/v1", "CronJob"): KindInfo("/apis/batch/v1", "cronjobs", True),
    ("policy/v1", "PodDisruptionBudget"): KindInfo("/apis/policy/v1", "poddisruptionbudgets", True),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): KindInfo(
        "/apis/autoscaling/v2", "horizontalpodautoscalers", True
    ),
    ("discovery.k8s.io/v1", "EndpointSlice"): KindInfo("/apis/discovery.k8s.io/v1", "endpointslices", True),
    ("aiplane.dev/v1alpha1", "Model"): KindInfo("/apis/aiplane.dev/v1alpha1", "models", True),
    ("aiplane.dev/v1alpha1", "TrainingJob"): KindInfo("/apis/aiplane.dev/v1alpha1", "trainingjobs", True),
    ("aiplane.dev/v1alpha1", "BatchJob"): KindInfo("/apis/aiplane.dev/v1alpha1", "batchjobs", True),
    ("aiplane.dev/v1alpha1", "Queue"): KindInfo("/apis/aiplane.dev/v1alpha1", "queues", False),
}


def kind_info(api_version: str, kind: str) -> KindInfo:
    try:
        return KIND_TABLE[(api_version, kind)]
    except KeyError:
        raise KubernetesError(f"aiplane does not manage {api_version} {kind}") from None


def resource_path(
    api_version: str, kind: str, name: str | None = None, namespace: str | None = None, sub: str = ""
) -> str:
    info = kind_info(api_version, kind)
    path = info.prefix
    if info.namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    elif info.namespaced and name:
        raise KubernetesError(f"{kind}/{name}: a namespace is required")
    path += f"/{info.plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    @asynccontextmanager
    async def connect(cls, kubeconfig: str | None = None) -> AsyncIterator[Kube]:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        cfg = client.Configuration()
        try:
            if kubeconfig is None:
                try:
                    config.load_incluster_config(client_configuration=cfg)
                except config.ConfigException:
                    await config.load_kube_config(client_configuration=cfg, persist_config=False)
            else:
                await config.load_kube_config(
                    config_file=kubeconfig, client_configuration=cfg, persist_config=False
                )
        except (config.ConfigException, OSError) as exc:
            raise KubernetesError(f"cannot load Kubernetes credentials: {exc}") from exc
        async with client.ApiClient(configuration=cfg) as api:
            yield cls(api)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        raw = await self._call(method, path, body, query, content_type, "application/json")
        return json.loads(raw) if raw else None

    async def read_text(self, path: str, query: list[tuple[str, str]] | None = None) -> str:
        """A plain-text GET, such as a pod's log (``.../pods/NAME/log``)."""
        raw = await self._call("GET", path, None, query, "application/json", "*/*")
        return raw.decode(errors="replace")

    async def _call(
        self,
        method: str,
        path: str,
        body: Any,
        query: list[tuple[str, str]] | None,
        content_type: str,
        accept: str,
    ) -> bytes:
        headers = {"Accept": accept, "Content-Type": content_type}
        try:
            resp = await self.api.call_api(
                path,
                method,
                {},
                query or [],
                headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
            )
            response = resp[0] if isinstance(resp, tuple) else resp
            raw = await response.read()
            status = int(response.status)
        except ApiException as exc:
            raise KubernetesError(_explain(exc, method, path), status=exc.status) from exc
        if status >= 400:  # without preloading, the client does not raise on errors
            raise KubernetesError(
                _explain(ApiException(status=status, reason=response.reason), method, path, raw),
                status=status,
            )
        return bytes(raw)

    async def apply(self, obj: Manifest, force: bool = True) -> Manifest:
        """Server-side apply: idempotent, so a restarted operator never duplicates."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        result: Manifest = await self.request(
            "PATCH", path, obj, query, content_type="application/apply-patch+yaml"
        )
        return result

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Manifest | None:
        try:
            result: Manifest = await self.request("GET", resource_path(api_version, kind, name, namespace))
        except KubernetesError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[Manifest]:
        query = [("labelSelector", selector)] if selector else []
        result = await self.request("GET", resource_path(api_version, kind, None, namespace), query=query)
        items: list[Manifest] = result.get("items", [])
        for item in items:  # list items lack apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        body = {"propagationPolicy": "Background"}
        try:
            await self.request("DELETE", resource_path(api_version, kind, name, namespace), body)
        except KubernetesError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_merge(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: Manifest, sub: str = ""
    ) -> Manifest:
        path = resource_path(api_version, kind, name, namespace, sub)
        result: Manifest = await self.request(
            "PATCH", path, patch, content_type="application/merge-patch+json"
        )
        return result


def _explain(exc: ApiException, method: str, path: str, raw: bytes | None = None) -> str:
    message = exc.reason or ""
    try:
        body = json.loads(raw or exc.body or "{}")
        message = body.get("message", message)
    except (json.JSONDecodeError, TypeError):
        pass
    return f"{method} {path}: {exc.status} {message}"
