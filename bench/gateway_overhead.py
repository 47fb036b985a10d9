"""Gateway overhead: the aiplane gateway against a direct connection to the same replica.

One run, same llama.cpp/SmolLM2 replica, interleaved so machine noise hits both:
  * throughput and p50/p99 latency at concurrency 1, 4 and 16 (non-streaming chat);
  * scale-from-zero time to first token through the gateway, against the baseline of
    starting the same llama.cpp server by hand and streaming from it directly.
Prints a table and writes bench/out/gateway_overhead.png (+ .json).

    .venv/bin/python bench/gateway_overhead.py [--requests-per-level 1.0] [--cold-runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiplane.engines.llamacpp import llama_server_binary
from aiplane.engines.sources import resolve_local
from aiplane.runtime.local.process import free_port
from tests.e2e.plane import SMOLLM2, Plane, model_yaml

OUT = Path(__file__).parent / "out"
LEVELS = (1, 4, 16)
BODY = {
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 12,
    "temperature": 0,
    "seed": 1,
}


async def _load(url: str, model: str, concurrency: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                t0 = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=BODY | {"model": model}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "throughput_rps": total / elapsed,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
    }


def _has_content(event: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in event.get("choices") or [])


async def _first_token(url: str, model: str) -> float:
    t0 = time.perf_counter()
    body = BODY | {"model": model, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=120)) as r,
    ):
        async for line in r.content:
            # The first content token, not the first event (llama-server's says only the role).
            if line.startswith(b"data: {") and _has_content(json.loads(line[6:])):
                return time.perf_counter() - t0
    raise RuntimeError("no token streamed")


def _direct_cold_start(model_path: str) -> float:
    """Baseline: start the plane's engine (llama-server, as the plane launches it) by hand,
    wait for it, stream the first token."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [llama_server_binary(), "--model", model_path, "--alias", "direct", "--host", "127.0.0.1",
         "--port", str(port), "--parallel", "4", "--ctx-size", "8192", "--metrics", "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    async def wait_and_stream() -> float:
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(url + "/health") as r:  # 503 while the model loads
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        await _first_token(url, "direct")
        return time.perf_counter() - t0

    try:
        return asyncio.run(wait_and_stream())
    finally:
        proc.terminate()
        proc.wait()


def _wait_zero(plane: Plane, model: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while plane.replicas(model) and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests-per-level", type=float, default=1.0, help="scale the request counts")
    ap.add_argument("--cold-runs", type=int, default=3)
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        warm = home / "warm.yaml"
        warm.write_text(model_yaml("warm", min_replicas=1, max_replicas=1, target=1000))
        cold = home / "cold.yaml"
        cold.write_text(model_yaml("cold", min_replicas=0, max_replicas=1, scale_to_zero_after="1s"))
        plane = Plane(home, [warm, cold]).start()
        try:
            (replica,) = plane.wait_replicas("warm", 1)
            direct = f"http://127.0.0.1:{replica.port}"
            asyncio.run(_load(direct, "warm", 2, 4))  # warm-up both paths
            asyncio.run(_load(plane.url, "warm", 2, 4))
            rows = []
            for level in LEVELS:
                total = max(level, int((8 + 3 * level) * args.requests_per_level))
                d1 = asyncio.run(_load(direct, "warm", level, total))
                g1 = asyncio.run(_load(plane.url, "warm", level, total))
                g2 = asyncio.run(_load(plane.url, "warm", level, total))
                d2 = asyncio.run(_load(direct, "warm", level, total))
                d = {k: (d1[k] + d2[k]) / 2 for k in d1}
                g = {k: (g1[k] + g2[k]) / 2 for k in g1}
                rows.append({"concurrency": level, "requests": total, "direct": d, "gateway": g})

            colds = []
            for _ in range(args.cold_runs):
                _wait_zero(plane, "cold")
                colds.append(asyncio.run(_first_token(plane.url, "cold")))
        finally:
            plane.stop()
    model_path = str(resolve_local(SMOLLM2))
    baseline = [_direct_cold_start(model_path) for _ in range(args.cold_runs)]
    report(rows, colds, baseline)


def report(rows: list[dict], colds: list[float], baseline: list[float]) -> None:  # type: ignore[type-arg]
    print("\nGateway overhead (same llama.cpp replica, SmolLM2-135M Q4_1, 12 tokens, interleaved runs)")
    header = f"{'conc':>4} {'reqs':>5} | {'direct rps':>10} {'gateway rps':>11} {'ratio':>6} | "
    header += f"{'p50 direct':>10} {'p50 gw':>8} | {'p99 direct':>10} {'p99 gw':>8} | errors"
    print(header)
    print("-" * len(header))
    for r in rows:
        d, g = r["direct"], r["gateway"]
        rps_d, rps_g = d["throughput_rps"], g["throughput_rps"]
        print(
            f"{r['concurrency']:>4} {r['requests']:>5} | {rps_d:>10.2f} {rps_g:>11.2f} "
            f"{g['throughput_rps'] / d['throughput_rps']:>6.3f} | {d['p50_s'] * 1000:>8.0f}ms "
            f"{g['p50_s'] * 1000:>6.0f}ms | {d['p99_s'] * 1000:>8.0f}ms {g['p99_s'] * 1000:>6.0f}ms | "
            f"{int(d['errors'] + g['errors'])}"
        )
    cold_med, base_med = statistics.median(colds), statistics.median(baseline)
    print("\nTime to first token from zero replicas (median of runs)")
    print(f"  gateway scale-from-zero : {cold_med:.2f}s  runs={[round(c, 2) for c in colds]}")
    print(
        f"  direct: start server by hand + stream : {base_med:.2f}s  runs={[round(c, 2) for c in baseline]}"
    )
    print(f"  ratio gateway/direct    : {cold_med / base_med:.2f}")

    results = {"levels": rows, "cold_start_s": colds, "direct_cold_start_s": baseline}
    (OUT / "gateway_overhead.json").write_text(json.dumps(results, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    xs = [str(r["concurrency"]) for r in rows]
    w = 0.38
    pos = range(len(xs))
    ax1.bar([p - w / 2 for p in pos], [r["direct"]["throughput_rps"] for r in rows], w, label="direct")
    ax1.bar([p + w / 2 for p in pos], [r["gateway"]["throughput_rps"] for r in rows], w, label="gateway")
    ax1.set_xticks(list(pos), xs)
    ax1.set(title="Throughput", xlabel="concurrency", ylabel="requests/s")
    ax1.legend()
    for key, style in (("p50_s", "-o"), ("p99_s", "--s")):
        ax2.plot(xs, [r["direct"][key] * 1000 for r in rows], style, label=f"direct {key[:3]}")
        ax2.plot(xs, [r["gateway"][key] * 1000 for r in rows], style, label=f"gateway {key[:3]}")
    ax2.set(title="Latency", xlabel="concurrency", ylabel="ms")
    ax2.legend()
    ax3.bar(["gateway\nscale-from-zero", "direct\nstart by hand"], [cold_med, base_med], color=["C1", "C0"])
    ax3.axhline(3.0, color="red", linestyle=":", label="3 s target")
    ax3.set(title="Time to first token from zero", ylabel="s")
    ax3.legend()
    fig.tight_layout()
    fig.savefig(OUT / "gateway_overhead.png", dpi=110)
    print(f"\nwrote {OUT / 'gateway_overhead.png'} and {OUT / 'gateway_overhead.json'}")


if __name__ == "__main__":
    main()
