"""A static volume pool for the dev cluster, so PVCs bind (KWOK has no storage).

A default StorageClass ``standard`` with no provisioner, and ``count`` pre-created
hostPath PersistentVolumes that the real PV controller binds claims to. No bytes are
ever stored: this is a faithful fake of a storage backend for API-level tests (claims
bind, pods that mount them schedule), named as such in the objects' labels.
"""

from __future__ import annotations

from typing import Any

from aiplane.dev import DevClusterError
from aiplane.dev.apiclient import KubeApi

STORAGE_CLASS = "standard"
POOL_LABEL = {"aiplane.dev/fake-storage": "true"}
DEFAULT_POOL = 64


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "labels": dict(POOL_LABEL),
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Retain",
    }


def volume(index: int, size: str = "1Ti") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"fake-pv-{index:03d}", "labels": dict(POOL_LABEL)},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": f"/var/lib/aiplane-fake-pv/{index:03d}"},
        },
    }


def apply_storage(api: KubeApi, count: int = DEFAULT_POOL) -> int:
    """Create the class and the missing volumes; returns how many volumes were created."""
    if not api.get(f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}").ok:
        r = api.post("/apis/storage.k8s.io/v1/storageclasses", storage_class())
        if not r.ok:
            raise DevClusterError(f"cannot create the dev StorageClass: {r.status} {r.body}")
    r = api.get("/api/v1/persistentvolumes?labelSelector=aiplane.dev%2Ffake-storage%3Dtrue")
    have = {pv["metadata"]["name"] for pv in (r.body or {}).get("items", [])} if r.ok else set()
    created = 0
    for index in range(count):
        pv = volume(index)
        if pv["metadata"]["name"] in have:
            continue
        r = api.post("/api/v1/persistentvolumes", pv)
        if not r.ok:
            raise DevClusterError(f"cannot create dev volume {pv['metadata']['name']}: {r.status} {r.body}")
        created += 1
    return created
