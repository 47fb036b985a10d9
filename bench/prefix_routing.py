"""Prefix-aware routing on real replicas: ``aiplane`` against ``least-load`` and KubeAI's ``chwbl``.

One real plane (``aiplane up``, its own AIPLANE_HOME) per routing strategy, all started
at once and otherwise identical: ``llamacpp`` (llama-server) serving SmolLM2-135M Q4_1,
``replicas: {min: N, max: N}``, ``contextLength`` 4096 per slot (4 slots, so
``--ctx-size`` 16384), ``routing: {strategy: S, sessionHeader: null}``. Each replica runs
with ``--threads cpu_count // N`` (1 here): N llama-servers at the default (every core)
oversubscribe the CPU, and on this busy 2-core machine a replica at ``--threads 2``
decoded 35-70x slower than at 1 (0.3-0.6 against 21 tokens/s: its threads spin at every
barrier while another process holds a core).

Workload, identical for every strategy within a pass: K system prompts of about
``--prompt-tokens`` tokens each (deterministic varied text, distinct from its first
characters, which is what chwbl hashes), Zipf popularity (weight 1/(k+1)), each request one
of them plus a short distinct user question; ``max_tokens`` 8, temperature 0, streamed
through the gateway with the official ``openai`` client at a fixed concurrency (closed
loop). TTFT is to the first content token. Each pass uses a fresh set of system prompts,
so every strategy starts every pass with no cached prompt (what a new prompt costs is what
routing can save); warm-up requests (a short unrelated prompt, 2 per replica) are excluded.
The strategies run A B C in odd passes, C B A in even ones, so machine noise hits all.

Besides TTFT, each replica's llama-server ``/metrics`` is read before and after each run
(replica ports from the plane's store): ``llamacpp:prompt_tokens_total`` counts the prompt
tokens it *evaluated*, ``llamacpp:prompt_tokens_cached_total`` those it served from its
prompt cache; per request, the usage chunk's ``prompt_tokens_details.cached_tokens`` says
the same (the two agree to the token). A request is a cache miss when less than half its
prompt came from the cache. llama-server's prompt cache is on by default
(``--cache-prompt``; aiplane passes no cache flag): each slot keeps its last prompt, a
request takes the idle slot whose prompt is most similar (``--slot-prompt-similarity``
0.10, else the least recently used), and a host-memory prompt cache (``--cache-ram``, 8192
MiB, capped at ``--ctx-size`` tokens, here 16384) keeps idle slots' prompts and restores
them into any slot. ``--llamacpp-args '--cache-ram 0'`` leaves only the 4 slots. A prompt
still being prefilled in one slot is in no cache, so concurrent requests for a new prompt
all miss, whatever the router does.

Prints a markdown table (strategy, replicas, mean/p50/p95 TTFT, TTFT after each pass's
opening 2 x concurrency requests, prompt tokens evaluated and cached, misses, requests/s)
and the ratios against least-load (pooled and per pass), and writes
bench/out/<--out>.png (+ .json with every request), by default bench/out/prefix_routing.*.
The machine is shared: a pass is not started when the passes so far say it would end past
``--budget-s`` (345 s from the start); ``--start-pass 1 --passes 1`` runs the C B A pass on
its own, and ``--from-json A.json B.json ...`` pools runs of several invocations (other
replica counts, other passes) into one report without running anything.

    .venv/bin/python bench/prefix_routing.py [--replicas 2] [--prompts 4] [--prompt-tokens 600]
        [--requests 24] [--passes 2] [--start-pass 0] [--concurrency 4]
        [--strategies aiplane,least-load,chwbl] [--llamacpp-args '--cache-ram 0']
        [--budget-s 345] [--keep-logs DIR] [--out prefix_routing] [--from-json A.json ...]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.plane import SMOLLM2, Plane, assert_gone

OUT = Path(__file__).parent / "out"
STRATEGIES = ("aiplane", "least-load", "chwbl")
BASELINE = "least-load"
ENGINE_METRICS = (
    "llamacpp:prompt_tokens_total",
    "llamacpp:prompt_tokens_cached_total",
    "llamacpp:tokens_predicted_total",
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


COMPANIES = (
    "Northwind Freight", "Bluefin Analytics", "Cedar Ridge Clinic", "Orbital Parts Exchange",
    "Harbor Lane Books", "Quillstone Legal", "Tessellate Games", "Juniper Solar Cooperative",
)  # fmt: skip
NOUNS = _words(
    "account invoice parcel warehouse driver route ticket refund customer schedule contract "
    "device battery panel meter sensor report patient doctor appointment record insurance "
    "claim policy manager ledger budget supplier order catalogue shelf author chapter edition "
    "library player level server match tournament license permit client hearing deadline "
    "filing roof inverter subsidy member vote harvest river bridge lantern copper signal"
)
VERBS = _words(
    "checks confirms cancels schedules updates reviews approves rejects escalates archives "
    "ships tracks refunds renews audits measures replaces records forwards verifies"
)
ADJECTIVES = _words(
    "urgent overdue regional quarterly fragile premium standard damaged missing recurring "
    "pending verified external internal seasonal annual temporary primary secondary local"
)
ADVERBS = _words("politely promptly carefully briefly always never only first")


def model_yaml(name: str, strategy: str, replicas: int, context: int, args: list[str]) -> str:
    return f"""\
apiVersion: aiplane.dev/v1alpha1
kind: Model
metadata: {{name: {name}}}
spec:
  engine: llamacpp
  source: {SMOLLM2}
  replicas: {{min: {replicas}, max: {replicas}}}
  contextLength: {context}
  routing: {{strategy: {strategy}, sessionHeader: null}}
  timeouts: {{coldStart: 600s, request: 600s}}
  args: {json.dumps(args)}
"""


# -- workload ---------------------------------------------------------------------------
def _sentence(rng: random.Random) -> str:
    n1, n2, n3 = rng.sample(NOUNS, 3)
    a1, a2 = rng.sample(ADJECTIVES, 2)
    forms = (
        f"When a {a1} {n1} arrives, the assistant {rng.choice(VERBS)} the {n2} and {rng.choice(ADVERBS)} "
        f"tells the {n3} why.",
        f"Rule {rng.randint(1, 999)}: every {n1} with a {a1} {n2} {rng.choice(VERBS)} its {n3} within "
        f"{rng.randint(2, 90)} days.",
        f"The {a1} {n1} team {rng.choice(VERBS)} each {a2} {n2}; ask for the {n3} number first.",
        f"If the {n1} is {a1}, {rng.choice(ADVERBS)} say that the {n2} {rng.choice(VERBS)} the {n3}.",
        f"Never promise a {n1} before the {a2} {n2} is {rng.choice(VERBS)[:-1]}ed by the {n3} desk.",
    )
    return rng.choice(forms)


def system_prompt(k: int, seed: int, sentences: int) -> str:
    """Deterministic, varied text; the first characters name the company (chwbl hashes 100)."""
    rng = random.Random(f"system:{seed}:{k}")
    company = COMPANIES[k % len(COMPANIES)]
    head = f"You are the support assistant of {company} (desk {seed}-{k}). Follow these rules. "
    return head + " ".join(_sentence(rng) for _ in range(sentences))


def question(rng: random.Random, i: int) -> str:
    return f"Question {i}: what happens to a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}? One sentence."


def zipf_picks(k: int, n: int, rng: random.Random) -> list[int]:
    return rng.choices(range(k), weights=[1 / (j + 1) for j in range(k)], k=n)


def tokens_of(replica_url: str, text: str) -> int:
    r = httpx.post(replica_url + "/tokenize", json={"content": text}, timeout=60)
    r.raise_for_status()
    return len(r.json()["tokens"])


def make_prompts(k: int, seed: int, target_tokens: int, replica_url: str) -> tuple[list[str], list[int]]:
    """K prompts of about ``target_tokens`` tokens, measured with the replica's own tokenizer."""
    probe = system_prompt(0, seed, 40)
    per_sentence = tokens_of(replica_url, probe) / 40
    sentences = max(1, round(target_tokens / per_sentence))
    prompts = [system_prompt(j, seed, sentences) for j in range(k)]
    return prompts, [tokens_of(replica_url, p) for p in prompts]


# -- measuring --------------------------------------------------------------------------
@dataclass
class Sample:
    index: int  # the request's place in the pass's sequence
    prompt: int  # which system prompt
    ttft_s: float | None
    e2e_s: float
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None


@dataclass
class Run:
    strategy: str
    replicas: int
    pass_no: int
    elapsed_s: float
    samples: list[Sample]
    engine: dict[str, dict[str, float]]  # replica id -> metric -> delta over the run


@dataclass
class Row:
    strategy: str
    replicas: int
    requests: int
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    prompt_tokens_evaluated: int
    prompt_tokens_cached: int
    cache_hit_requests: int  # requests with at least half their prompt from the cache
    requests_per_s: float
    errors: int
    replica_share: list[float]  # each replica's share of the tokens generated, busiest first, mean over runs
    # The opening burst (each pass's first ``opening`` requests, 2 x concurrency: every
    # prompt is new there) apart from the rest, where caches have had a chance to fill.
    opening: int = 0
    misses_opening: int = 0
    misses_after: int = 0
    ttft_mean_after_s: float = float("nan")
    per_pass: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def of(cls, runs: list[Run], opening: int) -> Row:
        samples = [s for r in runs for s in r.samples]
        ok = [s for s in samples if s.error is None and s.ttft_s is not None]
        ttfts = sorted(s.ttft_s for s in ok if s.ttft_s is not None)
        after = [s.ttft_s for s in ok if s.index >= opening and s.ttft_s is not None]
        engine = _sum_engine(runs)
        shares = [_shares(r) for r in runs]
        return cls(
            strategy=runs[0].strategy,
            replicas=runs[0].replicas,
            requests=len(samples),
            ttft_mean_s=statistics.fmean(ttfts) if ttfts else float("nan"),
            ttft_p50_s=_pct(ttfts, 0.50),
            ttft_p95_s=_pct(ttfts, 0.95),
            prompt_tokens_evaluated=int(sum(m.get(ENGINE_METRICS[0], 0) for m in engine.values())),
            prompt_tokens_cached=int(sum(m.get(ENGINE_METRICS[1], 0) for m in engine.values())),
            cache_hit_requests=sum(1 for s in ok if _hit(s)),
            requests_per_s=len(ok) / sum(r.elapsed_s for r in runs),
            errors=len(samples) - len(ok),
            replica_share=[statistics.fmean(col) for col in zip(*shares, strict=True)],
            opening=opening,
            misses_opening=sum(1 for s in samples if s.index < opening and not _hit(s)),
            misses_after=sum(1 for s in samples if s.index >= opening and not _hit(s)),
            ttft_mean_after_s=statistics.fmean(after) if after else float("nan"),
            per_pass=[_pass_summary(r) for r in runs],
        )


def _shares(run: Run) -> list[float]:
    predicted = sorted((m.get(ENGINE_METRICS[2], 0.0) for m in run.engine.values()), reverse=True)
    return [p / (sum(predicted) or 1) for p in predicted]


def _pass_summary(run: Run) -> dict[str, float]:
    ttfts = [s.ttft_s for s in run.samples if s.error is None and s.ttft_s is not None]
    return {
        "pass": run.pass_no,
        "ttft_mean_s": statistics.fmean(ttfts) if ttfts else float("nan"),
        "prompt_tokens_evaluated": sum(m.get(ENGINE_METRICS[0], 0) for m in run.engine.values()),
        "requests_per_s": len(ttfts) / run.elapsed_s,
        "misses": sum(1 for s in run.samples if not _hit(s)),
    }


def _hit(s: Sample) -> bool:
    """At least half the prompt came from the engine's cache."""
    return bool(
        s.error is None and s.cached_tokens and s.prompt_tokens and s.cached_tokens >= s.prompt_tokens / 2
    )


def _sum_engine(runs: list[Run]) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    for run in runs:
        for rid, metrics in run.engine.items():
            into = total.setdefault(rid, {})
            for name, value in metrics.items():
                into[name] = into.get(name, 0.0) + value
    return total


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, round(q * len(xs) + 0.5) - 1))]


def scrape(plane: Plane, model: str) -> dict[str, dict[str, float]]:
    """Each ready replica's llama-server counters, by replica id."""
    out: dict[str, dict[str, float]] = {}
    for replica in plane.replicas(model):
        text = httpx.get(f"http://127.0.0.1:{replica.port}/metrics", timeout=30).text
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ENGINE_METRICS:
                values[name] = float(value)
        out[replica.id] = values
    return out


def delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    return {
        rid: {name: value - before.get(rid, {}).get(name, 0.0) for name, value in metrics.items()}
        for rid, metrics in after.items()
    }


async def _one(
    client: openai.AsyncOpenAI, model: str, job: tuple[int, int, str | None, str], max_tokens: int
) -> Sample:
    index, prompt, system, user = job
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    t0 = time.perf_counter()
    ttft: float | None = None
    prompt_tokens = cached = None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if ttft is None and any(c.delta.content for c in chunk.choices):
                ttft = time.perf_counter() - t0
            if chunk.usage is not None:
                prompt_tokens = chunk.usage.prompt_tokens
                details = chunk.usage.prompt_tokens_details
                cached = details.cached_tokens if details is not None else None
    except openai.APIError as exc:
        return Sample(
            index, prompt, ttft, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:300]
        )
    if ttft is None:
        return Sample(
            index, prompt, None, time.perf_counter() - t0, prompt_tokens, cached, "no content streamed"
        )
    return Sample(index, prompt, ttft, time.perf_counter() - t0, prompt_tokens, cached)


async def load(
    url: str, model: str, jobs: list[tuple[int, int, str | None, str]], concurrency: int, max_tokens: int
) -> tuple[float, list[Sample]]:
    """Closed loop: ``concurrency`` workers take the jobs in order; returns (elapsed, samples)."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    queue: asyncio.Queue[tuple[int, int, str | None, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    samples: list[Sample] = []

    async def worker() -> None:
        while not queue.empty():
            samples.append(await _one(client, model, queue.get_nowait(), max_tokens))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return time.perf_counter() - start, sorted(samples, key=lambda s: s.index)


# -- the bench --------------------------------------------------------------------------
def bench_replicas(args: argparse.Namespace, replicas: int, tmp: Path) -> tuple[list[Run], dict[str, object]]:
    strategies: list[str] = args.strategies
    extra = args.llamacpp_args.split()
    if "--threads" not in extra and "-t" not in extra:
        extra = ["--threads", str(max(1, (os.cpu_count() or 1) // replicas)), *extra]
    planes: dict[str, Plane] = {}
    pids: list[int] = []
    runs: list[Run] = []
    info: dict[str, object] = {"replicas": replicas, "llamacpp_args": extra}
    try:
        t0 = time.monotonic()
        for strategy in strategies:
            home = tmp / f"{strategy}-{replicas}"
            home.mkdir()
            (home / "model.yaml").write_text(model_yaml(strategy, strategy, replicas, args.context, extra))
            planes[strategy] = Plane(home, [home / "model.yaml"]).start()
        for strategy, plane in planes.items():
            plane.wait_replicas(strategy, replicas, timeout=300)
            pids += [r.pid for r in plane.replicas() if r.pid]
        print(
            f"  {len(planes)} planes x {replicas} replicas ready in {time.monotonic() - t0:.0f}s", flush=True
        )
        for strategy, plane in planes.items():  # warm-up: short and unrelated, primes no system prompt
            warm = [(i, -1, None, f"Say hello number {i}.") for i in range(2 * replicas)]
            asyncio.run(load(plane.url, strategy, warm, replicas, args.max_tokens))
        first = planes[strategies[0]].replicas(strategies[0])[0]
        tokenizer_url = f"http://127.0.0.1:{first.port}"
        info["argv"] = first.argv
        info["llama_server"] = os.path.realpath(first.argv[0])
        info["prompt_tokens"] = []
        try:
            for i, p in enumerate(range(args.start_pass, args.start_pass + args.passes)):
                spent = [r.elapsed_s for r in runs]
                if spent and time.monotonic() + statistics.fmean(spent) * len(strategies) > args.deadline:
                    print(
                        f"  --budget-s {args.budget_s:g} reached: {i} of {args.passes} passes run", flush=True
                    )
                    info["passes_run"] = i
                    break
                runs += run_pass(args, planes, replicas, p, tokenizer_url, info)
            else:
                info["passes_run"] = args.passes
        except KeyboardInterrupt:  # report the passes that completed
            done = {r.pass_no for r in runs if sum(q.pass_no == r.pass_no for q in runs) == len(strategies)}
            print(f"  interrupted: reporting the {len(done)} complete passes", flush=True)
            runs = [r for r in runs if r.pass_no in done]
            info["passes_run"] = len(done)
            info["interrupted"] = True
        info["replica_logs"] = {s: [r.log_path for r in planes[s].replicas(s)] for s in planes}
    finally:
        for plane in planes.values():
            plane.stop()
        assert_gone(pids)
    return runs, info


def run_pass(
    args: argparse.Namespace, planes: dict[str, Plane], replicas: int, p: int, tokenizer_url: str, info: dict
) -> list[Run]:
    """One pass: fresh prompts, the same requests for every strategy, in A B C or C B A order."""
    strategies: list[str] = args.strategies
    runs: list[Run] = []
    seed = args.seed * 1000 + replicas * 100 + p
    prompts, sizes = make_prompts(args.prompts, seed, args.prompt_tokens, tokenizer_url)
    info["prompt_tokens"].append(sizes)
    rng = random.Random(f"requests:{seed}")
    picks = zipf_picks(args.prompts, args.requests, rng)
    jobs = [(i, k, prompts[k], question(rng, i)) for i, k in enumerate(picks)]
    order = strategies if p % 2 == 0 else strategies[::-1]
    uses = [picks.count(k) for k in range(args.prompts)]
    for strategy in order:
        plane = planes[strategy]
        print(
            f"  replicas {replicas}, pass {p + 1} ({' '.join(order)}): {strategy}, {len(jobs)} requests "
            f"(prompts of {min(sizes)}-{max(sizes)} tokens, uses {uses})",
            flush=True,
        )
        before = scrape(plane, strategy)
        elapsed, samples = asyncio.run(load(plane.url, strategy, jobs, args.concurrency, args.max_tokens))
        run = Run(strategy, replicas, p + 1, elapsed, samples, delta(before, scrape(plane, strategy)))
        s = _pass_summary(run)
        print(
            f"    {elapsed:.1f}s, TTFT mean {s['ttft_mean_s'] * 1000:.0f} ms, "
            f"prompt tokens evaluated {s['prompt_tokens_evaluated']:.0f}, cache misses {s['misses']:.0f}",
            flush=True,
        )
        runs.append(run)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="2", help="replica counts, comma-separated (e.g. 2,3)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--prompts", type=int, default=4, help="K distinct system prompts")
    ap.add_argument("--prompt-tokens", type=int, default=600, help="about this many tokens per system prompt")
    ap.add_argument("--requests", type=int, default=24, help="measured requests per strategy and pass")
    ap.add_argument("--passes", type=int, default=2, help="A B C, C B A, ...; fresh prompts each pass")
    ap.add_argument(
        "--start-pass",
        type=int,
        default=0,
        help="number the passes from this one (its prompts and order): 1 runs the C B A pass alone",
    )
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--context", type=int, default=4096, help="contextLength: tokens per slot")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--llamacpp-args",
        default="",
        help="extra llama-server arguments for every replica, e.g. '--cache-ram 0' "
        "(--threads defaults to cpu_count // replicas)",
    )
    ap.add_argument("--keep-logs", type=Path, help="copy the planes' homes (replica logs) to this directory")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=345,
        help="start no pass that would end past this many seconds from the start (the machine is shared)",
    )
    ap.add_argument("--out", default="prefix_routing", help="name of the .png and .json under bench/out")
    ap.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="report again from JSONs this bench wrote, their runs pooled (no planes run)",
    )
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.from_json is not None:
        return replay(args.from_json, args.out)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    counts = [int(n) for n in args.replicas.split(",")]

    started = time.monotonic()
    args.deadline = started + args.budget_s
    runs: list[Run] = []
    infos: list[dict[str, object]] = []
    keep: Path | None = args.keep_logs
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for n in counts:
            if runs and time.monotonic() > args.deadline:
                print(f"--budget-s {args.budget_s:g} reached: {n} replicas not run")
                continue
            got, info = bench_replicas(args, n, tmp)
            runs += got
            infos.append(info)
        if keep is not None:
            import shutil

            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(tmp, keep, ignore=shutil.ignore_patterns("*.db*", "*.gguf"))
    rows = rows_of(args, runs)
    if not rows:
        sys.exit("no pass completed: nothing to report")
    report(args, rows, runs, infos, time.monotonic() - started)


def rows_of(args: argparse.Namespace, runs: list[Run]) -> list[Row]:
    counts = sorted({r.replicas for r in runs})
    return [
        Row.of([r for r in runs if r.strategy == s and r.replicas == n], 2 * args.concurrency)
        for n in counts
        for s in args.strategies
        if any(r.strategy == s and r.replicas == n for r in runs)
    ]


def replay(paths: list[Path], out: str) -> None:
    """The table, ratios, JSON and PNG again from saved runs, pooled: several bounded
    invocations (other replica counts, the ``--start-pass 1`` pass) as one report. The
    first file's settings head the report; the others must match it but for the replicas
    and passes."""
    saved = [json.loads(p.read_text()) for p in paths]
    settings = saved[0]["settings"]
    for path, other in zip(paths[1:], saved[1:], strict=True):
        differ = {
            k
            for k in set(settings) | set(other["settings"])
            if k not in ("replicas", "passes", "start_pass", "out", "keep_logs", "from_json", "budget_s")
            and settings.get(k) != other["settings"].get(k)
        }
        if differ:
            sys.exit(f"{path}: settings differ from {paths[0]}: {sorted(differ)}")
    args = argparse.Namespace(**settings)
    args.out = out
    runs = [
        Run(**{**r, "samples": [Sample(**s) for s in r["samples"]]})  # type: ignore[arg-type]
        for data in saved
        for r in data["runs"]
    ]
    seen = {(r.strategy, r.replicas, r.pass_no) for r in runs}
    if len(seen) != len(runs):
        sys.exit("the files share a pass (same replicas and pass number): pool different passes only")
    runs.sort(key=lambda r: (r.replicas, r.pass_no))
    infos = [info for data in saved for info in data["planes"]]
    git = {"sources": [str(p) for p in paths], "each": [data.get("git") for data in saved]}
    report(args, rows_of(args, runs), runs, infos, sum(data["wall_s"] for data in saved), git)


def _git(repo: Path, *argv: str) -> str:
    try:
        return subprocess.run(
            ["git", *argv], cwd=repo, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def report(
    args: argparse.Namespace,
    rows: list[Row],
    runs: list[Run],
    infos: list[dict[str, object]],
    wall_s: float,
    git: dict[str, object] | None = None,
) -> None:
    per_count = {
        n: len({r.pass_no for r in runs if r.replicas == n}) for n in sorted({r.replicas for r in runs})
    }
    passes = ", ".join(f"{p} at {n} replicas" for n, p in per_count.items())
    print(
        f"\nPrefix routing (SmolLM2-135M Q4_1 on llama-server, {args.prompts} system prompts of about "
        f"{args.prompt_tokens} tokens, Zipf popularity, {args.requests} requests per strategy and pass "
        f"(passes: {passes}), concurrency {args.concurrency}, max_tokens {args.max_tokens}, streaming; "
        f"llama-server args {infos[0]['llamacpp_args']}; {wall_s:.0f}s of bench runs)\n"
    )
    opening = 2 * args.concurrency
    print(
        f"| strategy | replicas | reqs | TTFT mean | TTFT p50 | TTFT p95 | TTFT mean after first {opening} "
        f"| prompt tok evaluated | prompt tok cached | misses first {opening} + after | req/s "
        "| gen. token split | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        split = "/".join(f"{x:.0%}" for x in r.replica_share)
        print(
            f"| {r.strategy} | {r.replicas} | {r.requests} | {r.ttft_mean_s * 1000:.0f} ms | "
            f"{r.ttft_p50_s * 1000:.0f} ms | {r.ttft_p95_s * 1000:.0f} ms | "
            f"{r.ttft_mean_after_s * 1000:.0f} ms | {r.prompt_tokens_evaluated} | {r.prompt_tokens_cached} | "
            f"{r.misses_opening} + {r.misses_after} | {r.requests_per_s:.2f} | "
            f"{split} | {r.errors} |"
        )
    errors = sorted({s.error for run in runs for s in run.samples if s.error})
    if errors:
        print("  errors:", errors[:5])
    by = {(r.strategy, r.replicas): r for r in rows}
    ratios: dict[str, dict[str, float]] = {}
    for r in rows:
        base = by.get((BASELINE, r.replicas))
        if base is None or r.strategy == BASELINE:
            continue
        key = f"{r.strategy}/{BASELINE}@{r.replicas}"
        ratios[key] = {
            "ttft_mean": r.ttft_mean_s / base.ttft_mean_s,
            "ttft_p50": r.ttft_p50_s / base.ttft_p50_s,
            "ttft_p95": r.ttft_p95_s / base.ttft_p95_s,
            "ttft_mean_after_opening": r.ttft_mean_after_s / base.ttft_mean_after_s,
            "prompt_tokens_evaluated": r.prompt_tokens_evaluated / max(1, base.prompt_tokens_evaluated),
            "requests_per_s": r.requests_per_s / base.requests_per_s,
            "ttft_mean_per_pass": [
                a["ttft_mean_s"] / b["ttft_mean_s"] for a, b in zip(r.per_pass, base.per_pass, strict=True)
            ],  # type: ignore[dict-item]
        }
    if ratios:
        print(f"\nRatios against {BASELINE} (below 1: lower TTFT / fewer tokens evaluated):")
        for key, q in ratios.items():
            per_pass = ", ".join(f"x{x:.2f}" for x in q["ttft_mean_per_pass"])  # type: ignore[attr-defined]
            print(
                f"  {key}: TTFT mean x{q['ttft_mean']:.2f} (per pass {per_pass}), p50 x{q['ttft_p50']:.2f}, "
                f"p95 x{q['ttft_p95']:.2f}, after the opening x{q['ttft_mean_after_opening']:.2f}, "
                f"prompt tokens evaluated x{q['prompt_tokens_evaluated']:.2f}, "
                f"req/s x{q['requests_per_s']:.2f}"
            )

    stem = OUT / args.out
    repo = Path(__file__).resolve().parents[1]
    git = git or {
        "head": _git(repo, "rev-parse", "HEAD"),
        "dirty": _git(repo, "status", "--short", "--", "aiplane", "bench/prefix_routing.py").splitlines(),
        "aiplane_diff_sha256": hashlib.sha256(
            _git(repo, "diff", "HEAD", "--", "aiplane").encode()
        ).hexdigest(),
    }
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "settings": {k: v for k, v in vars(args).items() if k != "deadline"},
                "git": git,
                "planes": infos,
                "wall_s": wall_s,
                "rows": [asdict(r) for r in rows],
                "ratios": ratios,
                "runs": [asdict(r) for r in runs],
            },
            indent=2,
            default=str,
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r.replicas for r in rows})
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    ax = axes[0]
    for r in rows:
        ttfts = sorted(
            s.ttft_s * 1000
            for run in runs
            if run.strategy == r.strategy and run.replicas == r.replicas
            for s in run.samples
            if s.ttft_s is not None and s.error is None
        )
        ax.plot(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], label=f"{r.strategy} x{r.replicas}")
    ax.set(title="TTFT, all requests", xlabel="ms", ylabel="fraction of requests", xscale="log")
    ax.legend(fontsize=8)
    width = 0.8 / max(1, len(args.strategies))
    panels = (
        (axes[1], lambda r: r.ttft_mean_s * 1000, "TTFT mean", "ms"),
        (
            axes[2],
            lambda r: r.prompt_tokens_evaluated / len(r.per_pass),
            "Prompt tokens evaluated per pass",
            "tokens",
        ),
        (axes[3], lambda r: r.requests_per_s, "Throughput", "requests/s"),
    )
    for ax, value, title, unit in panels:
        for k, strategy in enumerate(args.strategies):
            ys = [value(by[(strategy, n)]) for n in counts]
            ax.bar([i + (k - (len(args.strategies) - 1) / 2) * width for i in range(len(counts))], ys, width)
            ax.bar_label(ax.containers[-1], fmt="%.0f" if unit != "requests/s" else "%.2f", fontsize=7)
            ax.containers[-1].set_label(strategy)
        ax.set_xticks(list(range(len(counts))), [f"{n} replicas" for n in counts])
        ax.set(title=title, ylabel=unit)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Prefix routing on llama-server replicas: {args.prompts} system prompts "
        f"x ~{args.prompt_tokens} tokens, "
        f"concurrency {args.concurrency}, args {infos[0]['llamacpp_args']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    print(f"\nwrote {stem.with_suffix('.png')} and {stem.with_suffix('.json')}")


if __name__ == "__main__":
    main()
