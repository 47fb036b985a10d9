"""One simulated engine replica: iteration-level continuous batching, advanced analytically.

The engine keeps a FCFS *waiting* queue, *prefilling* sequences (FCFS too, as vLLM's
scheduler fills an iteration's token budget in order) and *decoding* sequences. Between
two events (a request arrives, a prefill completes, a sequence finishes) the batch does
not change, so neither does the iteration time ``tau`` (``Profile``): every decoding
sequence gains ``dt / tau`` tokens and the head of the prefill queue gets
``chunk / tau`` tokens of work a second, ``chunk`` being what is left of the budget
(``batch_tokens`` less one token per decoding sequence) or the whole pending prefill if
it fits. Decoding sequences all advance at the same rate, so one counter of iterations
and a heap of each sequence's finishing iteration replace per-token steps: a replay
costs a few heap operations per request, not one per token.

Admission (waiting -> running) takes the head of the queue while fewer than
``max_num_seqs`` run, the running prefills leave some of the iteration's token budget
(vLLM's scheduler takes waiting requests only into the budget left after the running
ones, so a long prompt holds the rest back in ``waiting``: what
``vllm:num_requests_waiting`` counts), and its KV fits: a request reserves its uncached prompt and its
output, ``prompt - hit + output`` tokens, when it is scheduled (vLLM allocates as it
goes and preempts on overflow; reserving up front queues a little earlier instead of
preempting). The prefix cache is vLLM's block pool (``PrefixCache``): hits are counted
when a request is scheduled and pin the blocks they hit; its own full blocks join the
cache, pinned, when its prefill completes (its reservation for them then counts as
the cache's); when it finishes they are freed but stay cached until the space is needed.
KV use is reserved tokens plus pinned blocks; free cached blocks fill the rest.

The first token comes with the iteration that completes the prefill: alone, a request
has TTFT = prefill work / prefill_tps and ends ``(output - 1)`` decode steps later.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

from aiplane.sim.serve.cache import PrefixCache
from aiplane.sim.serve.profiles import Profile
from aiplane.sim.serve.request import SimRequest
from aiplane.sim.serve.traces import BLOCK_TOKENS

EPS_WORK = 1e-6  # equivalent tokens
EPS_ITERS = 1e-6  # decode iterations


class Replica:
    def __init__(self, replica_id: str, profile: Profile, started: float) -> None:
        self.id = replica_id
        self.profile = profile
        self.started_at = started
        self.ready_at: float | None = None
        self.removed_at: float | None = None
        self.state = "starting"  # starting | ready | draining | gone
        self.t = started  # the time the fluid state below is at
        self.waiting: deque[SimRequest] = deque()
        self.prefilling: deque[SimRequest] = deque()
        self.decoding: list[tuple[float, int, SimRequest]] = []  # (finishing iteration, seq, request)
        self.iters = 0.0  # decode iterations done so far
        self.context = 0  # tokens the decoding sequences attend to
        self.pending = 0.0  # prefill work of the prefilling sequences
        self.waiting_work = 0.0  # prefill work of the waiting ones, were nothing cached
        self.incoming: dict[int, int] = {}  # full blocks of requests here not yet prefilled
        self.private = 0  # tokens reserved by running sequences beyond the cached blocks they pin
        self.cache = PrefixCache()
        self.outstanding = 0  # requests sent here and not finished (the gateway's in-flight)
        self.busy_time = 0.0  # seconds with any request, up to ``t``
        self.version = 0  # bumped whenever the next event moves
        self._tau = 0.0  # the current iteration time
        self._prefill_rate = 0.0  # prefill work per second of the head of the queue

    # --- what the gateway and the signals read --------------------------------------
    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def kv_used(self) -> int:
        """Tokens in use: reservations plus pinned cache blocks (free cached blocks are not)."""
        return self.private + BLOCK_TOKENS * len(self.cache.pinned)

    @property
    def kv_use(self) -> float:
        return self.kv_used / self.profile.kv_tokens

    def expected_hit(self, blocks: Sequence[int]) -> int:
        """Leading blocks cached here, or about to be (prompts here not yet prefilled)."""
        n = 0
        for b in blocks:
            if b not in self.cache and b not in self.incoming:
                break
            n += 1
        return n

    def busy_until(self, now: float) -> float:
        """Seconds this replica has had a request, up to ``now``."""
        return self.busy_time + (max(0.0, now - self.t) if self.outstanding else 0.0)

    # --- events ------------------------------------------------------------------------
    def submit(self, request: SimRequest, now: float) -> list[SimRequest]:
        """A request arrives at the engine; returns requests that finished at ``now``."""
        self.advance(now)
        request.replica = self.id
        request.sent_at = now
        request.where = "engine"
        self.outstanding += 1
        self.waiting.append(request)
        self.waiting_work += self.profile.prefill_work(request.prompt, 0)
        for b in request.blocks[: request.prompt // BLOCK_TOKENS]:
            self.incoming[b] = self.incoming.get(b, 0) + 1
        self._admit(now)
        self._replan()
        return []

    def next_event(self) -> float | None:
        """When the next prefill completes or sequence finishes, if the batch stays as it is."""
        best: float | None = None
        if self._prefill_rate > 0 and self.prefilling:
            best = self.t + max(0.0, self.prefilling[0].work_left) / self._prefill_rate
        if self.decoding:
            at = self.t + max(0.0, self.decoding[0][0] - self.iters) * self._tau
            best = at if best is None else min(best, at)
        return best

    def on_event(self, now: float) -> list[SimRequest]:
        """Advance to ``now`` and complete what is due; returns the requests that finished."""
        self.advance(now)
        finished: list[SimRequest] = []
        progressed = self._complete(now, finished)
        if not progressed:  # rounding left the due item a hair short: complete it anyway
            self._force_next(now, finished)
        self._admit(now)
        self._replan()
        return finished

    def advance(self, now: float) -> None:
        dt = now - self.t
        if dt <= 0:
            return
        if self.outstanding:
            self.busy_time += dt
        if self.decoding and self._tau > 0:
            self.iters += dt / self._tau
        if self._prefill_rate > 0 and self.prefilling:
            done = min(dt * self._prefill_rate, self.prefilling[0].work_left)
            self.prefilling[0].work_left -= done
            self.pending -= done
        self.t = now

    # --- internals ---------------------------------------------------------------------
    def _complete(self, now: float, finished: list[SimRequest]) -> bool:
        progressed = False
        while self.prefilling and self.prefilling[0].work_left <= EPS_WORK:
            self._prefilled(self.prefilling.popleft(), now, finished)
            progressed = True
        while self.decoding and self.decoding[0][0] <= self.iters + EPS_ITERS:
            _, _, r = heapq.heappop(self.decoding)
            self.context -= r.context
            self._finish(r, now, finished)
            progressed = True
        return progressed

    def _force_next(self, now: float, finished: list[SimRequest]) -> None:
        prefill_at = (
            self.prefilling[0].work_left / self._prefill_rate
            if self.prefilling and self._prefill_rate > 0
            else None
        )
        decode_at = (self.decoding[0][0] - self.iters) * self._tau if self.decoding else None
        if prefill_at is not None and (decode_at is None or prefill_at <= decode_at):
            self._prefilled(self.prefilling.popleft(), now, finished)
        elif decode_at is not None:
            _, _, r = heapq.heappop(self.decoding)
            self.context -= r.context
            self._finish(r, now, finished)

    def _prefilled(self, r: SimRequest, now: float, finished: list[SimRequest]) -> None:
        self.pending -= r.work_left
        if not self.prefilling:
            self.pending = 0.0  # no drift left behind
        r.work_left = 0.0
        r.first_token_at = now
        full = min(r.prompt // BLOCK_TOKENS, len(r.blocks))
        for b in r.blocks[:full]:
            if (left := self.incoming[b] - 1) > 0:
                self.incoming[b] = left
            else:
                del self.incoming[b]
        computed = r.blocks[r.hit_blocks : full]
        if computed:
            self.cache.pin(computed)  # its reservation for these is the cache's now
            self.private -= BLOCK_TOKENS * len(computed)
            r.kv_reserved -= BLOCK_TOKENS * len(computed)
            self.cache.evict_to((self.profile.kv_tokens - self.private) // BLOCK_TOKENS)
        if r.output <= 1:
            self._finish(r, now, finished)
            return
        heapq.heappush(self.decoding, (self.iters + (r.output - 1), r.seq, r))
        self.context += r.context

    def _finish(self, r: SimRequest, now: float, finished: list[SimRequest]) -> None:
        self.private -= r.kv_reserved
        self.cache.release(r.blocks[: min(r.prompt // BLOCK_TOKENS, len(r.blocks))])
        self.outstanding -= 1
        r.finished_at = now
        r.where = "done"
        finished.append(r)

    def _admit(self, now: float) -> None:
        p = self.profile
        while self.waiting and self.running < p.max_num_seqs:
            if self.prefilling and self.pending >= p.batch_tokens - len(self.decoding):
                break  # this iteration's token budget is spoken for: it waits (vLLM schedules so)
            r = self.waiting[0]
            full = min(r.prompt // BLOCK_TOKENS, len(r.blocks))
            hit_blocks = self.cache.peek(r.blocks[:full])
            hit = min(hit_blocks * BLOCK_TOKENS, r.prompt - 1)  # the last token is always computed
            need = min(r.prompt - hit + r.output, p.kv_tokens)
            revived = self.cache.free_among(r.blocks[:hit_blocks])  # free blocks it would pin
            if self.kv_used + need + BLOCK_TOKENS * revived > p.kv_tokens and self.running:
                break  # KV full: it waits (FCFS, as vLLM's waiting queue)
            self.waiting.popleft()
            self.waiting_work = self.waiting_work - p.prefill_work(r.prompt, 0) if self.waiting else 0.0
            self.cache.pin(r.blocks[:hit_blocks])
            r.admitted_at = now
            r.hit_tokens = hit
            r.hit_blocks = hit_blocks
            r.kv_reserved = need
            r.work_left = p.prefill_work(r.prompt, hit)
            r.context = r.prompt + r.output // 2  # the mean context over its decode
            self.pending += r.work_left
            self.private += need
            self.prefilling.append(r)
        self.cache.evict_to((p.kv_tokens - self.private) // BLOCK_TOKENS)

    def _replan(self) -> None:
        """The iteration time and prefill rate for the batch as it now stands."""
        p = self.profile
        d = len(self.decoding)
        step = p.step(d, self.context)
        if self.prefilling and self.pending > 0:
            chunk = min(max(p.batch_tokens - d, 1), self.pending)
            self._tau = step + chunk / p.prefill_tps
            self._prefill_rate = chunk / self._tau
        else:
            self._tau = step
            self._prefill_rate = 0.0
        self.version += 1
