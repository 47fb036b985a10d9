"""One simulated request: what the trace says of it, and what happened to it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class SimRequest:
    seq: int
    arrival: float
    prompt: int  # tokens (cut to the profile's context)
    output: int  # tokens to generate
    blocks: tuple[int, ...]
    # What happened, filled in as it does.
    replica: str | None = None
    sent_at: float | None = None  # left the gateway for an engine
    admitted_at: float | None = None  # the engine scheduled it (KV reserved)
    hit_tokens: int = 0  # prompt tokens served from the prefix cache
    hit_blocks: int = 0  # leading blocks those are
    kv_reserved: int = 0  # KV tokens it holds beyond the cached blocks it pins
    work_left: float = 0.0  # prefill work still to do, in equivalent tokens
    context: int = 0  # tokens its decode attends to (counted in the batch's KV reads)
    first_token_at: float | None = None
    finished_at: float | None = None
    dropped_at: float | None = None
    where: str = field(default="new")  # new | held | queued | engine | done | dropped

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival
