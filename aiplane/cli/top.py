"""``aiplane top``: the plane's models, jobs, queues and GPUs, refreshed in place.

Without ``--prometheus`` it scrapes the local plane's ``/metrics`` itself (no
Prometheus needed on one machine), rates being the increase between two scrapes; with
it, it asks Prometheus the dashboards' own queries and lists firing alerts too.
Registered by the main app as ``app.command("top")(top)``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer

from aiplane.cli.output import console
from aiplane.errors import AiplaneError
from aiplane.observe import queries as q
from aiplane.observe import top as view
from aiplane.observe.samples import Snapshot


class Unreachable(AiplaneError):
    pass


def _get(client: httpx.Client, url: str, **params: str) -> httpx.Response:
    try:
        response = client.get(url, params=params or None)
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise Unreachable(f"{url} answered {response.status_code}: {response.text[:200]}")
    return response


class PlaneSource:
    """Two scrapes of a plane's /metrics, ``interval`` apart, per frame."""

    def __init__(self, client: httpx.Client, base: str) -> None:
        self.client, self.url = client, base.rstrip("/") + "/metrics"
        self._last: tuple[float, Snapshot] | None = None

    def scrape(self) -> tuple[float, Snapshot]:
        text = _get(self.client, self.url).text
        return time.monotonic(), Snapshot.parse(text)

    def frame(self, interval: float) -> view.Frame:
        if self._last is None:
            self._last = self.scrape()
            time.sleep(interval)
        (t0, before), (t1, now) = self._last, self.scrape()
        self._last = (t1, now)
        span = max(t1 - t0, 1e-3)
        return view.frame(f"{self.url} (rates over {span:.1f}s)", now, view.rates_between(now, before, span))


class PrometheusSource:
    def __init__(self, client: httpx.Client, base: str) -> None:
        self.client, self.base = client, base.rstrip("/")

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = _get(self.client, f"{self.base}/api/v1/query", query=expr).json()
        if body.get("status") != "success":
            raise Unreachable(f"{self.base}: query {expr!r} failed: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def frame(self, interval: float) -> view.Frame:
        snap = Snapshot()
        for metric in view.GAUGES:
            for r in self.query(metric.name):
                labels = {k: v for k, v in r["metric"].items() if k != "__name__"}
                snap.samples.setdefault(metric.name, []).append((labels, float(r["value"][1])))
        results = {
            key: {r["metric"].get("model", ""): float(r["value"][1]) for r in self.query(expr)}
            for key, expr in view.RATE_QUERIES.items()
        }
        firing = self.query(f'{q.ALERTS}{{alertstate="firing"}}')
        alerts = sorted(
            {
                r["metric"].get("alertname", "?")
                + (f"({r['metric']['model']})" if r["metric"].get("model") else "")
                for r in firing
            }
        )
        return view.frame(
            f"{self.base} (rates over {view.RATE_WINDOW})", snap, view.rates_of(results), alerts
        )


def top(
    prometheus: Annotated[
        str | None, typer.Option("--prometheus", help="read from this Prometheus (http://host:9090)")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="the plane's base URL (default: this AIPLANE_HOME's plane)")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between refreshes")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
) -> None:
    """Live view of models (replicas, RPS, errors, TTFT p95, tokens/s), jobs, queues and GPUs."""
    from rich.live import Live

    from aiplane.runtime.local.paths import aiplane_home, db_path
    from aiplane.runtime.local.store import Store

    client = httpx.Client(timeout=10.0)
    source: PlaneSource | PrometheusSource
    if prometheus:
        source = PrometheusSource(client, prometheus)
    else:
        if url is None:
            running = Store(db_path(aiplane_home())).plane()
            if running is None:
                raise AiplaneError(
                    "no local plane is running here (start one with `aiplane up`, or give --url)"
                )
            url = running[1]
        source = PlaneSource(client, url)
    with client:
        if once:
            console.print(view.render(source.frame(interval)))
            return
        with Live(view.render(source.frame(interval)), console=console, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(view.render(source.frame(interval)), refresh=True)
            except KeyboardInterrupt:
                pass
