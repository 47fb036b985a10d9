"""A real Prometheus (Debian's package, put in the venv by ``make install``) on loopback,
scraping the local plane: ``aiplane dev prometheus``, and the tests' Prometheus.

The plane's one ``/metrics`` (its gateway's) carries every aiplane series and, under
DCGM's names, its GPUs; the alert and recording rules are generated from
:mod:`aiplane.observe.rules` into the state directory, so alerts evaluate here exactly
as the committed ``deploy/prometheus`` rules do on a cluster.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from aiplane import procs
from aiplane.errors import AiplaneError

PLANE_JOB = "aiplane-plane"
READY_S = 30.0


class PrometheusMissing(AiplaneError):
    pass


def binary(name: str = "prometheus") -> Path:
    """Debian's binary beside this interpreter (make install links it), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return here
    found = shutil.which(name)
    if found is None:
        raise PrometheusMissing(f"{name} not found beside {sys.executable} nor on PATH: run `make install`")
    return Path(found)


def config(plane_urls: list[str], interval_s: float = 5.0, rules: list[Path] | None = None) -> dict[str, Any]:
    """Scrape each plane's ``/metrics``; ``instance`` is the plane's host:port."""
    targets = [urlsplit(u).netloc or u for u in plane_urls]
    seconds = f"{interval_s:g}s"
    cfg: dict[str, Any] = {
        "global": {
            "scrape_interval": seconds,
            "scrape_timeout": f"{min(interval_s, 10.0):g}s",
            "evaluation_interval": seconds,
        },
        "scrape_configs": [
            {"job_name": PLANE_JOB, "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}
        ],
    }
    if rules:
        cfg["rule_files"] = [str(p) for p in rules]
    return cfg


@dataclass
class RunningPrometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start(
    directory: Path, cfg: dict[str, Any], port: int, *, die_with_parent: bool = False
) -> RunningPrometheus:
    """Start Prometheus on 127.0.0.1:``port`` with its TSDB under ``directory``; returns
    once it answers ``/-/ready`` (or raises with the end of its log)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    log = directory / "prometheus.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                str(binary()),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                "--web.enable-lifecycle",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=procs.die_with_parent if die_with_parent else None,
        )
    running = RunningPrometheus(url, proc, log)
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AiplaneError(f"prometheus exited {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200:
                return running
        time.sleep(0.2)
    running.stop()
    raise AiplaneError(f"prometheus did not become ready within {READY_S:g}s; see {log}")


@contextlib.contextmanager
def running(directory: Path, cfg: dict[str, Any], port: int) -> Iterator[RunningPrometheus]:
    prom = start(directory, cfg, port, die_with_parent=True)
    try:
        yield prom
    finally:
        prom.stop()
