"""Engine concurrency: llama-server (``llamacpp``) against llama-cpp-python (``llamacpp-python``).

Both behind the aiplane gateway, one plane per engine, one replica each (replicas
min = max = 1, so autoscaling does not confound): llama-server with its 4 slots and
continuous batching; llama-cpp-python generating one request at a time, so the gateway
queues the rest. Same SmolLM2-135M Q4_1 model, same prompts, streaming chat,
``max_tokens`` 32, temperature 0. At concurrency 1, 4 and 8, each engine serves
max(8, 3 x concurrency) requests, twice, in the order A B B A so machine noise hits both.

Per level and engine: requests/s, output tokens/s, p50 and p99 time to first token, p50
end-to-end latency, errors. Output tokens are the usage the engine reports at the end of
the stream (``stream_options.include_usage``), else the content chunks counted. Prints a
markdown table and writes bench/out/engine_concurrency.png (+ .json).

    .venv/bin/python bench/engine_concurrency.py [--requests-per-level 1.0] [--max-tokens 32]
        [--llamacpp-args '--threads 1']
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.plane import SMOLLM2, Plane, assert_gone

OUT = Path(__file__).parent / "out"
LEVELS = (1, 4, 8)
ENGINES = ("llamacpp", "llamacpp-python")
TOPICS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe a walk through a forest in autumn.",
    "Tell me about the history of the printing press.",
)


def model_yaml(engine: str, args: list[str]) -> str:
    # coldStart also bounds how long the gateway queues a request for a busy replica: at
    # concurrency 8 on llama-cpp-python the last request waits for seven others.
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: {engine}}}
spec:
  engine: {engine}
  source: {SMOLLM2}
  replicas: {{min: 1, max: 1}}
  timeouts: {{coldStart: 600s, request: 600s}}
  args: {json.dumps(args)}
"""


@dataclass
class Sample:
    ttft_s: float | None
    e2e_s: float
    tokens: int
    error: str | None = None


@dataclass
class Level:
    engine: str
    concurrency: int
    requests: int
    elapsed_s: float
    samples: list[Sample]


@dataclass
class Row:
    engine: str
    concurrency: int
    requests: int
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    e2e_p50_s: float
    errors: int
    error_messages: list[str]
    samples: list[Sample]

    @classmethod
    def of(cls, level: Level) -> Row:
        ok = [s for s in level.samples if s.error is None]
        ttfts = sorted(s.ttft_s for s in ok if s.ttft_s is not None)
        return cls(
            engine=level.engine,
            concurrency=level.concurrency,
            requests=level.requests,
            requests_per_s=len(ok) / level.elapsed_s,
            output_tokens_per_s=sum(s.tokens for s in ok) / level.elapsed_s,
            ttft_p50_s=_pct(ttfts, 0.50),
            ttft_p99_s=_pct(ttfts, 0.99),
            e2e_p50_s=_pct(sorted(s.e2e_s for s in ok), 0.50),
            errors=len(level.samples) - len(ok),
            error_messages=sorted({s.error for s in level.samples if s.error})[:5],
            samples=level.samples,
        )


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile; with a few dozen samples p99 is the slowest one."""
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, round(q * len(xs) + 0.5) - 1))]


def body(model: str, i: int, max_tokens: int) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Request {i}. {TOPICS[i % len(TOPICS)]}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _one(session: aiohttp.ClientSession, url: str, payload: dict[str, object]) -> Sample:
    t0 = time.perf_counter()
    ttft: float | None = None
    chunks, usage = 0, None
    try:
        async with session.post(url + "/v1/chat/completions", json=payload) as r:
            if r.status != 200:
                return Sample(None, time.perf_counter() - t0, 0, f"{r.status}: {(await r.text())[:200]}")
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Sample(ttft, time.perf_counter() - t0, chunks, f"stream error: {event['error']}")
                if event.get("usage"):
                    usage = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(ttft, time.perf_counter() - t0, chunks, f"{type(exc).__name__}: {exc}")
    return Sample(ttft, time.perf_counter() - t0, usage if usage is not None else chunks)


async def run_level(url: str, engine: str, concurrency: int, total: int, max_tokens: int) -> Level:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    samples: list[Sample] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                samples.append(await _one(session, url, body(engine, i, max_tokens)))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Level(engine, concurrency, total, elapsed, samples)


def merge(a: Level, b: Level) -> Level:
    return Level(
        a.engine, a.concurrency, a.requests + b.requests, a.elapsed_s + b.elapsed_s, a.samples + b.samples
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests-per-level", type=float, default=1.0, help="scale the request counts")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--llamacpp-args", default="", help="extra llama-server arguments, e.g. '--threads 1' (default: none)"
    )
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)

    engines = list(ENGINES)
    notes: list[str] = []
    if importlib.util.find_spec("llama_cpp") is None:
        engines.remove("llamacpp-python")
        notes.append("llama_cpp (llama-cpp-python) is not importable: benched llamacpp only")
        print(notes[-1])

    planes: dict[str, Plane] = {}
    pids: list[int] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for engine in engines:
                home = Path(tmp) / engine
                home.mkdir()
                extra = args.llamacpp_args.split() if engine == "llamacpp" else []
                (home / "m.yaml").write_text(model_yaml(engine, extra))
                planes[engine] = Plane(home, [home / "m.yaml"]).start()
            for engine, plane in planes.items():
                plane.wait_replicas(engine, 1, timeout=120)
                pids += [r.pid for r in plane.replicas() if r.pid]
                asyncio.run(run_level(plane.url, engine, 2, 4, args.max_tokens))  # warm-up
            for level in LEVELS:
                total = max(8, int(3 * level * args.requests_per_level))
                order = engines + engines[::-1]  # A B B A
                runs: dict[str, list[Level]] = {e: [] for e in engines}
                for engine in order:
                    print(f"  concurrency {level}: {engine}, {total} requests", flush=True)
                    runs[engine].append(
                        asyncio.run(run_level(planes[engine].url, engine, level, total, args.max_tokens))
                    )
                rows += [Row.of(merge(*runs[engine])) for engine in engines]
        finally:
            for plane in planes.values():
                plane.stop()
            assert_gone(pids)
    report(rows, engines, args.max_tokens, notes)


def report(rows: list[Row], engines: list[str], max_tokens: int, notes: list[str]) -> None:
    print(
        f"\nEngine concurrency (SmolLM2-135M Q4_1 behind the gateway, 1 replica, streaming chat, "
        f"max_tokens {max_tokens}, temperature 0, runs A B B A pooled)\n"
    )
    print("| engine | conc | reqs | req/s | out tok/s | TTFT p50 | TTFT p99 | e2e p50 | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.engine} | {r.concurrency} | {r.requests} | {r.requests_per_s:.2f} | "
            f"{r.output_tokens_per_s:.1f} | {r.ttft_p50_s * 1000:.0f} ms | {r.ttft_p99_s * 1000:.0f} ms | "
            f"{r.e2e_p50_s * 1000:.0f} ms | {r.errors} |"
        )
    for r in rows:
        if r.error_messages:
            print(f"  {r.engine} @ {r.concurrency}: {r.error_messages}")
    if "llamacpp-python" in engines:
        print("\nRatios llamacpp / llamacpp-python:")
        by = {(r.engine, r.concurrency): r for r in rows}
        for level in LEVELS:
            a, b = by[("llamacpp", level)], by[("llamacpp-python", level)]
            print(
                f"  conc {level}: out tok/s x{a.output_tokens_per_s / b.output_tokens_per_s:.2f}, "
                f"TTFT p50 x{a.ttft_p50_s / b.ttft_p50_s:.2f}, "
                f"TTFT p99 x{a.ttft_p99_s / b.ttft_p99_s:.2f}, "
                f"e2e p50 x{a.e2e_p50_s / b.e2e_p50_s:.2f}"
            )

    (OUT / "engine_concurrency.json").write_text(
        json.dumps(
            {
                "max_tokens": max_tokens,
                "levels": list(LEVELS),
                "notes": notes,
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (
        ("output_tokens_per_s", "Output throughput", "tokens/s", 1.0),
        ("ttft_p50_s", "TTFT p50", "ms", 1000.0),
        ("ttft_p99_s", "TTFT p99", "ms", 1000.0),
        ("e2e_p50_s", "End-to-end p50", "ms", 1000.0),
    )
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 4))
    xs = [str(level) for level in LEVELS]
    w = 0.8 / len(engines)
    for ax, (key, title, unit, scale) in zip(axes, metrics, strict=True):
        for k, engine in enumerate(engines):
            values = [float(getattr(r, key)) * scale for r in rows if r.engine == engine]
            ax.bar([p + (k - (len(engines) - 1) / 2) * w for p in range(len(xs))], values, w, label=engine)
        ax.set_xticks(list(range(len(xs))), xs)
        ax.set(title=title, xlabel="concurrency", ylabel=unit)
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "engine_concurrency.png", dpi=110)
    print(f"\nwrote {OUT / 'engine_concurrency.png'} and {OUT / 'engine_concurrency.json'}")


if __name__ == "__main__":
    main()
