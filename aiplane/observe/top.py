"""``aiplane top``'s picture of a plane: models, jobs, queues and GPUs, one row each.

Pure: samples in, rows and a rich renderable out. The same rows come from two sources
(:mod:`aiplane.cli.top` does the reading): two scrapes of the local plane's ``/metrics``
``span`` seconds apart, the rates being the counters' increases over the span; or a
Prometheus, the rates being :mod:`aiplane.observe.queries`' (the dashboards' and the
alerts' expressions) over the last minute. Gauges (replicas, jobs, queues, GPUs) are
read as the same series either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from aiplane.observe import catalogue as c
from aiplane.observe import queries as q
from aiplane.observe.samples import Snapshot, bucket_increase, histogram_quantile, increase

RATE_WINDOW = "1m"
# The series ``aiplane top`` reads as they are (a Prometheus source asks for each).
GAUGES = (
    c.AUTOSCALER_READY, c.AUTOSCALER_DESIRED, c.AUTOSCALER_MIN, c.AUTOSCALER_MAX,
    c.GATEWAY_IN_FLIGHT, c.GATEWAY_QUEUED, c.GATEWAY_HELD, c.MODEL_GPUS, c.MODEL_REPLICA_INFO,
    c.JOB_PHASE, c.JOB_PENDING, c.JOB_GPUS, c.JOB_STEP, c.JOB_TOTAL_STEPS, c.JOB_SHARDS, c.JOB_ROWS,
    c.QUEUE_NOMINAL, c.QUEUE_USED, c.QUEUE_BORROWED, c.QUEUE_PENDING, c.CLUSTER_GPUS,
    c.GPU_UTIL, c.GPU_FB_USED, c.GPU_FB_FREE, c.GPU_EXPORTER_DEVICES,
)  # fmt: skip


@dataclass(frozen=True)
class Rates:
    """A model's traffic over the span: None where there was nothing to measure."""

    rps: float = 0.0
    error_ratio: float | None = None
    ttft_p95: float | None = None
    completion_tps: float = 0.0


@dataclass(frozen=True)
class ModelTop:
    model: str
    ready: float
    desired: float
    in_flight: float
    waiting: float  # queued for a slot plus held through a cold start
    gpus: float
    gpu_util: float | None
    rates: Rates


@dataclass(frozen=True)
class JobTop:
    kind: str
    name: str
    queue: str
    phase: str
    progress: str
    gpus: float
    pending_s: float | None


@dataclass(frozen=True)
class QueueTop:
    queue: str
    used: float
    nominal: float
    borrowed: float
    pending: float


@dataclass(frozen=True)
class GpuTop:
    host: str
    gpu: str
    model_name: str
    util: float
    fb_used: float
    fb_total: float
    holder: str  # namespace/pod, "" when free


@dataclass(frozen=True)
class Frame:
    source: str
    models: list[ModelTop] = field(default_factory=list)
    jobs: list[JobTop] = field(default_factory=list)
    queues: list[QueueTop] = field(default_factory=list)
    gpus: list[GpuTop] = field(default_factory=list)
    gpu_note: str = ""  # why there are no GPU rows
    alerts: list[str] = field(default_factory=list)


def rates_between(now: Snapshot, before: Snapshot, span: float) -> dict[str, Rates]:
    """Each model's rates from two scrapes ``span`` seconds apart (Prometheus's ``rate``,
    without extrapolation)."""
    name = c.GATEWAY_REQUESTS.name
    total_now, total_before = now.sum_by(name, "model"), before.sum_by(name, "model")
    errors_now, errors_before = _errors(now), _errors(before)
    tokens = c.GATEWAY_TOKENS.name
    completion_now = now.sum_by(tokens, "model", {"kind": "completion"})
    completion_before = before.sum_by(tokens, "model", {"kind": "completion"})
    ttft_now = now.buckets_by(c.GATEWAY_TTFT.name, "model")
    ttft_before = before.buckets_by(c.GATEWAY_TTFT.name, "model")
    out = {}
    for model in set(total_now) | set(ttft_now):
        requests = increase(total_now.get(model, 0.0), total_before.get(model))
        errors = increase(errors_now.get(model, 0.0), errors_before.get(model))
        completion = increase(completion_now.get(model, 0.0), completion_before.get(model))
        ttft = bucket_increase(ttft_now.get(model, {}), ttft_before.get(model))
        out[model] = Rates(
            rps=requests / span,
            error_ratio=errors / requests if requests > 0 else None,
            ttft_p95=histogram_quantile(0.95, ttft),
            completion_tps=completion / span,
        )
    return out


def _errors(snap: Snapshot) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in snap.of(c.GATEWAY_REQUESTS.name):
        if labels.get("status", "").startswith("5"):
            model = labels.get("model", "")
            out[model] = out.get(model, 0.0) + v
    return out


# PromQL for the same rates, by model: what a Prometheus source asks.
RATE_QUERIES = {
    "rps": q.request_rate(RATE_WINDOW),
    "error_ratio": q.error_ratio(RATE_WINDOW),
    "ttft_p95": q.ttft_p95(RATE_WINDOW),
    "completion_tps": q.token_rate("completion", RATE_WINDOW),
}


def rates_of(results: dict[str, dict[str, float]]) -> dict[str, Rates]:
    """Rates from :data:`RATE_QUERIES`' results (query key -> model -> value); NaN, a
    ratio or quantile of nothing, is None."""
    models = {m for per in results.values() for m in per}
    out = {}
    for model in models:

        def get(key: str, model: str = model) -> float | None:
            v = results.get(key, {}).get(model)
            return None if v is None or v != v else v

        out[model] = Rates(
            rps=get("rps") or 0.0,
            error_ratio=get("error_ratio"),
            ttft_p95=get("ttft_p95"),
            completion_tps=get("completion_tps") or 0.0,
        )
    return out


def _max_by(snap: Snapshot, metric: c.Metric, label: str = "model") -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in snap.of(metric.name):
        key = labels.get(label, "")
        out[key] = max(out.get(key, v), v)
    return out


def models(snap: Snapshot, rates: dict[str, Rates]) -> list[ModelTop]:
    ready, desired = _max_by(snap, c.AUTOSCALER_READY), _max_by(snap, c.AUTOSCALER_DESIRED)
    gpus = _max_by(snap, c.MODEL_GPUS)
    in_flight = snap.sum_by(c.GATEWAY_IN_FLIGHT.name, "model")
    queued = snap.sum_by(c.GATEWAY_QUEUED.name, "model")
    held = snap.sum_by(c.GATEWAY_HELD.name, "model")
    util = gpu_util_by_model(snap)
    names = sorted((set(ready) | set(desired) | set(rates)) - {""})
    return [
        ModelTop(
            m,
            ready.get(m, 0.0),
            desired.get(m, 0.0),
            in_flight.get(m, 0.0),
            queued.get(m, 0.0) + held.get(m, 0.0),
            gpus.get(m, 0.0),
            util.get(m),
            rates.get(m, Rates()),
        )
        for m in names
    ]


def gpu_util_by_model(snap: Snapshot) -> dict[str, float]:
    """:func:`aiplane.observe.queries.gpu_util_by_model` on one scrape: GPU series joined
    on (namespace, pod) to the replica info, averaged by model."""
    owner = {
        (labels.get("namespace", ""), labels.get("pod", "")): labels.get("model", "")
        for labels, v in snap.of(c.MODEL_REPLICA_INFO.name)
        if v
    }
    per: dict[str, list[float]] = {}
    for labels, v in snap.of(c.GPU_UTIL.name):
        model = owner.get((labels.get("namespace", ""), labels.get("pod", "")))
        if model:
            per.setdefault(model, []).append(v)
    return {m: sum(vs) / len(vs) for m, vs in per.items()}


def jobs(snap: Snapshot) -> list[JobTop]:
    phase: dict[tuple[str, str], tuple[str, str]] = {}
    for labels, v in snap.of(c.JOB_PHASE.name):
        if v:
            phase[(labels.get("kind", ""), labels.get("job_name", ""))] = (
                labels.get("queue", ""),
                labels.get("phase", ""),
            )
    gpus = {(ls.get("kind", ""), ls.get("job_name", "")): v for ls, v in snap.of(c.JOB_GPUS.name)}
    pending = {(ls.get("kind", ""), ls.get("job_name", "")): v for ls, v in snap.of(c.JOB_PENDING.name)}
    step = _max_by(snap, c.JOB_STEP, "job_name")
    total = _max_by(snap, c.JOB_TOTAL_STEPS, "job_name")
    rows = _max_by(snap, c.JOB_ROWS, "job_name")
    shards: dict[str, dict[str, float]] = {}
    for labels, v in snap.of(c.JOB_SHARDS.name):
        shards.setdefault(labels.get("job_name", ""), {})[labels.get("state", "")] = v
    out = []
    for (kind, name), (queue, ph) in sorted(phase.items()):
        out.append(
            JobTop(
                kind,
                name,
                queue,
                ph,
                _progress(name, step, total, rows, shards),
                gpus.get((kind, name), 0.0),
                pending.get((kind, name)),
            )
        )
    return out


def _progress(
    name: str,
    step: dict[str, float],
    total: dict[str, float],
    rows: dict[str, float],
    shards: dict[str, dict[str, float]],
) -> str:
    if name in shards:
        done = shards[name].get("completed", 0.0)
        all_ = sum(shards[name].values())
        text = f"{done:.0f}/{all_:.0f} shards"
        return text + (f", {rows[name]:.0f} rows" if name in rows else "")
    if name in step:
        return f"step {step[name]:.0f}" + (f"/{total[name]:.0f}" if name in total else "")
    return ""


def queues(snap: Snapshot) -> list[QueueTop]:
    used = snap.sum_by(c.QUEUE_USED.name, "queue")
    nominal = snap.sum_by(c.QUEUE_NOMINAL.name, "queue")
    borrowed = snap.sum_by(c.QUEUE_BORROWED.name, "queue")
    pending = snap.sum_by(c.QUEUE_PENDING.name, "queue")
    names = sorted((set(used) | set(nominal) | set(pending)) - {""})
    return [
        QueueTop(n, used.get(n, 0.0), nominal.get(n, 0.0), borrowed.get(n, 0.0), pending.get(n, 0.0))
        for n in names
    ]


def gpus(snap: Snapshot) -> list[GpuTop]:
    def key(labels: dict[str, str]) -> tuple[str, str, str]:
        return labels.get("Hostname", ""), labels.get("gpu", ""), labels.get("pod", "")

    used = {key(ls): v for ls, v in snap.of(c.GPU_FB_USED.name)}
    free = {key(ls): v for ls, v in snap.of(c.GPU_FB_FREE.name)}
    out = []
    for labels, util in snap.of(c.GPU_UTIL.name):
        k = key(labels)
        pod = labels.get("pod", "")
        holder = f"{labels.get('namespace', '')}/{pod}" if pod else ""
        fb_used = used.get(k, 0.0)
        out.append(
            GpuTop(k[0], k[1], labels.get("modelName", ""), util, fb_used, fb_used + free.get(k, 0.0), holder)
        )
    return sorted(out, key=lambda g: (g.host, int(g.gpu) if g.gpu.isdigit() else 0, g.gpu, g.holder))


def gpu_note(snap: Snapshot) -> str:
    for labels, v in snap.of(c.GPU_EXPORTER_DEVICES.name):
        if labels.get("source") == "none" or not v:
            return f"no GPU metrics: {labels.get('reason') or 'no devices'}"
    return ""


def frame(source: str, snap: Snapshot, rates: dict[str, Rates], alerts: list[str] | None = None) -> Frame:
    rows = gpus(snap)
    return Frame(
        source, models(snap, rates), jobs(snap), queues(snap), rows,
        "" if rows else gpu_note(snap) or "no GPU metrics", alerts or [],
    )  # fmt: skip


# -- rendering ------------------------------------------------------------------------


def _num(v: float | None, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render(f: Frame) -> Group:
    parts: list[Table | Text] = [Text(f"aiplane top: {f.source}", style="bold")]
    t = Table(
        "MODEL", "READY", "RPS", "ERRORS", "TTFT p95", "TOK/S", "IN FLIGHT", "WAITING", "GPUS", "GPU UTIL"
    )
    for m in f.models:
        r = m.rates
        t.add_row(
            m.model, f"{m.ready:.0f}/{m.desired:.0f}", _num(r.rps, "{:.2f}"), _pct(r.error_ratio),
            _num(r.ttft_p95, "{:.3f}s"), _num(r.completion_tps), f"{m.in_flight:.0f}", f"{m.waiting:.0f}",
            _num(m.gpus, "{:g}"), _num(m.gpu_util, "{:.0f}%"),
        )  # fmt: skip
    parts.append(t if f.models else Text("no models"))
    if f.jobs:
        t = Table("JOB", "QUEUE", "PHASE", "PROGRESS", "GPUS", "PENDING")
        for j in f.jobs:
            pending = "-" if j.pending_s is None or j.phase != "Pending" else f"{j.pending_s:.0f}s"
            t.add_row(f"{j.kind}/{j.name}", j.queue, j.phase, j.progress, f"{j.gpus:g}", pending)
        parts.append(t)
    if f.queues:
        t = Table("QUEUE", "GPUS USED/QUOTA", "BORROWED", "PENDING")
        for qu in f.queues:
            t.add_row(qu.queue, f"{qu.used:g}/{qu.nominal:g}", f"{qu.borrowed:g}", f"{qu.pending:.0f}")
        parts.append(t)
    if f.gpus:
        t = Table("HOST", "GPU", "MODEL", "UTIL", "MEMORY", "HELD BY")
        for g in f.gpus:
            memory = f"{g.fb_used:.0f}/{g.fb_total:.0f} MiB"
            t.add_row(g.host, g.gpu, g.model_name, f"{g.util:.0f}%", memory, g.holder or "-")
        parts.append(t)
    else:
        parts.append(Text(f.gpu_note, style="dim"))
    if f.alerts:
        parts.append(Text("firing: " + ", ".join(f.alerts), style="bold red"))
    return Group(*parts)
