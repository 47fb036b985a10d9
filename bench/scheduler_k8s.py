"""aiplane's scheduler against kube-scheduler on the dev cluster: throughput, latency, stranded GPUs.

One invocation starts a dev cluster (real etcd, kube-apiserver, controller-manager,
kube-scheduler and KWOK, see aiplane/dev/cluster.py) in a temporary directory and
runs the same pod list twice on the same nodes:

  (a) ``schedulerName: default-scheduler``: the cluster's kube-scheduler (default profile);
  (b) ``schedulerName: aiplane``: ``aiplane scheduler --kubeconfig K --health-address ...``
      started as a subprocess for this run only.

Between the runs every pod is deleted (grace period 0) and the bench waits until none is left.

Fleet. ``--nodes`` KWOK nodes of 8 GPUs, models in the proportions of the GPUs of
``openb_node_list_gpu_node.csv`` (share of GPU count per model, largest remainder;
a model whose share rounds to no node is left out). Labels: ``nvidia.com/gpu.product``
and ``aiplane.dev/gpu-model`` = the trace's model name (G2, T4, V100M32, ...), taint
``nvidia.com/gpu=present:NoSchedule``. CPU and memory are made non-binding: each node has
1024 CPUs and 8 TiB, so only GPUs (and the 110-pod limit) constrain placement. No CPU-only
nodes: every pod tolerates the GPU taint (the trace's CPU-only pods ran on these nodes too).

Pods. ``--pods`` plain pods drawn with replacement (``--seed``) from
``openb_pod_list_<--list>.csv``, in the same order in both runs, with the trace's CPU and
memory requests. A pod of n whole GPUs has ``nvidia.com/gpu: n`` limits; a fractional pod
(gpu_milli < 1000) asks ``nvidia.com/gpu: 1`` and is annotated
``aiplane.dev/gpu-fraction: "0.46"``; a ``gpu_spec`` becomes required node affinity
``aiplane.dev/gpu-model In (...)`` (pods whose spec names no model of the fleet are not
drawn). Pods are created by ``--concurrency`` concurrent POSTs.

Measures (local monotonic clock, one pod watch in the bench process):

* created: the earliest of the create response and the pod's first watch event;
  bound: the first watch event with ``spec.nodeName`` set. create->bind = bound - created.
* pods/s = pods bound / (last bind - first create).
* first failure: the first watch event showing a pod with ``PodScheduled=False``
  (either scheduler sets it when a pod fits no node). At that moment, from the bindings
  seen before it:
  - GPUs free = devices with no pod at all (the stranded capacity: unallocated while a pod waits);
  - allocated share = sum over bound pods of their GPUs (a fraction counts as its
    fraction) / fleet GPUs.
  Devices: a pod bound with ``aiplane.dev/gpu-devices: "0,3"`` (the aiplane scheduler
  names the devices it chose) holds those (*named*). Otherwise each ``nvidia.com/gpu``
  unit is one device (*exclusive*: what the device plugin hands out, so kube-scheduler's
  fractional pods take a whole device each), unless the scheduler put more
  ``nvidia.com/gpu`` on a node than it has (*shared*); then fractional pods are packed
  onto devices best-fit in bind order.
* The same two figures at the end of the run. A run ends when every pod is bound, or
  ``--quiet`` s (10) passed with no new binding after the last pod was created, or
  after ``--timeout`` s.

    .venv/bin/python bench/scheduler_k8s.py --nodes 50 --pods 300      # a quick look
    .venv/bin/python bench/scheduler_k8s.py --json bench/out/scheduler_k8s.json

The trace must be in ../shared/traces/alibaba-gpu-2023/ (or --traces); the Kubernetes
binaries must be built already (``aiplane dev build-k8s``): the bench never builds them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiplane.dev import cluster as dev_cluster
from aiplane.dev import kwok_nodes as kn
from aiplane.dev.apiclient import KubeApi
from aiplane.dev.pki import Pki
from aiplane.errors import KubernetesError
from aiplane.policies.scheduling.fleet import MILLI, PodShape
from aiplane.policies.scheduling.gpumodel import GpuProduct
from aiplane.runtime.kubernetes.client import Kube
from aiplane.runtime.kubernetes.crds import all_crds
from aiplane.runtime.local.process import free_port
from aiplane.sim import traces

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = ROOT.parent / "shared" / "traces" / "alibaba-gpu-2023"
GPUS_PER_NODE = 8
NODE_CPU, NODE_MEMORY_GIB = 1024, 8192
NAMESPACE = "scheduler-bench"
FRACTION_ANNOTATION, DEVICES_ANNOTATION = "aiplane.dev/gpu-fraction", "aiplane.dev/gpu-devices"
SCHEDULERS = (("kube-scheduler", "default-scheduler"), ("aiplane", "aiplane"))
GPU_MEMORY_MIB = {
    "P100": 16384,
    "T4": 15360,
    "V100M16": 16384,
    "V100M32": 32768,
    "A10": 23028,
}  # G2, G3: unknown
Manifest = dict[str, Any]


# -- fleet and pods ------------------------------------------------------------------------------
def node_pools(nodes_csv: Path, count: int) -> dict[str, int]:
    """Nodes per model for `count` 8-GPU nodes, by each model's share of the trace's GPUs."""
    gpus: Counter[str] = Counter()
    for n in traces.read_nodes(nodes_csv):
        if n.gpus and n.model:
            gpus[n.model] += n.gpus
    total = sum(gpus.values())
    exact = {m: count * g / total for m, g in gpus.items()}
    pools = {m: int(x) for m, x in exact.items()}
    for m in sorted(exact, key=lambda m: exact[m] - pools[m], reverse=True)[: count - sum(pools.values())]:
        pools[m] += 1
    return {m: n for m, n in sorted(pools.items(), key=lambda kv: -kv[1]) if n}


def fleet_manifests(pools: dict[str, int]) -> list[Manifest]:
    nodes: list[Manifest] = []
    for model, count in pools.items():
        gpu = GpuProduct(
            model, model, GPU_MEMORY_MIB.get(model, 0), "trace", NODE_CPU, NODE_MEMORY_GIB, "trace"
        )
        nodes += kn.gpu_nodes(kn.GpuPool(count, GPUS_PER_NODE, gpu))
    return nodes


def sample_pods(pods_csv: Path, count: int, seed: int, models: set[str]) -> tuple[list[PodShape], int]:
    """`count` pods with replacement; pods whose gpu_spec names no fleet model are left out."""
    shapes = [p.shape for p in traces.read_pods(pods_csv)]
    usable = [s for s in shapes if not s.gpu_spec or set(s.gpu_spec.split("|")) & models]
    return random.Random(seed).choices(usable, k=count), len(shapes) - len(usable)


def gpu_units(s: PodShape) -> int:
    """`nvidia.com/gpu` the pod asks: its GPUs, or 1 for a fraction."""
    return s.gpus if s.gpus and s.gpu_milli else 0


def pod_manifest(index: int, s: PodShape, scheduler: str) -> Manifest:
    resources: Manifest = {"requests": {"cpu": f"{s.cpu_milli}m", "memory": f"{s.memory_mib}Mi"}}
    annotations = {}
    if gpu_units(s):
        resources["limits"] = {kn.GPU_RESOURCE: str(gpu_units(s))}
        if s.shares_gpu:
            annotations[FRACTION_ANNOTATION] = f"{s.gpu_milli / MILLI:g}"
    spec: Manifest = {
        "schedulerName": scheduler,
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": resources}],
        "tolerations": [{"key": kn.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if s.gpu_spec:
        expr = {"key": kn.MODEL_LABEL, "operator": "In", "values": sorted(set(s.gpu_spec.split("|")))}
        terms = [{"matchExpressions": [expr]}]
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"p-{index:05d}",
            "labels": {"app": "scheduler-bench"},
            "annotations": annotations,
        },
        "spec": spec,
    }


# -- accounting ----------------------------------------------------------------------------------
Devices = tuple[int, ...] | None  # what `aiplane.dev/gpu-devices` on the bound pod says, if anything
Bound = dict[str, list[tuple[PodShape, Devices]]]  # node -> its pods, in bind order


def busy_devices(pods: list[tuple[PodShape, Devices]], shared: bool) -> int:
    """Devices of one node with at least one pod (see the module docstring)."""
    named: set[int] = set()
    whole, loads = 0, list[int]()
    for s, devices in pods:
        if not gpu_units(s):
            continue
        if devices is not None:
            named.update(devices)
        elif not (shared and s.shares_gpu):
            whole += gpu_units(s)
        elif fits := [i for i, load in enumerate(loads) if load + s.gpu_milli <= MILLI]:
            loads[max(fits, key=lambda i: loads[i])] += s.gpu_milli
        else:
            loads.append(s.gpu_milli)
    return min(GPUS_PER_NODE, len(named) + whole + len(loads))


def usage(bound: Bound, total_gpus: int, shared: bool) -> dict[str, float]:
    busy = sum(busy_devices(pods, shared) for pods in bound.values())
    milli = sum(s.total_milli for pods in bound.values() for s, _ in pods)
    return {"gpus_free": total_gpus - busy, "gpus_busy": busy, "allocated_share": milli / MILLI / total_gpus}


def device_mode(bound: Bound) -> str:
    """`named` when the scheduler published devices, `shared` when it put more `nvidia.com/gpu`
    on a node than the node has, else `exclusive`."""
    if any(d is not None for pods in bound.values() for _, d in pods):
        return "named"
    over = any(sum(gpu_units(s) for s, _ in pods) > GPUS_PER_NODE for pods in bound.values())
    return "shared" if over else "exclusive"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- one run -------------------------------------------------------------------------------------
@dataclass
class Run:
    scheduler: str
    pods: int
    created: dict[str, float] = field(default_factory=dict)
    bound_at: dict[str, float] = field(default_factory=dict)
    bound: Bound = field(default_factory=dict)
    first_create: float = 0.0
    last_create: float = 0.0
    first_failure: float | None = None
    first_failed_pod: str = ""
    at_failure: Bound | None = None
    timed_out: bool = False
    curve: list[tuple[float, int]] = field(default_factory=list)


def on_event(run: Run, pod: Manifest, shapes: dict[str, PodShape], now: float) -> None:
    name = pod["metadata"]["name"]
    if name not in shapes:
        return
    run.created[name] = min(run.created.get(name, now), now)
    node = (pod.get("spec") or {}).get("nodeName")
    if node and name not in run.bound_at:
        run.bound_at[name] = now
        annotations = pod["metadata"].get("annotations") or {}
        devices = annotations.get(DEVICES_ANNOTATION)
        named = tuple(int(d) for d in devices.split(",") if d.strip()) if devices is not None else None
        run.bound.setdefault(node, []).append((shapes[name], named))
        run.curve.append((now, len(run.bound_at)))
    elif not node and run.first_failure is None:
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "PodScheduled" and c.get("status") == "False" for c in conditions):
            run.first_failure, run.first_failed_pod = now, f"{name} ({shapes[name].tag})"
            run.at_failure = {n: list(p) for n, p in run.bound.items()}


async def watch(kube: Kube, run: Run, shapes: dict[str, PodShape], version: str, stop: asyncio.Event) -> None:
    """Follow the namespace's pods from `version` until `stop`, resuming a closed watch."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    while not stop.is_set():
        query = [("watch", "1"), ("resourceVersion", version), ("allowWatchBookmarks", "true")]
        resp = await kube.api.call_api(
            path,
            "GET",
            {},
            query,
            {"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        response = resp[0] if isinstance(resp, tuple) else resp
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":  # e.g. 410 Gone: relist from now
                    listed = await kube.request("GET", path, query=[("limit", "1")])
                    version = listed["metadata"]["resourceVersion"]
                    break
                version = (obj.get("metadata") or {}).get("resourceVersion", version)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    on_event(run, obj, shapes, time.monotonic())
        finally:
            response.release()


async def create_all(kube: Kube, manifests: list[Manifest], run: Run, concurrency: int) -> None:
    queue: asyncio.Queue[Manifest] = asyncio.Queue()
    for m in manifests:
        queue.put_nowait(m)
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"

    async def worker() -> None:
        while not queue.empty():
            m = queue.get_nowait()
            for attempt in range(5):
                try:
                    await kube.request("POST", path, m)
                    break
                except KubernetesError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            name, now = m["metadata"]["name"], time.monotonic()
            run.created[name] = min(run.created.get(name, now), now)

    run.first_create = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.last_create = time.monotonic()


async def run_once(
    kube: Kube, name: str, scheduler: str, shapes: list[PodShape], args: argparse.Namespace
) -> Run:
    manifests = [pod_manifest(i, s, scheduler) for i, s in enumerate(shapes)]
    by_name = {m["metadata"]["name"]: s for m, s in zip(manifests, shapes, strict=True)}
    run = Run(name, len(manifests))
    listed = await kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", query=[("limit", "1")])
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(kube, run, by_name, listed["metadata"]["resourceVersion"], stop))
    deadline = time.monotonic() + args.timeout
    try:
        await asyncio.wait_for(create_all(kube, manifests, run, args.concurrency), args.timeout)
        while len(run.bound_at) < run.pods:
            now = time.monotonic()
            last = max(run.curve[-1][0] if run.curve else run.last_create, run.last_create)
            if now - last >= args.quiet:
                break
            if now > deadline:
                run.timed_out = True
                break
            await asyncio.sleep(0.25)
    except TimeoutError:
        run.timed_out = True
    finally:
        stop.set()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return run


async def delete_all(kube: Kube, timeout: float) -> None:
    """Delete every pod of the namespace (grace 0) and wait until none is left. A large
    collection can outlast the API server's request timeout: then ask again."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    deadline = time.monotonic() + timeout
    while (await kube.request("GET", path, query=[("limit", "1")]))["items"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pods of {NAMESPACE} still there after {timeout:.0f}s")
        with contextlib.suppress(KubernetesError, aiohttp.ClientError, TimeoutError):
            query = [("gracePeriodSeconds", "0")]
            await kube.request("DELETE", path, {"gracePeriodSeconds": 0}, query=query)
        await asyncio.sleep(1)


# -- processes -----------------------------------------------------------------------------------
def start_aiplane(kubeconfig: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [
        str(ROOT / ".venv" / "bin" / "aiplane"),
        "scheduler",
        "--kubeconfig",
        str(kubeconfig),
        "--health-address",
        f"127.0.0.1:{port}",
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r,
        ):
            if r.status == 200 and scrape(port).get("aiplane_scheduler_leader", 1.0) == 1.0:
                return proc, port
        time.sleep(0.3)
    stop_process(proc)
    raise RuntimeError(f"aiplane scheduler did not become healthy; see {log_path}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def scrape(port: int) -> dict[str, float]:
    """The scheduler's own counters (aiplane_scheduler_* samples without labels)."""
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r,
    ):
        text = r.read().decode()
        out = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key.startswith("aiplane_scheduler_") and "{" not in key and not key.endswith("_created"):
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out
    return {}


def install_crds(api: KubeApi, timeout: float = 60) -> None:
    """aiplane's CRDs: the scheduler watches TrainingJobs, BatchJobs and Queues."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for crd in all_crds():
        r = api.post(path, crd)
        if not r.ok and r.status != 409:
            raise RuntimeError(f"cannot create CRD {crd['metadata']['name']}: {r.status} {r.body}")
    deadline = time.monotonic() + timeout
    for crd in all_crds():
        while True:
            body = api.get(f"{path}/{crd['metadata']['name']}").body
            conditions = body.get("status", {}).get("conditions", []) if isinstance(body, dict) else []
            established = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
            group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
            if established and api.get(f"/apis/{group}/{version}/{crd['spec']['names']['plural']}").ok:
                break  # served, not only Established (the storage may still 429 for a moment)
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {crd['metadata']['name']} not Established after {timeout:.0f}s")
            time.sleep(0.5)


def wait_nodes_ready(api: KubeApi, names: set[str], timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len(ready_nodes(api) & names) == len(names):
            return time.monotonic() - t0
        time.sleep(2)
    raise RuntimeError(f"{len(names)} KWOK nodes not Ready after {timeout:.0f}s")


def ready_nodes(api: KubeApi) -> set[str]:
    r = api.get("/api/v1/nodes?labelSelector=type%3Dkwok")
    items = r.body.get("items", []) if r.ok else []
    return {
        n["metadata"]["name"]
        for n in items
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions") or [])
    }


# -- report --------------------------------------------------------------------------------------
def summarize(run: Run, total_gpus: int, extra: dict[str, Any]) -> dict[str, Any]:
    lat = [run.bound_at[n] - run.created[n] for n in run.bound_at]
    last_bind = max(run.bound_at.values(), default=run.first_create)
    mode = device_mode(run.bound)
    shared = mode == "shared"
    fail = usage(run.at_failure, total_gpus, shared) if run.at_failure is not None else None
    return {
        "scheduler": run.scheduler,
        "pods": run.pods,
        "bound": len(run.bound_at),
        "pods_per_s": len(run.bound_at) / max(1e-9, last_bind - run.first_create),
        "created_per_s": run.pods / max(1e-9, run.last_create - run.first_create),
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p99_s": pct(lat, 0.99),
        "first_failure_s": None if run.first_failure is None else run.first_failure - run.first_create,
        "first_failed_pod": run.first_failed_pod,
        "bound_at_failure": None if run.at_failure is None else sum(map(len, run.at_failure.values())),
        "at_failure": fail,
        "at_end": usage(run.bound, total_gpus, shared),
        "devices": mode,
        "timed_out": run.timed_out,
        "curve": [(round(t - run.first_create, 3), n) for t, n in run.curve],
        **extra,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    def fail(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r["at_failure"][key], fmt) if r["at_failure"] else "-"

    head = (
        f"{'scheduler':15s} {'bound':>11s} {'pods/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} | "
        f"{'1st fail s':>10s} {'GPUs free':>9s} {'alloc':>6s} | {'end free':>8s} {'alloc':>6s} devices"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        first = "-" if r["first_failure_s"] is None else f"{r['first_failure_s']:.1f}"
        print(
            f"{r['scheduler']:15s} {r['bound']:>5d}/{r['pods']:<5d} {r['pods_per_s']:7.1f} "
            f"{r['p50_s'] * 1000:7.0f} {r['p99_s'] * 1000:7.0f} | {first:>10s} "
            f"{fail(r, 'gpus_free', '9d'):>9s} {fail(r, 'allocated_share', '6.1%'):>6s} | "
            f"{r['at_end']['gpus_free']:8d} {r['at_end']['allocated_share']:6.1%} {r['devices']}"
        )
    for r in rows:
        if r["first_failed_pod"]:
            pod, bound = r["first_failed_pod"], r["bound_at_failure"]
            print(f"  {r['scheduler']}: first unschedulable {pod}, {bound} pods bound then")
        m = r["scheduler_metrics"]
        if m.get("aiplane_scheduler_cycle_duration_seconds_count"):
            cycles = m["aiplane_scheduler_cycle_duration_seconds_count"]
            mean = m["aiplane_scheduler_cycle_duration_seconds_sum"] / cycles
            print(f"  {r['scheduler']}: {cycles:.0f} cycles, {mean:.2f} s each on average (its /metrics)")
    k, a = rows
    print("\nratios aiplane / kube-scheduler:")
    print(
        f"  pods/s {a['pods_per_s'] / k['pods_per_s']:.2f}   p50 {a['p50_s'] / k['p50_s']:.2f}   "
        f"p99 {a['p99_s'] / k['p99_s']:.2f}   bound {a['bound'] / max(1, k['bound']):.3f}"
    )
    if a["at_failure"] and k["at_failure"]:
        free_k, free_a = k["at_failure"]["gpus_free"], a["at_failure"]["gpus_free"]
        ratio = f"{free_a / free_k:.2f}" if free_k else "-"
        print(f"  GPUs free at first failure {free_a} vs {free_k} ({ratio})")
    else:
        print("  no first failure in at least one run: the pods fit (raise --pods or lower --nodes)")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, r in enumerate(rows):
        xs = [0.0] + [t for t, _ in r["curve"]]
        ys = [0] + [n for _, n in r["curve"]]
        ax1.plot(xs, ys, color=f"C{i}", label=f"{r['scheduler']} ({r['pods_per_s']:.0f} pods/s)")
        if r["first_failure_s"] is not None:
            ax1.axvline(r["first_failure_s"], color=f"C{i}", linestyle=":", linewidth=1)
    ax1.set(title="Pods bound (dotted: first unschedulable)", xlabel="s since first create", ylabel="pods")
    ax1.legend()
    names = [r["scheduler"] for r in rows]
    pos = range(len(rows))
    ax2.bar([p - 0.2 for p in pos], [r["p50_s"] * 1000 for r in rows], 0.4, label="p50")
    ax2.bar([p + 0.2 for p in pos], [r["p99_s"] * 1000 for r in rows], 0.4, label="p99")
    ax2.set_xticks(list(pos), names)
    ax2.set(title="Create -> bind", ylabel="ms")
    ax2.legend()
    for j, (key, label) in enumerate((("at_failure", "at first failure"), ("at_end", "at end"))):
        vals = [(r[key] or {}).get("gpus_free", 0) for r in rows]
        bars = ax3.bar([p + (j - 0.5) * 0.4 for p in pos], vals, 0.4, label=label, color=f"C{j + 2}")
        ax3.bar_label(bars, labels=[str(v) if r[key] else "n/a" for v, r in zip(vals, rows, strict=True)])

    def share(r: dict[str, Any], key: str) -> str:
        return f"{r[key]['allocated_share']:.0%}" if r[key] else "-"

    ticks = [f"{r['scheduler']}\nallocated {share(r, 'at_failure')} / {share(r, 'at_end')}" for r in rows]
    ax3.set_xticks(list(pos), ticks)
    ax3.set(title="GPUs with no pod (stranded)", ylabel="GPUs")
    ax3.margins(y=0.15)
    ax3.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# -- main ----------------------------------------------------------------------------------------
async def bench(
    kubeconfig: Path, workdir: Path, shapes: list[PodShape], args: argparse.Namespace, total_gpus: int
) -> list[dict[str, Any]]:
    rows = []
    async with Kube.connect(str(kubeconfig)) as kube:
        await kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        for label, scheduler in SCHEDULERS:
            await delete_all(kube, args.timeout)
            proc, port = (
                start_aiplane(kubeconfig, workdir / "aiplane-scheduler.log")
                if label == "aiplane"
                else (None, 0)
            )
            try:
                print(f"run {label}: {len(shapes)} pods ...", flush=True)
                run = await run_once(kube, label, scheduler, shapes, args)
                metrics = scrape(port) if port else {}
            finally:
                if proc is not None:
                    stop_process(proc)
            rows.append(summarize(run, total_gpus, {"scheduler_metrics": metrics}))
            if args.json:  # what is measured survives a later failure
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.with_suffix(".partial.json").write_text(json.dumps(rows))
            print(
                f"  {rows[-1]['bound']} bound in {rows[-1]['curve'][-1][0] if run.curve else 0:.1f}s"
                f"{' (timed out)' if run.timed_out else ''}",
                flush=True,
            )
        await delete_all(kube, args.timeout)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000, help="8-GPU KWOK nodes")
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--list", default="default", help="pod list: openb_pod_list_<LIST>.csv")
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--concurrency", type=int, default=32, help="pod creations in flight")
    ap.add_argument("--quiet", type=float, default=10.0, help="end a run after this long without a binding")
    ap.add_argument("--timeout", type=float, default=900.0, help="hard bound per run, seconds")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "scheduler_k8s.png")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    nodes_csv, pods_csv = (
        args.traces / "openb_node_list_gpu_node.csv",
        args.traces / f"openb_pod_list_{args.list}.csv",
    )
    if not (nodes_csv.exists() and pods_csv.exists()):
        print(f"skipped: {nodes_csv} or {pods_csv} is absent (see ../shared/traces/README.md)")
        return 0
    pools = node_pools(nodes_csv, args.nodes)
    nodes = fleet_manifests(pools)
    total_gpus = len(nodes) * GPUS_PER_NODE
    shapes, dropped = sample_pods(pods_csv, args.pods, args.seed, set(pools))
    milli = sum(s.total_milli for s in shapes) / MILLI
    units = sum(gpu_units(s) for s in shapes)
    need = round(1.3 * total_gpus / (milli / len(shapes)))
    print(
        f"fleet: {len(nodes)} nodes x {GPUS_PER_NODE} GPUs = {total_gpus}: "
        + ", ".join(f"{n} {m}" for m, n in pools.items())
    )
    print(
        f"pods: {len(shapes)} from {pods_csv.name} (seed {args.seed}; {dropped} of the list need a model "
        f"not in the fleet): {Counter(s.tag for s in shapes).most_common()}"
    )
    print(
        f"demand: {milli:.0f} GPUs ({milli / total_gpus:.2f}x capacity) counting fractions, "
        f"{units} whole devices ({units / total_gpus:.2f}x); ~{need} pods would be 1.3x"
    )
    if milli < total_gpus:
        print("  note: the pods fit by fractional demand; a first failure comes only from fragmentation")

    workdir = Path(tempfile.mkdtemp(prefix="scheduler-k8s-"))
    t0 = time.monotonic()
    try:
        info = dev_cluster.up(
            workdir,
            gpu_nodes=["1x8:T4"],
            cpu_nodes=0,
            bind_to_pid=os.getpid(),
            build=False,
            log=lambda m: print(f"  {m}"),
        )
        api = KubeApi(info.server, Pki(workdir / "pki"), timeout=60)
        install_crds(api)
        dev_cluster.apply_nodes(api, nodes)
        ready_s = wait_nodes_ready(api, {n["metadata"]["name"] for n in nodes}, 600)
        print(
            f"cluster up with {len(nodes)} KWOK nodes Ready in {time.monotonic() - t0:.0f}s "
            f"({ready_s:.0f}s for the nodes)",
            flush=True,
        )
        rows = asyncio.run(bench(info.kubeconfig, workdir, shapes, args, total_gpus))
        not_ready = len(nodes) - len(ready_nodes(api) & {n["metadata"]["name"] for n in nodes})
    finally:
        dev_cluster.down(workdir, purge=False, log=lambda m: print(f"  {m}"))
    shutil.rmtree(workdir)  # kept (with the logs) only when something failed
    print(
        f"\nscheduler_k8s: {len(nodes)} nodes, {len(shapes)} pods ({args.list}, seed {args.seed}); "
        f"{not_ready} nodes NotReady at the end"
    )
    print_table(rows)
    title = (
        f"{len(nodes)} KWOK nodes x 8 GPUs, {len(shapes)} pods from openb_pod_list_{args.list} "
        f"(seed {args.seed}), concurrency {args.concurrency}"
    )
    plot(rows, args.plot, title)
    print(f"\nplot: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "nodes": len(nodes),
            "pools": pools,
            "pods": len(shapes),
            "list": args.list,
            "seed": args.seed,
            "concurrency": args.concurrency,
            "demand_gpus": milli,
            "demand_devices": units,
            "not_ready_nodes": not_ready,
        }
        args.json.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
        args.json.with_suffix(".partial.json").unlink(missing_ok=True)
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
