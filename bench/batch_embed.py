"""BatchJob embed shards: ``aiplane run-shard`` against a plain loop over the same model.

One run, one generated dataset (sentences of varying length, 4,000 rows by default),
the same in-process int8 all-MiniLM-L6-v2:

a. ``plain loop``: read the texts, ``embedder.embed`` in batches of 64, write JSONL
   (``json.dumps`` of ``vec.tolist()``); timed after the model is loaded;
b. ``run-shard, 1 worker``: one ``aiplane run-shard`` process doing every row (1 shard),
   timed wall-clock from spawn to exit (Python start, imports, model load included),
   and by its own last progress line (``rows_per_s``: from after the model loaded);
c. ``run-shard, 2 workers``: 2 shards as 2 concurrent processes on this machine's cores,
   each with onnxruntime's default threads, and again with 1 thread each.

Prints a table with the ratio to the plain loop and writes ``docs/img/batch_embed.png``.

    .venv/bin/python bench/batch_embed.py [--rows 4000] [--out docs/img/batch_embed.png]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiplane.engines.minilm import MiniLMEmbedder  # noqa: E402
from aiplane.progress import merge_lines  # noqa: E402
from tests.sentences import sentence  # noqa: E402

BATCH = 64


def write_dataset(path: Path, rows: int) -> None:
    rng = random.Random(42)
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"doc-{i}", "text": sentence(rng)}) + "\n")


def plain_loop(embedder: MiniLMEmbedder, source: Path, target: Path) -> float:
    """Rows per second of the simplest correct program (model already loaded)."""
    start = time.perf_counter()
    records = [json.loads(line) for line in source.open()]
    with open(target, "w") as out:
        for i in range(0, len(records), BATCH):
            chunk = records[i : i + BATCH]
            vectors = embedder.embed([r["text"] for r in chunk])
            for r, v in zip(chunk, vectors, strict=True):
                out.write(json.dumps({"id": r["id"], "embedding": v.tolist()}) + "\n")
    return len(records) / (time.perf_counter() - start)


def run_shards(source: Path, out: Path, shards: int, threads: int) -> tuple[float, list[dict[str, Any]]]:
    """Wall-clock seconds for ``shards`` concurrent run-shard processes, and their last progress."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIPLANE_TASK": "embed", "AIPLANE_INPUT": str(source)}
    env |= {"AIPLANE_OUTPUT": str(out), "AIPLANE_SHARDS": str(shards), "AIPLANE_BATCH_SIZE": str(BATCH)}
    env |= {"AIPLANE_THREADS": str(threads), "AIPLANE_TERMINATION_LOG": ""}
    cmd = [sys.executable, "-m", "aiplane.cli.main", "run-shard"]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env | {"AIPLANE_SHARD": str(i)}, stdout=subprocess.PIPE, text=True)
        for i in range(shards)
    ]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit(f"run-shard failed: {[p.returncode for p in procs]}")
    return wall, [merge_lines(text.splitlines()) for text in outputs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "batch_embed.png")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="batch-embed-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "in.jsonl"
        write_dataset(source, args.rows)
        t0 = time.perf_counter()
        embedder = MiniLMEmbedder()
        load_s = time.perf_counter() - t0
        tokens = embedder.count_tokens([json.loads(line)["text"] for line in source.open()])
        print(
            f"{args.rows} rows, {sum(tokens) / len(tokens):.0f} tokens per row on average "
            f"(min {min(tokens)}, max {max(tokens)}); {os.cpu_count()} CPUs; model load {load_s:.2f} s"
        )

        results: list[tuple[str, float, float | None]] = []  # name, rows/s wall, rows/s after load
        plain = plain_loop(embedder, source, tmp / "plain.jsonl")
        results.append(("plain loop", plain, plain))
        del embedder
        for name, shards, threads in (
            ("run-shard, 1 worker", 1, 0),
            ("run-shard, 2 workers", 2, 0),
            ("run-shard, 2 workers x 1 thread", 2, 1),
        ):
            wall, finals = run_shards(source, tmp / f"out-{shards}-{threads}", shards, threads)
            rows = sum(f["rows"] for f in finals)
            assert rows == args.rows and not any(f.get("skipped") for f in finals)
            results.append((name, rows / wall, sum(f["rows_per_s"] for f in finals)))

    header = f"{'case':<34}{'rows/s (wall)':>15}{'vs plain':>10}{'rows/s (after load)':>21}{'vs plain':>10}"
    print("\n" + header)
    for name, wall_rate, steady in results:
        steady_text = f"{steady:>21.1f}{steady / plain:>9.2f}x" if steady else f"{'-':>21}{'':>10}"
        print(f"{name:<34}{wall_rate:>15.1f}{wall_rate / plain:>9.2f}x{steady_text}")
    print("plain loop: model load excluded; run-shard wall: Python start, imports and model load included")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    names = [r[0] for r in results]
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], [r[1] for r in results], width=0.4, label="wall clock (startup included)")
    ax.bar([x + 0.2 for x in xs], [r[2] or 0 for r in results], width=0.4, label="after model load")
    ax.set_xticks(list(xs), names, rotation=10)
    ax.set_ylabel("rows / s")
    ax.set_title(f"embed {args.rows} rows, int8 MiniLM on {os.cpu_count()} CPUs")
    ax.set_ylim(0, max(max(r[1], r[2] or 0) for r in results) * 1.3)
    ax.legend(loc="upper left", ncol=2)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
