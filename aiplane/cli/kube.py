"""The Kubernetes side of the CLI: ``render``, ``install`` and ``cache preload``.

``register(app)`` adds them to the main ``aiplane`` app. YAML goes to stdout untouched
(plain writes, not rich, which would read ``[...]`` as markup); notes go to stderr, so
``aiplane render -f x.yaml | kubectl apply -f -`` gets only manifests.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from aiplane.api import BatchJob, Queue, TrainingJob
from aiplane.cli.files import load_resources
from aiplane.runtime.kubernetes.constants import AIPLANE_IMAGE
from aiplane.runtime.kubernetes.install import DEFAULT_NAMESPACE, install_manifests
from aiplane.runtime.kubernetes.lowering import lower
from aiplane.runtime.kubernetes.preload import DEFAULT_PVC_ROOT, preload

cache_app = typer.Typer(
    help="Model cache tools (what the preload init container runs).", no_args_is_help=True
)


def dump(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, every document opened by ``---``, keys in the order built."""
    return yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True) if docs else ""


def render(
    file: Annotated[list[Path], typer.Option("--file", "-f", help="resource YAML (repeatable; - for stdin)")],
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="for resources that do not name one")
    ] = "default",
    suspend: Annotated[
        bool, typer.Option(help="jobs start suspended until the aiplane scheduler admits them")
    ] = True,
) -> None:
    """Print the native Kubernetes manifests the operator would create (for GitOps)."""
    docs: list[dict[str, Any]] = []
    for resource in load_resources(file):
        if isinstance(resource, Queue):
            typer.echo(
                f"note: {resource.ref} has nothing to lower; apply it as is (cluster-scoped)", err=True
            )
            continue
        if suspend and isinstance(resource, TrainingJob | BatchJob):
            typer.echo(
                f"note: {resource.ref} is rendered suspended (queued); --no-suspend to run it", err=True
            )
        docs.extend(lower(resource, resource.metadata.namespace or namespace, suspend=suspend))
    sys.stdout.write(dump(docs))


def install(
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="where the platform runs")
    ] = DEFAULT_NAMESPACE,
    image: Annotated[str, typer.Option(help="the aiplane image")] = AIPLANE_IMAGE,
    gateway_keys_secret: Annotated[
        str | None,
        typer.Option(help="Secret (in --namespace) whose 'keys' entry lists the gateway's API keys"),
    ] = None,
    helm_chart: Annotated[
        Path | None, typer.Option(help="write the same install as a Helm chart into this directory")
    ] = None,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            help="a Prometheus that scrapes the Model pods: the autoscaler reads engine metrics there"
        ),
    ] = None,
    monitors: Annotated[
        str,
        typer.Option(
            help="ServiceMonitor/PodMonitors for the Prometheus Operator: auto (when the cluster "
            "of the current kubeconfig has their CRDs), always, never"
        ),
    ] = "auto",
) -> None:
    """Print CRDs, RBAC and the platform's Deployments, for `kubectl apply -f -`.

    Pods carry ``prometheus.io/*`` scrape annotations either way."""
    if helm_chart is not None:
        from aiplane.runtime.kubernetes.helm import write_chart

        for path in write_chart(helm_chart):
            sys.stderr.write(f"wrote {path}\n")
        return
    if monitors not in ("auto", "always", "never"):
        raise typer.BadParameter(
            f"expected auto, always or never (got {monitors!r})", param_hint="--monitors"
        )
    with_monitors = monitors == "always" or (monitors == "auto" and _has_monitor_crds())
    docs = install_manifests(
        namespace,
        image,
        gateway_keys_secret=gateway_keys_secret,
        prometheus_url=prometheus_url,
        with_monitors=with_monitors,
    )
    sys.stdout.write(dump(docs))


def _has_monitor_crds() -> bool:
    """Whether the cluster of the current kubeconfig serves the Prometheus Operator's
    ServiceMonitor and PodMonitor; False (said on stderr) when no cluster answers."""
    import asyncio

    from aiplane.runtime.kubernetes.client import Kube
    from aiplane.runtime.kubernetes.install import MONITOR_CRDS

    async def check() -> bool:
        async with Kube.connect() as kube:
            for name in MONITOR_CRDS:
                if await kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name) is None:
                    return False
            return True

    try:
        return asyncio.run(check())
    except Exception as exc:  # no kubeconfig, no cluster: print the install without them
        sys.stderr.write(f"note: no ServiceMonitor/PodMonitor (no cluster to check for their CRDs: {exc})\n")
        return False


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@cache_app.command("preload")
def preload_command(
    source: Annotated[str, typer.Option(help="hf:// s3:// gs:// file:// pkg:// pvc:// URI of the weights")],
    dest: Annotated[Path, typer.Option(help="where the server will read them (on the cache volume)")],
    pvc_root: Annotated[Path, typer.Option(help="where pvc:// claims are mounted")] = DEFAULT_PVC_ROOT,
) -> None:
    """Copy a model into the cache once; a warm cache (same source, complete) is kept."""
    started = time.monotonic()
    result = preload(source, dest, pvc_root=pvc_root)
    if result.warm:
        typer.echo(f"{dest}: warm (complete copy of {source})", err=True)
    else:
        took = time.monotonic() - started
        typer.echo(f"{dest}: loaded {_size(result.bytes)} from {source} in {took:.1f}s", err=True)


def register(app: typer.Typer) -> None:
    """Add ``render``, ``install`` and ``cache`` to the ``aiplane`` app."""
    app.command("render")(render)
    app.command("install")(install)
    app.add_typer(cache_app, name="cache")
