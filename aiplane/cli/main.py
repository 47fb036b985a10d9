"""The ``aiplane`` command. Every AiplaneError ends as one clear line, never a traceback."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from aiplane import __version__, progress
from aiplane.api import KINDS, AnyResource, Model, Queue
from aiplane.cli import batch, kube, sim, top
from aiplane.cli.files import load_resources
from aiplane.cli.output import age, console, err_console, event_line, table
from aiplane.errors import AiplaneError, NotFoundError
from aiplane.gateway.auth import load_keys
from aiplane.runtime.local import PlaneOptions, Store, run
from aiplane.runtime.local.defaults import default_model
from aiplane.runtime.local.paths import aiplane_home, db_path
from aiplane.runtime.local.process import alive
from aiplane.runtime.local.workloads import JOB_KINDS, devices_text, local_job

app = typer.Typer(
    pretty_exceptions_enable=False,
    help="aiplane: serve, train and batch AI workloads, locally or on Kubernetes.",
    no_args_is_help=True,
)

FilesOpt = Annotated[
    list[Path] | None, typer.Option("--file", "-f", help="resource YAML (repeatable; - for stdin)")
]


def _store() -> Store:
    return Store(db_path(aiplane_home()))


@app.command()
def up(
    file: FilesOpt = None,
    host: Annotated[str, typer.Option(help="gateway address (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gateway port")] = 8000,
    api_key_file: Annotated[Path | None, typer.Option(help="file of API keys, one per line")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the local plane in the foreground: controller, supervisor and gateway."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    resources: list[AnyResource] = load_resources(file) if file else [default_model()]
    keys = load_keys(str(api_key_file) if api_key_file else None)
    status = console.status("starting the plane")
    status.start()

    def on_event(ref: str, reason: str, message: str) -> None:
        if reason == "ScaleUp":
            status.update(f"loading {ref} ({message.split(' ')[0]})")
        if reason == "ReplicaReady":
            status.update(f"{ref} ready")
        console.print(event_line(ref, reason, message))

    def on_ready(address: str) -> None:
        status.stop()
        console.print(
            f"[bold green]aiplane[/] gateway on {address}/v1  (Ctrl-C stops the plane and its replicas)"
        )
        for res in resources:
            console.print(f"  {res.ref} applied")

    try:
        run(PlaneOptions(aiplane_home(), host, port, resources, keys, on_event, on_ready))
    finally:
        status.stop()
    console.print("plane stopped; every replica it started is stopped")


@app.command()
def apply(file: FilesOpt = None) -> None:
    """Create or update resources; a running plane acts on them within a second."""
    if not file:
        raise AiplaneError("apply needs -f FILE")
    store = _store()
    for resource in load_resources(file):
        result = store.apply(resource)
        console.print(f"{resource.kind.lower()}/{resource.name} {result}")
    if not _plane_running(store):
        err_console.print("[yellow]note:[/] no plane is running; `aiplane up` will act on these")


def _plane_running(store: Store) -> bool:
    plane = store.plane()
    return bool(plane and alive(plane[0]))


@app.command()
def get(
    what: Annotated[str, typer.Argument(help="models | replicas | jobs | queues | events")] = "models",
) -> None:
    """Show resources and their status."""
    store = _store()
    now = time.time()
    if what in ("models", "model", "mdl"):
        statuses = store.statuses()
        replicas = store.replicas()
        t = table("NAME", "ENGINE", "READY", "REPLICAS", "GPUS", "STATUS", "AGE")
        for item in store.resources("Model"):
            res = item.resource
            assert isinstance(res, Model)
            spec = res.spec
            st = statuses.get(res.name)
            mine = [r for r in replicas if r.model == res.name]
            ready = sum(1 for r in mine if r.state == "Ready")
            desired = st.desired if st else 0
            worst = next((r.state for r in mine if r.state == "CrashLoopBackOff"), None)
            reason = worst or (st.reason if st else "waiting for a plane")
            t.add_row(
                res.name,
                spec.engine,
                f"{ready}/{desired}",
                f"{spec.replicas.min}-{spec.replicas.max}",
                f"{spec.resources.gpus:g}",
                reason,
                age(item.created, now),
            )
        console.print(t)
    elif what in ("replicas", "replica"):
        t = table("NAME", "MODEL", "STATE", "PID", "PORT", "RESTARTS", "DEVICES", "AGE", "MESSAGE")
        for r in store.replicas():
            t.add_row(
                r.id,
                r.model,
                r.state,
                str(r.pid or "-"),
                str(r.port),
                str(r.restarts),
                r.devices or "-",
                age(r.started, now),
                r.message[:80],
            )
        console.print(t)
    elif what in ("jobs", "job", "trainingjobs", "batchjobs", "tj", "bj"):
        _get_jobs(store, now)
    elif what in ("queues", "queue"):
        t = table("NAME", "QUOTA", "COHORT", "AGE")
        for item in store.resources("Queue"):
            queue_res = item.resource
            assert isinstance(queue_res, Queue)
            quota = ", ".join(f"{k}={v:g}" for k, v in queue_res.spec.quota.items()) or "-"
            t.add_row(queue_res.name, quota, queue_res.spec.cohort or "-", age(item.created, now))
        console.print(t)
    elif what == "events":
        t = table("AGE", "OBJECT", "REASON", "MESSAGE")
        for ts, ref, reason, message in store.events(limit=40):
            t.add_row(age(ts, now), ref, reason, message[:100])
        console.print(t)
    else:
        raise AiplaneError(f"unknown resource type {what!r} (models, replicas, jobs, queues, events)")


def _get_jobs(store: Store, now: float) -> None:
    """Jobs with their phase and why: the scheduling core's reason while Pending."""
    statuses = store.job_statuses()
    t = table("KIND", "NAME", "QUEUE", "PHASE", "GPUS", "DEVICES", "RESTARTS", "PROGRESS", "AGE", "REASON")
    for kind in JOB_KINDS:
        for item in store.resources(kind):
            job = local_job(item.resource, item.generation, item.created)
            row = statuses.get((kind, job.name))
            current = row is not None and row.generation == item.generation
            phase = row.phase if row and current else "Pending"
            reason = (
                row.reason if row and current else "waiting for a plane" if not _plane_running(store) else ""
            )
            devices = devices_text(row.devices) if row and current else "-"
            t.add_row(
                kind,
                job.name,
                job.queue,
                phase,
                f"{job.demand.gpu:g}",
                devices,
                str(row.restarts if row and current else 0),
                progress.summary(row.progress) if row and current else "",
                age(item.created, now),
                reason,
            )
    console.print(t)


@app.command()
def delete(
    kind: Annotated[str, typer.Argument(help="model | trainingjob | batchjob | queue")],
    name: Annotated[str, typer.Argument()],
) -> None:
    """Delete a resource; a running plane stops its replicas."""
    canonical = {k.lower(): k for k in KINDS} | {
        "models": "Model",
        "mdl": "Model",
        "tj": "TrainingJob",
        "bj": "BatchJob",
        "q": "Queue",
    }
    kind_name = canonical.get(kind.lower().rstrip("s") if kind.lower() not in canonical else kind.lower())
    if kind_name is None:
        raise AiplaneError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if not _store().delete(kind_name, name):
        raise NotFoundError(f"{kind_name}/{name} not found")
    console.print(f"{kind_name.lower()}/{name} deleted")


@app.command()
def logs(
    target: Annotated[str, typer.Argument(help="MODEL, or job/NAME (trainingjob/NAME, batchjob/NAME)")],
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    replica: Annotated[str | None, typer.Option(help="one replica's (or worker's: worker-0) log")] = None,
    tail_lines: Annotated[int, typer.Option("--tail")] = 50,
) -> None:
    """Print (or follow) the logs of a model's replicas or a job's workers."""
    from aiplane.cli.logs import stream_logs

    stream_logs(target, replica, follow, tail_lines)


@app.command()
def wait(
    target: Annotated[str, typer.Argument(help="job/NAME, trainingjob/NAME (tj/) or batchjob/NAME (bj/)")],
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds (exit 2)")] = None,
) -> None:
    """Follow a local job to its end with a progress bar (rows/s or steps/s, time left).

    Exit 0 when it Succeeded, 1 when it Failed, 2 when --timeout ran out first.
    """
    from aiplane.cli.wait import wait_job

    if code := wait_job(target, timeout):
        raise typer.Exit(code)


@app.command()
def operator(
    namespace: Annotated[str | None, typer.Option(help="watch one namespace (default: all)")] = None,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubeconfig (default: in-cluster, then KUBECONFIG)")
    ] = None,
    liveness: Annotated[
        str | None, typer.Option(help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    ] = None,
) -> None:
    """Run the Kubernetes operator (kopf): Models, TrainingJobs, BatchJobs, Queues."""
    from aiplane.runtime.kubernetes.operator import run as run_operator

    run_operator(namespace, str(kubeconfig) if kubeconfig else None, liveness)


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="listen address (0.0.0.0 in a pod)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 8000,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubeconfig (default: in-cluster, then KUBECONFIG)")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="serve Models of one namespace (default: all)")
    ] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="file of API keys, one per line")] = None,
) -> None:
    """Run the OpenAI-compatible gateway over the Models of a Kubernetes cluster."""
    from aiplane.runtime.kubernetes.gateway import run_gateway

    run_gateway(
        host,
        port,
        str(kubeconfig) if kubeconfig else None,
        namespace,
        str(api_key_file) if api_key_file else None,
    )


@app.command()
def scheduler(
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubeconfig (default: in-cluster, then KUBECONFIG)")
    ] = None,
    health_address: Annotated[
        str | None, typer.Option(help="serve /healthz and /metrics here, e.g. 0.0.0.0:8080")
    ] = None,
    leader_elect: Annotated[
        bool, typer.Option(help="take the Lease before acting, so replicas never both bind")
    ] = True,
    lease_namespace: Annotated[
        str | None, typer.Option(help="namespace of the Lease (default: $POD_NAMESPACE, else default)")
    ] = None,
    reserve_after: Annotated[
        float, typer.Option(help="seconds a gang may be passed by smaller work before it reserves nodes")
    ] = 300.0,
) -> None:
    """Run the aiplane scheduler: queues, quotas, preemption and placement for every aiplane pod."""
    import os

    from aiplane.runtime.kubernetes.scheduler import Settings, run_scheduler

    settings = Settings(
        reserve_after_s=reserve_after,
        leader_elect=leader_elect,
        lease_namespace=lease_namespace or os.environ.get("POD_NAMESPACE") or "default",
    )
    run_scheduler(str(kubeconfig) if kubeconfig else None, health_address, settings)


@app.command()
def version() -> None:
    """Print the aiplane version."""
    console.print(f"aiplane {__version__}")


def _register_dev() -> None:
    import importlib

    dev = importlib.import_module("aiplane.cli.dev")
    app.add_typer(dev.app, name="dev", help="developer tools: a local Kubernetes control plane")


if importlib.util.find_spec("aiplane.cli.dev") is not None:
    _register_dev()
kube.register(app)
batch.register(app)
app.add_typer(sim.app, name="sim")
app.command("top")(top.top)


def main() -> None:
    try:
        app()
    except AiplaneError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line unless debugging
        if os.environ.get("AIPLANE_DEBUG"):
            raise
        err_console.print(
            f"[red]internal error:[/] {exc.__class__.__name__}: {exc} (AIPLANE_DEBUG=1 shows the traceback)",
            highlight=False,
        )
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
