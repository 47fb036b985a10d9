"""The autoscaling policies, one per ``autoscaling.metric``: desired replicas from signals.

Each returns *fractional* replicas (load over target); ``rules.decide`` rounds, windows
and bounds them. A signal a body cannot observe is None: the policy then falls back to
the gateway's own counts, which every body has, and says so in its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiplane.policies.autoscaling.base import AutoscalerState, AutoscalingContext, Desired


@dataclass(frozen=True)
class Concurrency:
    """Requests in flight or waiting per replica, KubeAI's and Knative's signal.

    An LLM server's latency follows how many requests it batches, so concurrency tracks
    load where CPU does not. ``target`` is requests per replica.
    """

    name: str = "concurrency"

    def desired(self, ctx: AutoscalingContext, state: AutoscalerState) -> Desired:
        load = ctx.signals.demand
        target = ctx.config.target
        return Desired(load / target, f"{load:g} in flight+waiting / target {target:g} per replica")


@dataclass(frozen=True)
class QueueDepth:
    """Keep the requests *waiting* per replica at ``target``, as vLLM production-stack's KEDA
    rule does on ``vllm:num_requests_waiting``.

    A replica at target runs its slots full and has ``target`` more waiting, so desired is
    (running + waiting) / (slots + target). Slots are the Model's concurrency, or else the
    engine's running count per ready replica (an engine that batches inside has no fixed
    number). Waiting is the engine's queue plus what the gateway holds.
    """

    name: str = "queue-depth"

    def desired(self, ctx: AutoscalingContext, state: AutoscalerState) -> Desired:
        s = ctx.signals
        waiting = s.held + s.queued + (s.engine_waiting or 0.0)
        running = s.engine_running if s.engine_running is not None else s.in_flight
        target = ctx.config.target
        slots: float
        if ctx.config.replica_concurrency is not None:
            slots = ctx.config.replica_concurrency
        else:
            slots = max(1.0, running / ctx.ready) if ctx.ready else 1.0
        wanted = (running + waiting) / (slots + target)
        return Desired(
            wanted, f"{running:g} running + {waiting:g} waiting / ({slots:g} slots + {target:g} queued)"
        )


@dataclass(frozen=True)
class KvCache:
    """Keep mean KV-cache use at ``target`` (0..1): the memory an LLM server runs out of
    first on long contexts. Proportional, as an HPA on a utilization: ready x use / target.

    Engines that export no KV gauge (llama.cpp's server, this version) fall back to
    concurrency against the Model's slots, and the reason says so.
    """

    name: str = "kv-cache"

    def desired(self, ctx: AutoscalingContext, state: AutoscalerState) -> Desired:
        s = ctx.signals
        target = ctx.config.target
        if s.kv_cache is None or ctx.ready == 0:
            slots = ctx.config.replica_concurrency or 1
            load = s.demand
            return Desired(
                load / (slots * min(target, 1.0)),
                f"no KV-cache signal: {load:g} in flight+waiting / {slots} slots x {target:g}",
            )
        waiting = s.held + s.queued + (s.engine_waiting or 0.0)
        wanted = ctx.ready * s.kv_cache / target
        if waiting > 0:  # full caches queue requests; a replica more each time until they drain
            wanted = max(wanted, ctx.ready + 1.0)
        return Desired(wanted, f"KV cache {s.kv_cache:.0%} x {ctx.ready} / target {target:.0%}")


@dataclass(frozen=True)
class Latency:
    """Keep p95 time to first token under ``target`` seconds (an SLO).

    Latency cannot say how many replicas are needed, only whether there are too few. So
    the policy *learns* how many requests a replica can take within the SLO (its
    capacity) and scales on concurrency against it: when p95 TTFT breaks the SLO the
    capacity drops to 90% of the load per replica just seen; while p95 stays under 80% of
    the SLO and replicas run near capacity (75% of it or more: an idle fleet says nothing
    about what a replica can take), it grows 5% per decision. Starting from the
    Model's slots (or 4), it converges without the oscillation of scaling on latency
    directly.
    """

    name: str = "latency"
    shrink: float = 0.9
    grow: float = 1.05

    def desired(self, ctx: AutoscalingContext, state: AutoscalerState) -> Desired:
        s = ctx.signals
        slo = ctx.config.target
        capacity = state.capacity or float(ctx.config.replica_concurrency or 4)
        per_replica = s.demand / ctx.ready if ctx.ready else 0.0
        note = "capacity held"
        if s.ttft_p95 is not None and ctx.ready:
            if s.ttft_p95 > slo and per_replica > 0:
                capacity = max(0.25, min(capacity, self.shrink * per_replica))
                note = f"p95 TTFT {s.ttft_p95:.2f}s > SLO {slo:g}s: capacity lowered"
            elif s.ttft_p95 < 0.8 * slo and per_replica >= 0.75 * capacity:
                capacity *= self.grow
                note = f"p95 TTFT {s.ttft_p95:.2f}s well under SLO: capacity raised"
        return Desired(
            s.demand / capacity,
            f"{s.demand:g} in flight+waiting / {capacity:.2f} per replica ({note})",
            capacity=capacity,
        )


@dataclass(frozen=True)
class Utilization:
    """The textbook HPA signal (CPU or memory use of the requested amount, target 0..1),
    for users who want exactly that. On Kubernetes a ``cpu``/``memory`` Model lowers to a
    real ``autoscaling/v2`` HorizontalPodAutoscaler instead; this is the local equivalent."""

    name: str = "cpu"

    def desired(self, ctx: AutoscalingContext, state: AutoscalerState) -> Desired:
        use = ctx.signals.cpu_utilization
        if use is None:
            return Desired(float(ctx.current_replicas), f"no {self.name} signal: holding")
        return Desired(
            ctx.ready * use / ctx.config.target, f"{self.name} {use:.0%} / target {ctx.config.target:.0%}"
        )
