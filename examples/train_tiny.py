"""A tiny character-level transformer trained with DDP on CPU: aiplane's job contract, runnable.

Run it the way aiplane runs a TrainingJob's workers, one process per rank::

    .venv/bin/aiplane up -f examples/train-tiny.yaml     # from the repository root: 2 workers

or by hand, with no aiplane at all (one worker, checkpoints in ./checkpoints)::

    python examples/train_tiny.py --steps 100

What it shows (docs/jobs.md is the contract):

* the world from the environment: ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT`` (``init_process_group("gloo")``, ``env://``);
* checkpoints in ``AIPLANE_CHECKPOINT_DIR``: rank 0 writes ``step-000120.pt.tmp``,
  fsyncs it and renames it to ``step-000120.pt``, so a complete step file is never
  half written; it keeps the newest ``--keep``. On start the newest complete one is
  resumed (unless ``AIPLANE_CHECKPOINT_RESUME=false``) and broadcast to every rank;
* SIGTERM (preemption, drain, shutdown): every step the ranks all-reduce a stop flag
  with the loss, so all of them stop after the same step; rank 0 saves that step,
  all ranks meet at a barrier and exit 143;
* progress lines (``aiplane.progress``): ``resumed_from`` once, then ``step``,
  ``total_steps``, ``loss``, ``samples_per_s`` every ``--log-every`` steps, and
  ``checkpoint_step`` when it saves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

try:
    from aiplane.progress import report
except ImportError:  # any image: the line is the protocol, not the package

    def report(stream: TextIO | None = None, **fields: Any) -> None:
        out = stream or sys.stdout
        out.write("AIPLANE_PROGRESS " + json.dumps(fields, separators=(",", ":")) + "\n")
        out.flush()


HERE = Path(__file__).resolve().parent
STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
SIGTERM_EXIT = 128 + signal.SIGTERM


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--steps", type=int, default=env_int("TINY_STEPS", 300), help="optimizer steps in all")
    p.add_argument("--checkpoint-every", type=int, default=env_int("TINY_CHECKPOINT_EVERY", 25))
    p.add_argument("--keep", type=int, default=3, help="complete checkpoints to keep")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    p.add_argument("--batch-size", type=int, default=env_int("TINY_BATCH_SIZE", 32), help="per rank")
    p.add_argument("--lr", type=float, default=float(os.environ.get("TINY_LR", 1e-2)), help="peak")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", type=Path, default=HERE / "data" / "fables.txt")
    p.add_argument(
        "--step-delay", type=float, default=float(os.environ.get("TINY_STEP_DELAY", 0)), help="sleep per step"
    )
    p.add_argument("--sample", type=int, default=200, help="characters to generate at the end (0: none)")
    return p.parse_args(argv)


# -- the model ------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, context: int, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.context = context
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(layers)))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.blocks(x)))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        for _ in range(n):
            logits = self(idx[:, -self.context :])[:, -1]
            nxt = torch.multinomial(F.softmax(logits / 0.8, dim=-1), 1, generator=gen)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def batch(data: torch.Tensor, args: argparse.Namespace, rank: int, step: int) -> torch.Tensor:
    """Rows of ``context + 1`` characters; the same (seed, rank, step) always gives the same
    batch, so a resumed run sees the data it would have seen, and every rank sees its own."""
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + rank * 100_003 + step)
    starts = torch.randint(0, len(data) - args.context - 1, (args.batch_size,), generator=gen)
    return torch.stack([data[s : s + args.context + 1] for s in starts.tolist()])


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """Linear warm-up, then cosine down to a tenth: a function of the step, so resume is exact."""
    warmup = max(1, args.steps // 20)
    peak: float = args.lr
    if step <= warmup:
        return peak * step / warmup
    done = (step - warmup) / max(1, args.steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done))))


# -- checkpoints ----------------------------------------------------------------------------
def checkpoint_steps(directory: Path) -> list[int]:
    """Steps with a complete checkpoint, oldest first (``*.pt.tmp`` files are not complete)."""
    if not directory.is_dir():
        return []
    return sorted(int(m[1]) for f in directory.iterdir() if (m := STEP_FILE.match(f.name)))


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:06d}.pt"


def save(directory: Path, step: int, state: dict[str, Any], keep: int) -> None:
    """Write-then-rename: a crash leaves a ``.tmp`` behind, never a torn ``step-*.pt``."""
    final = checkpoint_path(directory, step)
    tmp = final.with_name(final.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fd = os.open(directory, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in checkpoint_steps(directory)[:-keep]:
        checkpoint_path(directory, old).unlink(missing_ok=True)


def load_newest(directory: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; an unreadable one is skipped for the one before."""
    for step in reversed(checkpoint_steps(directory)):
        try:
            state: dict[str, Any] = torch.load(checkpoint_path(directory, step), weights_only=True)
            return state
        except Exception as exc:
            print(
                f"checkpoint {checkpoint_path(directory, step)} is unreadable ({exc}); trying older",
                flush=True,
            )
    return None


# -- the world ------------------------------------------------------------------------------
def init_world() -> tuple[int, int]:
    """(rank, world size) from the env; alone (no WORLD_SIZE) it is a world of one on localhost."""
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(WORLD_SIZE="1", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", init_method="env://")
    return dist.get_rank(), dist.get_world_size()


class StopFlag:
    """Set by SIGTERM (or Ctrl-C); read at the next step boundary, never acted on in the handler."""

    def __init__(self) -> None:
        self.signal: str | None = None
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = self.signal or signal.Signals(signum).name


def restore(directory: Path, resume: bool, lead: bool) -> dict[str, Any] | None:
    """Rank 0 reads the newest checkpoint and broadcasts it: every rank needs the optimizer
    state too, and this way only rank 0 has to see the directory."""
    state: dict[str, Any] | None = None
    if lead:
        directory.mkdir(parents=True, exist_ok=True)
        for tmp in directory.glob("step-*.pt.tmp"):  # a save that a kill interrupted
            tmp.unlink(missing_ok=True)
        if resume:
            state = load_newest(directory)
        else:  # a fresh start: older step files must not be mistaken for this run's
            for old in checkpoint_steps(directory):
                checkpoint_path(directory, old).unlink()
    shared: list[dict[str, Any] | None] = [state]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopFlag()
    torch.set_num_threads(1)
    rank, world = init_world()
    lead = rank == 0
    directory = Path(os.environ.get("AIPLANE_CHECKPOINT_DIR", "checkpoints"))
    resume = os.environ.get("AIPLANE_CHECKPOINT_RESUME", "true").lower() != "false"

    text = args.text.read_text(encoding="utf-8")
    vocab = "".join(sorted(set(text)))
    data = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    model = TinyGPT(len(vocab), args.context, args.d_model, args.heads, args.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start = 0
    if (state := restore(directory, resume, lead)) is not None:
        if state["vocab"] != vocab:
            raise SystemExit(f"the checkpoint in {directory} was trained on another text")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if lead:
            restart = os.environ.get("AIPLANE_RESTART", "0")
            print(f"resuming from {checkpoint_path(directory, start)} (restart {restart})", flush=True)
            report(resumed_from=start)
    ddp = DistributedDataParallel(model)
    if lead:
        params = sum(p.numel() for p in model.parameters())
        print(f"world {world}, {params} parameters, vocab {len(vocab)}, {len(text)} characters", flush=True)

    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    step = start
    while step < args.steps:
        step += 1
        for group in opt.param_groups:
            group["lr"] = learning_rate(args, step)
        xy = batch(data, args, rank, step)
        logits = ddp(xy[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.step_delay:
            time.sleep(args.step_delay)
        # One small all-reduce per step: the loss, and how many ranks were told to stop.
        # Every rank gets the same sum, so all stop after this same step, and none waits
        # in a collective that the others never enter.
        agreed = torch.tensor([loss.item(), 1.0 if stop.signal else 0.0])
        dist.all_reduce(agreed)
        window_loss += agreed[0].item() / world
        window_steps += 1
        stopping = agreed[1].item() > 0
        saving = stopping or step % args.checkpoint_every == 0 or step == args.steps
        if lead and saving:
            state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "vocab": vocab}
            save(directory, step, state, args.keep)
        if lead and (saving or step % args.log_every == 0 or step == start + 1):
            elapsed = time.perf_counter() - window_start
            fields: dict[str, Any] = {
                "step": step,
                "total_steps": args.steps,
                "loss": round(window_loss / window_steps, 4),
                "samples_per_s": round(window_steps * args.batch_size * world / elapsed, 1),
            }
            if saving:
                fields["checkpoint_step"] = step
            report(**fields)
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        if stopping:
            why = stop.signal or "another rank was signalled"
            print(f"rank {rank}: {why}: stopping after step {step}", flush=True)
            dist.barrier()  # the others exit once rank 0's checkpoint is on disk
            dist.destroy_process_group()
            return SIGTERM_EXIT
    if lead and args.sample:
        prompt = torch.tensor([[vocab.index(text[0])]])
        out = model.eval().generate(prompt, args.sample, torch.Generator().manual_seed(args.seed))
        print("sample: " + "".join(vocab[i] for i in out[0].tolist()), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
