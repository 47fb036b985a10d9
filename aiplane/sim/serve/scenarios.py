"""The experiments: which traces, rates, fleets and policies, and the runs that compare them.

* **Autoscaling**: the trace at rate multipliers chosen so that at its busiest minute
  the fleet needs about 1, 4 and 16 replicas of the profile (the prefill work of that
  minute over a replica's prefill rate at 80% busy; prefill is what bounds TTFT). A
  multiplier superposes copies of the trace (``Trace.scaled``: more users over the same
  hour, bursts as sharp as the trace's), not time compression, which would shrink an
  hour to a few cold starts. Every policy starts from the warm replicas the first
  minute needs, routes least-load (the gateway's default) and may run 1 to 32.
* **Routing**: a trace with prefixes (Mooncake) at 4x its rate on a fixed fleet sized
  so that its prefill, were nothing cached, keeps the fleet 70% busy (12 H100 replicas
  for the Mooncake trace): busy enough that where a request goes matters, not so busy
  that every router drowns. Time compression does not change which blocks recur, and
  more replicas hold more cache, so cache-aware routing has room to show.

Targets, sized for the profile. A replica of the H100 profile prefills ~14 of the Azure
code trace's 2k-token prompts a second and holds each ~0.5 s, so about 8 requests at once
is where its TTFT starts to climb: the concurrency targets default to 8 and sweep
x0.5..x4. For engines with slots (llama.cpp) they default to the slots, except the HPA
on in-flight per pod: a pod's in-flight stops at its slots (the gateway queues the
rest), so a target at the slots never scales; it aims at 75% of them. The HPA on CPU
keeps the textbook 70% (sweep 50-90%); KEDA keeps the production-stack tutorial's 5
waiting requests (sweep 2-20; behind a gateway that queues for slots, the engines never
report a queue, so KEDA on it never scales). KubeAI's and Knative's own defaults (100
requests per pod) would never scale an 8B model out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiplane.api.model import Autoscaling
from aiplane.policies.autoscaling import AutoscalingConfig
from aiplane.policies.routing import router_for
from aiplane.sim.serve import baselines
from aiplane.sim.serve.autoscalers import Aiplane, SimAutoscaler
from aiplane.sim.serve.metrics import Result, summarize
from aiplane.sim.serve.oracle import Oracle
from aiplane.sim.serve.profiles import Profile
from aiplane.sim.serve.simulate import COLD_START_TIMEOUT, RouterFactory, Simulation
from aiplane.sim.serve.traces import Trace

AUTOSCALERS = ("aiplane", "hpa-cpu", "hpa-concurrency", "kubeai", "knative", "keda")
ROUTERS = ("aiplane", "least-load", "power-of-two", "round-robin", "random", "chwbl", "oracle")
NEEDS = (1, 4, 16)  # replicas the autoscaling scenarios' busiest minute needs
BUSY = 0.8  # a replica counted as needed at this share of its prefill rate
MIN_REPLICAS, MAX_REPLICAS = 1, 32
ROUTING_MULTIPLIER = 4.0
ROUTING_BUSY = 0.7
SCALE_ROUTER = "least-load"  # the gateway's default, for the autoscaling runs


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "autoscaling" | "routing"
    trace: Trace
    multiplier: float
    replicas: int  # the warm fleet at time 0 (fixed, for routing)
    note: str


def prefill_rates(trace: Trace, profile: Profile, window: float = 60.0) -> tuple[float, float]:
    """Mean and busiest-``window`` prefill work per second, nothing cached (equivalent tokens)."""
    buckets: dict[int, float] = {}
    total = 0.0
    for r in trace.requests:
        prompt = min(r.prompt_tokens, profile.max_context)
        work = profile.prefill_work(prompt, 0)
        total += work
        key = int(r.arrival // window)
        buckets[key] = buckets.get(key, 0.0) + work
    span = max(trace.duration, window)
    return total / span, max(buckets.values()) / window


def _round(x: float) -> float:
    """Two significant figures, so the multipliers read as chosen."""
    if x <= 0:
        return 1.0
    digits = 1 - math.floor(math.log10(x))
    return round(x, max(0, digits))


def warm_replicas(trace: Trace, profile: Profile) -> int:
    """The replicas the trace's first minute needs: every policy starts with them warm."""
    first = sum(
        profile.prefill_work(min(r.prompt_tokens, profile.max_context), 0)
        for r in trace.requests
        if r.arrival < 60.0
    )
    return min(MAX_REPLICAS, max(MIN_REPLICAS, math.ceil(first / 60.0 / (profile.prefill_tps * BUSY))))


def autoscaling_multipliers(trace: Trace, profile: Profile) -> list[float]:
    _, peak = prefill_rates(trace, profile)
    per_replica = profile.prefill_tps * BUSY
    return [_round(need * per_replica / peak) for need in NEEDS]


def autoscaling_scenarios(trace: Trace, profile: Profile, multipliers: list[float] | None) -> list[Scenario]:
    out = []
    _, peak = prefill_rates(trace, profile)
    for m in multipliers or autoscaling_multipliers(trace, profile):
        need = m * peak / (profile.prefill_tps * BUSY)
        fast = trace.scaled(m)
        out.append(
            Scenario(
                name=f"autoscaling: {trace.name} x{m:g}",
                kind="autoscaling",
                trace=fast,
                multiplier=m,
                replicas=warm_replicas(fast, profile),
                note=f"{len(fast.requests)} requests over {fast.duration:.0f}s; busiest minute needs "
                f"~{need:.1f} replicas",
            )
        )
    return out


def routing_scenario(trace: Trace, profile: Profile, multiplier: float | None) -> Scenario:
    m = multiplier or ROUTING_MULTIPLIER
    mean, _ = prefill_rates(trace, profile)
    fleet = max(2, math.ceil(m * mean / (profile.prefill_tps * ROUTING_BUSY)))
    fast = trace.compressed(m)
    return Scenario(
        name=f"routing: {trace.name} x{m:g} on {fleet} replicas",
        kind="routing",
        trace=fast,
        multiplier=m,
        replicas=fleet,
        note=f"{len(fast.requests)} requests over {fast.duration:.0f}s; uncached prefill keeps the fleet "
        f"{m * mean / (profile.prefill_tps * fleet):.0%} busy",
    )


# --- policies --------------------------------------------------------------------------
def default_target(policy: str, profile: Profile) -> float:
    if policy == "hpa-cpu":
        return 0.7
    if policy == "keda":
        return 5.0
    if profile.slots is None:
        return 8.0
    if policy == "hpa-concurrency":  # in flight at a pod stops at its slots: aim below them
        return 0.75 * profile.slots
    return float(profile.slots)


def sweep_targets(policy: str, profile: Profile) -> tuple[float, ...]:
    if policy == "hpa-cpu":
        return (0.5, 0.7, 0.9)
    if policy == "keda":
        return (2.0, 5.0, 10.0, 20.0)
    base = default_target(policy, profile)
    return tuple(base * k for k in (0.5, 1.0, 2.0, 4.0))


def autoscaler(policy: str, target: float, profile: Profile) -> SimAutoscaler:
    lo, hi = MIN_REPLICAS, MAX_REPLICAS
    if policy == "aiplane":
        return Aiplane(
            AutoscalingConfig(
                metric="concurrency",
                target=target,
                min_replicas=lo,
                max_replicas=hi,
                cold_start=profile.cold_start_s,
                replica_concurrency=profile.slots,
                headroom=Autoscaling().headroom,  # the Model's default
            )
        )
    if policy == "hpa-cpu":
        return baselines.Hpa("hpa-cpu", "cpu", target, lo, hi)
    if policy == "hpa-concurrency":
        return baselines.Hpa("hpa-concurrency", "concurrency", target, lo, hi)
    if policy == "kubeai":
        return baselines.KubeAi(target=target, min_replicas=lo, max_replicas=hi)
    if policy == "knative":
        return baselines.Knative(target=target, min_replicas=lo, max_replicas=hi)
    if policy == "keda":
        return baselines.Keda(target=target, min_replicas=lo, max_replicas=hi)
    raise ValueError(f"unknown autoscaler {policy!r} (known: {', '.join(AUTOSCALERS)})")


def router(policy: str, seed: int) -> RouterFactory:
    if policy == "oracle":
        return lambda fleet: Oracle(fleet.replicas)
    params = {"seed": seed} if policy == "random" else {}
    router_for(policy, **params)  # an unknown name fails here, before any replay
    return lambda fleet: router_for(policy, **params)


# --- runs ------------------------------------------------------------------------------
def run(
    scenario: Scenario,
    profile: Profile,
    policies: list[str],
    *,
    sweep: bool = False,
    seed: int = 0,
    timeout: float = COLD_START_TIMEOUT,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """One result per policy (and per target when ``sweep``), in the order given."""
    results = []
    for policy in policies:
        if scenario.kind == "routing":
            runs: list[tuple[str, float | None, RouterFactory, SimAutoscaler | None]] = [
                (policy, None, router(policy, seed), None)
            ]
        else:
            targets = sweep_targets(policy, profile) if sweep else (default_target(policy, profile),)
            runs = [
                (
                    f"{policy}@{t:g}" if sweep else policy,
                    t,
                    router(SCALE_ROUTER, seed),
                    autoscaler(policy, t, profile),
                )
                for t in targets
            ]
        for label, target, route, scale in runs:
            started = time.perf_counter()
            replay = Simulation(
                scenario.trace, profile, route, scale, replicas=scenario.replicas, timeout=timeout
            ).run()
            result = summarize(
                label, replay, profile.ttft_slo_s, target=target, seconds=time.perf_counter() - started
            )
            results.append(result)
            if progress:
                progress(result)
    return results
