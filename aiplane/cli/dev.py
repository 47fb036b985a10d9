"""`aiplane dev ...`: build the Kubernetes binaries and run a local KWOK GPU cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aiplane.dev import DevClusterError

app = typer.Typer(help="Developer tools: a local Kubernetes control plane with fake GPU nodes.")
cluster_app = typer.Typer(help="Run a KWOK cluster (etcd, apiserver, controllers, scheduler).")
app.add_typer(cluster_app, name="cluster")

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Cluster state dir (default: $AIPLANE_HOME/dev-cluster)."),
]


def _fail(err: DevClusterError) -> typer.Exit:
    typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command("build-k8s")
def build_k8s(
    check: Annotated[
        bool, typer.Option("--check", help="Only report what is missing; build nothing.")
    ] = False,
) -> None:
    """Build the control-plane binaries (etcd, kube-*, kwok) from Go modules.

    They go to ~/.cache/aiplane/k8s/<version>/bin; binaries already there with the right
    --version are kept. AIPLANE_K8S_BIN or KUBEBUILDER_ASSETS name prebuilt ones instead.
    """
    from aiplane.dev.k8s_build import Versions, ensure_binaries

    v = Versions()
    _echo(f"Kubernetes {v.kubernetes}, etcd {v.etcd}, kwok {v.kwok}")
    try:
        bins = ensure_binaries(v, build=not check, log=_echo)
    except DevClusterError as e:
        raise _fail(e) from None
    for b in bins.values():
        took = f" ({b.seconds:.0f}s)" if b.source == "built" else ""
        typer.echo(f"{b.name:<24} {b.source:<7} {b.path}{took}")


@cluster_app.command("up")
def cluster_up(
    gpu_nodes: Annotated[
        list[str] | None,
        typer.Option(
            "--gpu-nodes",
            help="<nodes>x<gpus>:<model>, e.g. 16x8:H100 (repeatable; default: the last fleet, or 4x8:H100).",
        ),
    ] = None,
    cpu_nodes: Annotated[
        int | None,
        typer.Option(
            "--cpu-nodes", min=0, help="Untainted system/CPU nodes (default: the last fleet, or 2)."
        ),
    ] = None,
    directory: DirOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 60.0,
) -> None:
    """Start the cluster in the background and print the kubectl command to use."""
    from aiplane.dev import cluster

    try:
        info = cluster.up(directory, gpu_nodes=gpu_nodes, cpu_nodes=cpu_nodes, timeout=timeout, log=_echo)
    except DevClusterError as e:
        raise _fail(e) from None
    verb = "running" if info.already_running else f"up in {info.seconds:.1f}s"
    _echo(f"dev cluster {verb}: {info.server}, {info.nodes} KWOK nodes")
    typer.echo(f"{info.kubectl} get nodes -L nvidia.com/gpu.product")


@cluster_app.command("down")
def cluster_down(
    directory: DirOption = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the state dir (etcd data, certs).")
    ] = False,
) -> None:
    """Stop every process of the cluster (the state dir is kept unless --purge)."""
    from aiplane.dev import cluster

    try:
        cluster.down(directory, purge=purge, log=_echo)
    except DevClusterError as e:
        raise _fail(e) from None


@cluster_app.command("status")
def cluster_status(directory: DirOption = None) -> None:
    """Show which components run, apiserver readiness and KWOK node counts."""
    from aiplane.dev import cluster

    st = cluster.status(directory)
    for name, pid in st.pids.items():
        typer.echo(f"{name:<24} {'running pid ' + str(pid) if pid else 'stopped'}")
    if st.running:
        typer.echo(f"apiserver {st.server} {'ready' if st.ready else 'NOT ready'}")
        typer.echo(f"nodes ready {st.nodes_ready}/{st.nodes_total}")
        typer.echo(f"kubeconfig {st.dir / 'kubeconfig'}")
    else:
        typer.echo(f"no dev cluster running in {st.dir}")
    if not st.running or not st.ready:
        raise typer.Exit(1)


@app.command("prometheus")
def prometheus(
    plane: Annotated[
        list[str] | None,
        typer.Option(
            "--plane", help="A plane's base URL to scrape (repeatable; default: this AIPLANE_HOME's)."
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 9090,
    interval: Annotated[float, typer.Option(help="Scrape and rule evaluation interval, seconds.")] = 5.0,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="TSDB and config (default: $AIPLANE_HOME/prometheus).")
    ] = None,
) -> None:
    """Run Debian's Prometheus on loopback, scraping the local plane and evaluating
    aiplane's alert rules (deploy/prometheus's), until Ctrl-C."""
    import signal
    import time

    from aiplane.dev import prometheus as prom
    from aiplane.errors import AiplaneError
    from aiplane.observe.rules import write_rules
    from aiplane.runtime.local.paths import aiplane_home, db_path
    from aiplane.runtime.local.store import Store

    base = directory or aiplane_home() / "prometheus"
    urls = plane or []
    if not urls:
        running = Store(db_path(aiplane_home())).plane()
        urls = [running[1] if running else "http://127.0.0.1:8000"]
    try:
        rules = write_rules(base / "aiplane-rules.yaml")
        server = prom.start(base, prom.config(urls, interval, rules=[rules]), port)
    except AiplaneError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    _echo(f"prometheus {server.url}: scraping {', '.join(urls)} every {interval:g}s")
    typer.echo(server.url)
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if server.proc.returncode not in (0, -signal.SIGTERM):
        typer.secho(f"error: prometheus exited {server.proc.returncode}; see {server.log}", err=True)
        raise typer.Exit(1)
