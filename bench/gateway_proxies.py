"""Gateway overhead against the proxies people use, all in front of one stub OpenAI server.

One run, four targets, each its own process, interleaved so machine noise hits all:

* ``direct``: the stub itself (bench/stub_openai.py, a raw asyncio server on uvloop), the floor;
* ``aiplane``: the gateway (``Gateway`` over an in-memory Discovery with one route, ``stub``,
  one upstream, no per-replica concurrency limit, one API key), served as ``aiplane up``
  serves it (``aio.run`` on uvloop, ``aio.serve_app`` with handler cancellation);
* ``nginx``: Debian's nginx as a plain reverse proxy (``worker_processes 1`` unless
  ``--nginx-workers``, keepalive to the upstream, ``proxy_buffering off``);
* ``litellm``: LiteLLM's proxy from its own venv (``--litellm-venv``; skipped, and said
  so, when it is missing), one model ``openai/stub`` with ``api_base`` the stub, offline
  (local model cost map, no telemetry, no database), master key set, 1 worker.

At each concurrency (``--levels``) and for non-streaming then streaming chat, every target
serves the same fixed number of requests (``--requests``, scaled by level), twice, in the
order A B C D then D C B A; the two runs are pooled. The load generator is an aiohttp
client on uvloop in its own process; each cell opens its connections with an unmeasured
warm-up first. Per cell it records requests/s, p50/p99 latency (streams: time to first
body byte and to the end of the stream), errors, and the CPU seconds each process used
(from /proc), so that the load generator's own use shows whether it was the bottleneck
and the proxies' CPU per request is a figure machine noise barely moves.

Prints tables and ratios, writes bench/out/gateway_proxies.png (+ .json).

    .venv/bin/python bench/gateway_proxies.py [--levels 1,8,16,32,64] [--requests 1.0]
        [--no-litellm] [--litellm-venv ~/.cache/aiplane/bench-litellm] [--nginx-workers 1]
        [--token-gap-ms 1] [--tokens 8]

LiteLLM's venv, once (never the project's): ``python3 -m venv ~/.cache/aiplane/bench-litellm
&& ~/.cache/aiplane/bench-litellm/bin/pip install 'litellm[proxy]'``; nginx: ``apt-get
install -y nginx`` (only the binary is used, with a config of this script's own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiplane.runtime.local.process import free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
HOST = "127.0.0.1"
LEVELS = (1, 8, 16, 32, 64)
TARGETS = ("direct", "aiplane", "nginx", "litellm")
API_KEY = "sk-bench-gateway-proxies-0123456789"
LITELLM_VENV = Path.home() / ".cache" / "aiplane" / "bench-litellm"
CELL_CAP_S = 3.0  # a cell stops dispatching after this long: LiteLLM's serve fewer requests
CLK_TCK = os.sysconf("SC_CLK_TCK")
# One llama.cpp replica of SmolLM2-135M on this machine, from docs/benchmarks.md (Engine
# concurrency, 2026-12-02): streaming, 32 tokens, 4 slots, concurrency 8.
ENGINE_RPS, ENGINE_TOKS = 3.61, 115.6
PROMPT = [{"role": "user", "content": "Name three colours."}]


# -- load generator (its own process) ---------------------------------------------------
def _proc_cpu(pids: list[int]) -> float:
    """CPU seconds the processes' threads have run so far (the scheduler's ns counters)."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[0])
    return total / 1e9


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / CLK_TCK, total / CLK_TCK


async def _cell(cmd: dict[str, Any]) -> dict[str, Any]:
    url, stream, conc, total = cmd["url"], cmd["stream"], cmd["concurrency"], cmd["requests"]
    body = {"model": cmd["model"], "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    if stream:
        body["stream"] = True
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    ttfb: list[float] = []
    latency: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[float, float]:
            t0 = time.perf_counter()
            first = 0.0
            async with session.post(url, data=raw, headers=headers) as r:
                if stream:
                    tail = b""
                    while chunk := await r.content.readany():
                        if not first:
                            first = time.perf_counter()
                        tail = tail[-32:] + chunk
                    ok = r.status == 200 and b"data: [DONE]" in tail
                else:
                    data = await r.read()
                    ok = r.status == 200 and b'"choices"' in data
                if not ok:
                    raise RuntimeError(f"HTTP {r.status}: {(tail if stream else data)[-200:]!r}")
            end = time.perf_counter()
            return (first or end) - t0, end - t0

        async def run(n: int, record: bool, deadline: float) -> None:
            left = n

            async def worker() -> None:
                nonlocal left
                while left > 0 and time.monotonic() < deadline:
                    left -= 1
                    try:
                        first, whole = await one()
                    except Exception as exc:
                        errors.append(f"{exc.__class__.__name__}: {exc}"[:300])
                        continue
                    if record:
                        ttfb.append(first)
                        latency.append(whole)

            await asyncio.gather(*(worker() for _ in range(conc)))

        await run(max(2 * conc, 8), False, time.monotonic() + 10.0)  # open connections
        warm_errors = len(errors)
        errors.clear()
        groups: dict[str, list[int]] = cmd["pids"]
        cpu0 = {name: _proc_cpu(pids) for name, pids in groups.items()}
        busy0, all0 = _machine_cpu()
        own0 = time.process_time()
        t0 = time.perf_counter()
        await run(total, True, time.monotonic() + cmd.get("cap_s", CELL_CAP_S))
        elapsed = time.perf_counter() - t0
        own = time.process_time() - own0
        busy1, all1 = _machine_cpu()
        cpu = {name: _proc_cpu(pids) - cpu0[name] for name, pids in groups.items()}
    cpu["loadgen"] = own
    return {
        "requests": len(latency),
        "elapsed_s": elapsed,
        "ttfb_s": ttfb,
        "latency_s": latency,
        "errors": len(errors),
        "warmup_errors": warm_errors,
        "error_sample": errors[:3],
        "cpu_s": cpu,
        "machine_busy_s": busy1 - busy0,
        "machine_cores": round((all1 - all0) / elapsed) if elapsed else 0,
    }


def loadgen_main() -> None:
    """Read one JSON command a line on stdin, answer one JSON line on stdout."""
    from aiplane import aio

    async def loop() -> None:
        reader = asyncio.get_running_loop()
        while line := await reader.run_in_executor(None, sys.stdin.readline):
            result = await _cell(json.loads(line))
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

    aio.run(loop())


# -- the aiplane gateway (its own process) -------------------------------------------------
def gateway_main(port: int, upstream: str) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from builders import InMemoryDiscovery, route

    from aiplane import aio
    from aiplane.gateway import Gateway, GatewayConfig
    from aiplane.gateway.discovery import Upstream

    discovery = InMemoryDiscovery.of(
        route("stub", request_timeout=60.0), upstreams={"stub": [Upstream("stub-0", upstream)]}
    )
    gateway = Gateway(discovery=discovery, config=GatewayConfig(api_keys=frozenset({API_KEY})))

    async def serve() -> None:
        stop = asyncio.Event()
        signals = aio.install_stop_signals(stop)
        async with aio.serve_app(gateway.app(), HOST, port, shutdown_timeout=1.0, handler_cancellation=True):
            print(f"gateway on http://{HOST}:{port}", flush=True)
            await stop.wait()
        aio.remove_stop_signals(signals)

    aio.run(serve())


# -- the servers ---------------------------------------------------------------------------
NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream stub {{
        server {host}:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""

LITELLM_CONF = """\
model_list:
  - model_name: stub
    litellm_params:
      model: openai/stub
      api_base: http://{host}:{upstream_port}/v1
      api_key: sk-stub
litellm_settings:
  telemetry: false
  set_verbose: false
general_settings:
  master_key: {key}
"""


class Servers:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp, self.args = tmp, args
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.skipped: dict[str, str] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp, start_new_session=True
        )

    def start(self) -> None:
        py = sys.executable
        stub_port = free_port()
        self._spawn(
            "stub",
            [py, str(ROOT / "bench" / "stub_openai.py"), "--port", str(stub_port), "--tokens",
             str(self.args.tokens), "--token-gap-ms", str(self.args.token_gap_ms)],
        )  # fmt: skip
        self.upstream = f"http://{HOST}:{stub_port}"
        self.urls["direct"] = self.upstream
        port = free_port()
        self._spawn(
            "aiplane", [py, str(Path(__file__).resolve()), "--serve-gateway", str(port), self.upstream]
        )
        self.urls["aiplane"] = f"http://{HOST}:{port}"
        self._start_nginx(stub_port)
        if not self.args.no_litellm:
            self._start_litellm(stub_port)
        else:
            self.skipped["litellm"] = "--no-litellm"

    def _start_nginx(self, stub_port: int) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            self.skipped["nginx"] = "no nginx binary (apt-get install -y nginx)"
            return
        port = free_port()
        conf = self.tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                workers=self.args.nginx_workers, tmp=self.tmp, host=HOST, upstream_port=stub_port, port=port
            )
        )
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        self.notes["nginx"] = f"{version}, worker_processes {self.args.nginx_workers}"
        self._spawn(
            "nginx", [nginx, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "nginx-error.log")]
        )
        self.urls["nginx"] = f"http://{HOST}:{port}"

    def _start_litellm(self, stub_port: int) -> None:
        venv = Path(self.args.litellm_venv).expanduser()
        binary = venv / "bin" / "litellm"
        if not binary.exists():
            self.skipped["litellm"] = f"no {binary} (see the docstring to install it)"
            return
        port = free_port()
        conf = self.tmp / "litellm.yaml"
        conf.write_text(LITELLM_CONF.format(host=HOST, upstream_port=stub_port, key=API_KEY))
        version = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.notes["litellm"] = f"litellm {version} proxy, --num_workers 1"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "LITELLM_"))}
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the remote model cost map
            LITELLM_TELEMETRY="False",
            LITELLM_LOG="ERROR",
            LITELLM_MODE="PRODUCTION",  # no .env loading
            NO_DOCS="True",
            NO_PROXY="*",
        )
        argv = [str(binary), "--config", str(conf), "--host", HOST, "--port", str(port), "--num_workers", "1"]
        self._spawn("litellm", argv, env)
        self.urls["litellm"] = f"http://{HOST}:{port}"

    async def wait_ready(self, timeout: float = 90.0) -> None:
        checks = {
            "direct": "/health",
            "aiplane": "/health",
            "nginx": "/health",
            "litellm": "/health/liveliness",
        }
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            for name, url in list(self.urls.items()):
                while True:
                    proc = self.procs[name if name != "direct" else "stub"]
                    if proc.poll() is not None:
                        self._give_up(name, f"exited with {proc.returncode}")
                        break
                    try:
                        async with session.get(
                            url + checks[name], timeout=aiohttp.ClientTimeout(total=2)
                        ) as r:
                            if r.status == 200:
                                break
                    except (aiohttp.ClientError, TimeoutError, OSError):
                        pass
                    if time.monotonic() > deadline:
                        self._give_up(name, f"not ready within {timeout:g}s")
                        break
                    await asyncio.sleep(0.2)

    def _give_up(self, name: str, why: str) -> None:
        log = (self.tmp / f"{name if name != 'direct' else 'stub'}.log").read_text(errors="replace")
        if name in ("direct", "aiplane"):
            raise SystemExit(f"{name} {why}:\n{log[-3000:]}")
        self.skipped[name] = f"{why}; log tail: {log[-500:]!r}"
        self.urls.pop(name, None)

    def pids(self, name: str) -> list[int]:
        """The process and its descendants (nginx's workers, LiteLLM's uvicorn)."""
        root = self.procs[name if name != "direct" else "stub"].pid
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # its own session: its workers too
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class LoadGen:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def cell(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the load generator died")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


# -- the run ---------------------------------------------------------------------------------
def _requests_at(level: int, stream: bool, scale: float) -> int:
    """Non-streaming answers take well under 1 ms from the stub, streams about 10 ms (the
    token gaps): about a second a cell for aiplane, at most CELL_CAP_S for any."""
    if stream:
        return max(level * 4, int(min(2000, max(150, 75 * level)) * scale))
    return max(level * 4, int(2000 * scale))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _pool(runs: list[dict[str, Any]], proxy_group: str) -> dict[str, Any]:
    n = sum(r["requests"] for r in runs)
    elapsed = sum(r["elapsed_s"] for r in runs)
    latency = [x for r in runs for x in r["latency_s"]]
    ttfb = [x for r in runs for x in r["ttfb_s"]]
    cpu = {k: sum(r["cpu_s"][k] for r in runs) for k in runs[0]["cpu_s"]}
    ours = sum(cpu.values())
    busy = sum(r["machine_busy_s"] for r in runs)
    return {
        "requests": n,
        "elapsed_s": elapsed,
        "rps": n / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * statistics.median(latency) if latency else float("nan"),
        "p99_ms": 1000 * _pct(latency, 0.99),
        "ttfb_p50_ms": 1000 * statistics.median(ttfb) if ttfb else float("nan"),
        "ttfb_p99_ms": 1000 * _pct(ttfb, 0.99),
        "errors": sum(r["errors"] for r in runs),
        "warmup_errors": sum(r["warmup_errors"] for r in runs),
        "error_sample": [e for r in runs for e in r["error_sample"]][:3],
        "proxy_cpu_us_per_req": 1e6 * cpu.get(proxy_group, 0.0) / n if n else float("nan"),
        "stub_cpu_us_per_req": 1e6 * cpu["stub"] / n if n else float("nan"),
        "loadgen_cpu_us_per_req": 1e6 * cpu["loadgen"] / n if n else float("nan"),
        "loadgen_util": cpu["loadgen"] / elapsed if elapsed else 0.0,
        "proxy_util": cpu.get(proxy_group, 0.0) / elapsed if elapsed else 0.0,
        "stub_util": cpu["stub"] / elapsed if elapsed else 0.0,
        "others_util": max(0.0, busy - ours) / elapsed if elapsed else 0.0,
        "capped": any(r["requests"] < r.get("asked", r["requests"]) for r in runs),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(x) for x in args.levels.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gateway-proxies-") as tmp:
        servers = Servers(Path(tmp), args)
        loadgen: LoadGen | None = None
        try:
            servers.start()
            asyncio.run(servers.wait_ready())
            targets = [t for t in TARGETS if t in servers.urls]
            pids = {t: servers.pids(t) for t in targets}
            print(f"targets: {', '.join(targets)}; skipped: {servers.skipped or 'none'}", flush=True)
            for name, note in servers.notes.items():
                print(f"  {name}: {note}", flush=True)
            loadgen = LoadGen()
            for t in targets:  # first requests: imports, caches, connection pools
                for stream in (False, True):
                    loadgen.cell(url=servers.urls[t] + "/v1/chat/completions", model="stub", stream=stream,
                                 concurrency=4, requests=50, pids={})  # fmt: skip
            rows: list[dict[str, Any]] = []
            for level in levels:
                for stream in (False, True):
                    total = _requests_at(level, stream, args.requests)
                    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
                    for order in (targets, targets[::-1]):
                        for t in order:
                            groups = {"stub": pids["direct"]}
                            if t != "direct":
                                groups[t] = pids[t]
                            result = loadgen.cell(
                                url=servers.urls[t] + "/v1/chat/completions", model="stub", stream=stream,
                                concurrency=level, requests=total, pids=groups,
                            )  # fmt: skip
                            result["asked"] = total
                            runs[t].append(result)
                    row = {
                        "concurrency": level,
                        "stream": stream,
                        "requests": total,
                        "targets": {t: _pool(runs[t], t if t != "direct" else "stub") for t in targets},
                    }
                    rows.append(row)
                    _print_row(row)
        finally:
            if loadgen is not None:
                loadgen.close()
            servers.stop()
    return {
        "started": started,
        "aiplane": _revision(),
        "load_average_before": load0,
        "load_average_after": os.getloadavg(),
        "cores": os.cpu_count(),
        "stub": {"tokens": args.tokens, "token_gap_ms": args.token_gap_ms},
        "notes": servers.notes,
        "skipped": servers.skipped,
        "rows": rows,
    }


def _revision() -> dict[str, Any]:
    """The commit measured, and the gateway's files that differ from it (a shared work tree)."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True).stdout

    dirty = git("status", "--short", "--", "aiplane/gateway", "aiplane/policies/routing").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": dirty}


def _print_row(row: dict[str, Any]) -> None:
    kind = "stream" if row["stream"] else "chat"
    direct = row["targets"]["direct"]
    parts = []
    for t, r in row["targets"].items():
        extra = f" ttfb {r['ttfb_p50_ms']:.2f}" if row["stream"] else ""
        parts.append(f"{t} {r['rps']:.0f}rps p50 {r['p50_ms']:.2f}{extra} lg {r['loadgen_util']:.2f}")
    print(
        f"c={row['concurrency']:<3} {kind:<6} direct {direct['rps']:.0f} | " + " | ".join(parts[1:]),
        flush=True,
    )


# -- the report --------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> None:
    rows = results["rows"]
    proxies = [t for t in TARGETS if t != "direct" and t in rows[0]["targets"]]
    print(
        f"\nGateway overhead against proxies, stub OpenAI upstream ({results['stub']['tokens']} tokens, "
        f"{results['stub']['token_gap_ms']:g} ms apart when streamed); run of {results['started']}, "
        f"load average before {results['load_average_before'][0]:.2f}; aiplane {results['aiplane']['commit']}"
        + (" + uncommitted gateway/routing changes" if results["aiplane"]["uncommitted"] else "")
    )
    for name, note in results["notes"].items():
        print(f"  {name}: {note}")
    for name, why in results["skipped"].items():
        print(f"  skipped {name}: {why}")
    for stream in (False, True):
        title = (
            "streaming chat (TTFB: first body byte; full: end of stream)" if stream else "non-streaming chat"
        )
        print(f"\n{title}: requests/s, added latency vs direct (p50 / p99, ms), proxy CPU us/request")
        head = f"{'conc':>4} {'reqs':>5} | {'target':<8} {'req/s':>7} {'x direct':>8} | "
        head += f"{'+p50':>7} {'+p99':>7} | "
        if stream:
            head += f"{'+ttfb50':>7} {'+ttfb99':>7} | "
        head += f"{'cpu us':>7} | {'proxy':>5} {'lg':>5} {'others':>6} | err"
        print(head)
        print("-" * len(head))
        for row in (r for r in rows if r["stream"] == stream):
            d = row["targets"]["direct"]
            for t, r in row["targets"].items():
                line = f"{row['concurrency']:>4} {row['requests']:>5} | {t:<8} {r['rps']:>7.0f} "
                line += f"{r['rps'] / d['rps']:>8.2f} | "
                if t == "direct":
                    line += f"{r['p50_ms']:>6.2f}= {r['p99_ms']:>6.2f}= | "
                    if stream:
                        line += f"{r['ttfb_p50_ms']:>6.2f}= {r['ttfb_p99_ms']:>6.2f}= | "
                else:
                    line += f"{r['p50_ms'] - d['p50_ms']:>+7.2f} {r['p99_ms'] - d['p99_ms']:>+7.2f} | "
                    if stream:
                        line += f"{r['ttfb_p50_ms'] - d['ttfb_p50_ms']:>+7.2f} "
                        line += f"{r['ttfb_p99_ms'] - d['ttfb_p99_ms']:>+7.2f} | "
                cpu = r["stub_cpu_us_per_req"] if t == "direct" else r["proxy_cpu_us_per_req"]
                util = r["stub_util"] if t == "direct" else r["proxy_util"]
                line += f"{cpu:>7.0f} | {util:>5.2f} {r['loadgen_util']:>5.2f} {r['others_util']:>6.2f} | "
                line += f"{r['errors']}"
                if r["capped"]:
                    line += f" (capped at {CELL_CAP_S:g}s: {r['requests']} of {2 * row['requests']} done)"
                print(line)
    print("\n(direct rows: '=' marks absolute latency, 'cpu us' and 'proxy' are the stub's;")
    print(" 'proxy', 'lg', 'others': cores busy with the proxy, the load generator, the rest of the machine)")

    ratios: dict[str, Any] = {}
    if "nginx" in proxies or "litellm" in proxies:
        print("\nRatios aiplane / other: requests/s, proxy CPU per request; added p50 latency of each (ms)")
    for other in (p for p in proxies if p != "aiplane"):
        for stream in (False, True):
            kind = "stream" if stream else "chat"
            sel = [r for r in rows if r["stream"] == stream]
            for row in sel:
                a, o, d = row["targets"]["aiplane"], row["targets"][other], row["targets"]["direct"]
                ratios[f"{other}/{kind}/{row['concurrency']}"] = {
                    "rps": a["rps"] / o["rps"],
                    "cpu_per_req": a["proxy_cpu_us_per_req"] / max(o["proxy_cpu_us_per_req"], 1e-9),
                    "added_p50_ms": [a["p50_ms"] - d["p50_ms"], o["p50_ms"] - d["p50_ms"]],
                }
            mine = [v for k, v in ratios.items() if k.startswith(f"{other}/{kind}/")]
            gmean = {key: statistics.geometric_mean([v[key] for v in mine]) for key in ("rps", "cpu_per_req")}
            ratios[f"{other}/{kind}/geomean"] = gmean
            print(
                f"  aiplane/{other:<7} {kind:<6} req/s "
                + " ".join(f"x{v['rps']:.2f}" for v in mine)
                + f" (geomean x{gmean['rps']:.2f}); cpu/req "
                + " ".join(f"x{v['cpu_per_req']:.2f}" for v in mine)
                + f" (geomean x{gmean['cpu_per_req']:.2f})"
            )
            print(
                f"  {'':<15} {'':<6} added p50 ms aiplane/{other}: "
                + " ".join(f"{v['added_p50_ms'][0]:+.2f}/{v['added_p50_ms'][1]:+.2f}" for v in mine)
            )
    if rows:
        print(f"  (levels {', '.join(str(r['concurrency']) for r in rows if not r['stream'])})")
    results["ratios"] = ratios
    engine = [r for r in rows if r["stream"] and 8 <= r["concurrency"] <= 16]
    if engine:
        best = max(r["targets"]["aiplane"]["rps"] for r in engine)
        events = results["stub"]["tokens"] + 3  # role, tokens, finish, [DONE]
        print(
            f"\nOne llama.cpp SmolLM2 replica (docs/benchmarks.md): {ENGINE_RPS} streams/s, "
            f"{ENGINE_TOKS} tokens/s at concurrency 8. aiplane here, concurrency 8-16: "
            f"{best:.0f} streams/s (x{best / ENGINE_RPS:.0f}), {best * events:.0f} events/s relayed "
            f"(x{best * events / ENGINE_TOKS:.0f} the engine's tokens/s)"
        )
        results["engine_headroom"] = {"streams": best / ENGINE_RPS, "events": best * events / ENGINE_TOKS}
    OUT.mkdir(exist_ok=True)
    (OUT / "gateway_proxies.json").write_text(json.dumps(results, indent=2))
    _plot(results, proxies)
    print(f"\nwrote {OUT / 'gateway_proxies.png'} and {OUT / 'gateway_proxies.json'}")


def _plot(results: dict[str, Any], proxies: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    targets = ["direct", *proxies]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for i, stream in enumerate((False, True)):
        sel = [r for r in rows if r["stream"] == stream]
        xs = [str(r["concurrency"]) for r in sel]
        kind = "streaming" if stream else "non-streaming"
        ax = axes[i][0]
        w = 0.8 / len(targets)
        for j, t in enumerate(targets):
            pos = [k + (j - (len(targets) - 1) / 2) * w for k in range(len(xs))]
            ax.bar(pos, [r["targets"][t]["rps"] for r in sel], w, label=t)
        ax.set_xticks(range(len(xs)), xs)
        ax.set(title=f"Throughput, {kind}", xlabel="concurrency", ylabel="requests/s", yscale="log")
        ax.legend(fontsize=8)
        ax = axes[i][1]
        for j, t in enumerate(proxies):
            d = [r["targets"]["direct"] for r in sel]
            p = [r["targets"][t] for r in sel]
            color = f"C{j + 1}"
            added = [b["p50_ms"] - a["p50_ms"] for a, b in zip(d, p, strict=True)]
            ax.plot(xs, added, "-o", color=color, label=f"{t} p50" + (" full" if stream else ""))
            if stream:
                added = [b["ttfb_p50_ms"] - a["ttfb_p50_ms"] for a, b in zip(d, p, strict=True)]
                ax.plot(xs, added, ":^", color=color, label=f"{t} p50 TTFB")
            else:
                added = [b["p99_ms"] - a["p99_ms"] for a, b in zip(d, p, strict=True)]
                ax.plot(xs, added, "--s", color=color, label=f"{t} p99")
        ax.set(title=f"Added latency vs direct, {kind}", xlabel="concurrency", ylabel="ms", yscale="symlog")
        ax.legend(fontsize=8)
        ax = axes[i][2]
        w = 0.8 / len(proxies)
        for j, t in enumerate(proxies):
            pos = [k + (j - (len(proxies) - 1) / 2) * w for k in range(len(xs))]
            ax.bar(pos, [r["targets"][t]["proxy_cpu_us_per_req"] for r in sel], w, color=f"C{j + 1}", label=t)
        ax.set_xticks(range(len(xs)), xs)
        ax.set(title=f"Proxy CPU per request, {kind}", xlabel="concurrency", ylabel="CPU us", yscale="log")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Gateway vs proxies in front of a stub OpenAI server ({results['started']}, 2 shared cores)"
    )
    fig.tight_layout()
    fig.savefig(OUT / "gateway_proxies.png", dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        loadgen_main()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-gateway":
        gateway_main(int(sys.argv[2]), sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--levels", default=",".join(map(str, LEVELS)), help="concurrency levels, comma-separated"
    )
    ap.add_argument("--requests", type=float, default=1.0, help="scale the requests per level")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--litellm-venv", default=str(LITELLM_VENV))
    ap.add_argument("--nginx-workers", default="1", help="nginx worker_processes (a number or auto)")
    ap.add_argument("--tokens", type=int, default=8, help="content chunks in the stub's answers")
    ap.add_argument(
        "--token-gap-ms", type=float, default=1.0, help="the stub's pause between streamed tokens"
    )
    args = ap.parse_args()
    report(run(args))


if __name__ == "__main__":
    main()
