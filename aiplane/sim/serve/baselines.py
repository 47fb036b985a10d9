"""The autoscalers aiplane is compared with, each as its documentation and code define it.

All decide over the simulator's ``View`` (the same ``Signals`` aiplane's autoscaler reads)
and return ``ScaleTo`` and a frozen state, like aiplane's. Bounds (min/max replicas) are
the experiment's, passed in, so every policy has the same room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from aiplane.policies.autoscaling import ScaleTo
from aiplane.sim.serve.autoscalers import View


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - 1e-9))


def _clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, n))


@dataclass(frozen=True)
class HpaState:
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, raw desired) within 300 s
    scale_ups: tuple[tuple[float, int], ...] = ()  # (time, replicas added) within the policy period


@dataclass(frozen=True)
class Hpa:
    """The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) with its default behaviour.

    From the Kubernetes docs ("Horizontal Pod Autoscaling", "Algorithm details") and
    ``pkg/controller/podautoscaler``: every ``--horizontal-pod-autoscaler-sync-period``
    (15 s) desired = ceil(current x metric / target), skipped while the ratio is within
    ``--horizontal-pod-autoscaler-tolerance`` (0.1). Pods not yet ready have no metrics:
    when scaling up they count as 0, when scaling down as at target, and a recount that
    flips the direction or falls within tolerance keeps the replicas. Default
    ``behavior``: scale-down takes the highest recommendation of the last 300 s
    (``stabilizationWindowSeconds``), scale-up has no window and adds at most
    max(100%, 4 pods) per 15 s period; scale-down may remove every pod in a period.

    ``metric``: ``cpu`` (Resource, Utilization: the mean CPU use of ready pods against
    ``target``, e.g. 0.7), ``concurrency`` (a Pods metric, AverageValue: requests in flight
    per ready pod) or ``waiting`` (an External metric, AverageValue: the engines' waiting
    requests summed, over ``target`` per replica, what KEDA's Prometheus scaler feeds it).
    """

    name: str
    metric: str
    target: float
    min_replicas: int = 1
    max_replicas: int = 32
    interval: float = 15.0
    tolerance: float = 0.1
    downscale_window: float = 300.0
    up_period: float = 15.0
    up_pods: int = 4
    up_percent: float = 100.0

    def initial(self) -> HpaState:
        return HpaState()

    def wake(self, view: View, state: HpaState) -> tuple[ScaleTo | None, HpaState]:
        return None, state  # an HPA cannot scale from zero: it waits for its sync

    def raw(self, view: View) -> tuple[int, str]:
        """The replica calculator's answer, before behaviour."""
        current = view.current
        s = view.signals
        if self.metric == "waiting":
            total = s.engine_waiting
            if total is None:
                return current, "no metric: holding"
            ratio = total / (self.target * max(current, 1))
            if abs(1.0 - ratio) <= self.tolerance:
                return current, f"waiting {total:g} within tolerance of {self.target:g}/pod"
            return _ceil(total / self.target), f"waiting {total:g} / {self.target:g} per pod"
        if view.ready == 0:
            return current, "no pod metrics: holding"
        if self.metric == "cpu":
            if s.cpu_utilization is None:
                return current, "no CPU metrics: holding"
            mean = s.cpu_utilization
        else:
            mean = s.in_flight / view.ready
        ratio = mean / self.target
        missing = max(0, current - view.ready)
        what = f"{self.metric} {mean:.2f}/pod vs target {self.target:g}"
        if missing == 0:
            if abs(1.0 - ratio) <= self.tolerance:
                return current, f"{what}: within tolerance"
            return _ceil(ratio * view.ready), what
        pods = view.ready + missing
        if ratio > 1.0:  # unready pods count as 0 when scaling up
            recount = mean * view.ready / (self.target * pods)
        else:  # and as at target when scaling down
            recount = (mean * view.ready + self.target * missing) / (self.target * pods)
        if abs(1.0 - recount) <= self.tolerance or (ratio - 1.0) * (recount - 1.0) < 0:
            return current, f"{what}: {missing} unready, holding"
        return _ceil(recount * pods), f"{what}; {missing} unready"

    def decide(self, view: View, state: HpaState) -> tuple[ScaleTo, HpaState]:
        now, current = view.now, view.current
        desired, reason = self.raw(view)
        recs = (*(r for r in state.recommendations if now - r[0] < self.downscale_window), (now, desired))
        up = desired  # scale-up window 0 s
        down = max(v for _, v in recs)
        wanted = current
        if wanted < up:
            wanted = up
        if wanted > down:
            wanted = down
        added = sum(n for t, n in state.scale_ups if now - t < self.up_period)
        start = current - added
        limit = max(start + self.up_pods, math.ceil(start * (1 + self.up_percent / 100)))
        if wanted > limit:
            wanted, reason = limit, f"{reason}; scale-up limited to {limit}"
        wanted = _clamp(wanted, self.min_replicas, self.max_replicas)
        ups = tuple(u for u in state.scale_ups if now - u[0] < self.up_period)
        if wanted > current:
            ups = (*ups, (now, wanted - current))
        elif wanted < current and down > desired:
            reason = f"{reason}; stabilized at {wanted} (highest of {self.downscale_window:g}s)"
        return ScaleTo(wanted, reason), HpaState(recs, ups)


@dataclass(frozen=True)
class KedaState:
    hpa: HpaState = HpaState()
    last_poll: float | None = None
    last_active: float | None = None
    active: bool = True


@dataclass(frozen=True)
class Keda:
    """KEDA's ScaledObject with a Prometheus trigger on ``vllm:num_requests_waiting``, as in
    vLLM production-stack's tutorial (docs/source/use_cases/autoscaling-keda.rst):
    threshold 5, cooldownPeriod 360, minReplicaCount 1.

    KEDA (keda.sh, "ScaledObject specification") polls its triggers every
    ``pollingInterval`` (default 30 s) only to *activate*: 0 -> 1 when the metric exceeds
    ``activationThreshold`` (0), and back to 0 once no trigger was active for
    ``cooldownPeriod``. Between 1 and N it hands the metric to the HPA it creates (an
    External metric, AverageValue ``threshold`` per pod) with the HPA's default behaviour,
    so scale-down waits out the HPA's 300 s window, not the cooldown; with minReplicaCount
    1 the cooldown never applies.
    """

    target: float = 5.0
    min_replicas: int = 1
    max_replicas: int = 32
    polling_interval: float = 30.0
    cooldown: float = 360.0
    activation: float = 0.0
    name: str = "keda"

    @property
    def interval(self) -> float:
        return 15.0  # the HPA's sync; activation is checked every polling_interval

    def _hpa(self) -> Hpa:
        return Hpa("keda-hpa", "waiting", self.target, max(1, self.min_replicas), self.max_replicas)

    def initial(self) -> KedaState:
        return KedaState()

    def wake(self, view: View, state: KedaState) -> tuple[ScaleTo | None, KedaState]:
        return None, state  # activation waits for the next poll

    def decide(self, view: View, state: KedaState) -> tuple[ScaleTo, KedaState]:
        now = view.now
        waiting = view.signals.engine_waiting or 0.0
        polled = state.last_poll is not None and now - state.last_poll < self.polling_interval
        last_poll = state.last_poll if polled else now
        active, last_active = state.active, state.last_active
        if not polled:
            if waiting > self.activation:
                active, last_active = True, now
            elif last_active is None or now - last_active >= self.cooldown:
                active = False
        if self.min_replicas == 0 and not active:
            return ScaleTo(0, f"inactive for {self.cooldown:g}s cooldown"), replace(
                state, last_poll=last_poll, last_active=last_active, active=False
            )
        if view.current == 0:
            return ScaleTo(1, "activated"), replace(
                state, last_poll=last_poll, last_active=last_active, active=True
            )
        decision, hpa = self._hpa().decide(view, state.hpa)
        return decision, KedaState(hpa, last_poll, last_active, active)


@dataclass(frozen=True)
class KubeAiState:
    samples: tuple[float, ...] = ()
    consecutive_downs: int = 0


@dataclass(frozen=True)
class KubeAi:
    """KubeAI's model autoscaler (substratusai/kubeai, internal/modelautoscaler/autoscaler.go,
    internal/modelscaler/scaler.go, internal/config/system.go).

    Every ``modelAutoscaling.interval`` (10 s) it takes the active requests its proxy
    counts for the model (those held for a cold start too), feeds a simple moving average
    over ``timeWindow`` (10 min: 60 samples, the window starting full of zeros) and asks
    for ceil(average / ``targetRequests``) replicas (the Model's default is 100; sized
    here for the profile). A scale-down happens only after
    ceil(``scaleDownDelaySeconds`` (30) / interval) consecutive lower answers, and its
    counter is reset only by an equal or higher one. It skips a model with no ready
    endpoint; scale-from-zero is the proxy's: a request at zero replicas sets one at once.
    """

    target: float = 100.0
    min_replicas: int = 0
    max_replicas: int = 32
    scale_down_delay: float = 30.0
    interval: float = 10.0
    time_window: float = 600.0
    name: str = "kubeai"

    def initial(self) -> KubeAiState:
        return KubeAiState(samples=(0.0,) * math.ceil(self.time_window / self.interval))

    def wake(self, view: View, state: KubeAiState) -> tuple[ScaleTo | None, KubeAiState]:
        if view.current == 0 and self.max_replicas > 0:
            return ScaleTo(1, "request at zero replicas: scale to one"), state
        return None, state

    def decide(self, view: View, state: KubeAiState) -> tuple[ScaleTo, KubeAiState]:
        if view.ready == 0:
            return ScaleTo(view.current, "no endpoints: skipped"), state
        active = view.signals.demand
        samples = (*state.samples[1:], active)
        average = sum(samples) / len(samples)
        wanted = _clamp(_ceil(average / self.target), self.min_replicas, self.max_replicas)
        reason = f"ceil({average:.2f} / {self.target:g}) = {wanted}"
        required = math.ceil(self.scale_down_delay / self.interval)
        if view.current > wanted:
            if state.consecutive_downs < required:
                hold = ScaleTo(
                    view.current, f"{reason}; {state.consecutive_downs + 1} of {required} scale-downs"
                )
                return hold, KubeAiState(samples, state.consecutive_downs + 1)
            return ScaleTo(wanted, reason), KubeAiState(samples, state.consecutive_downs)
        return ScaleTo(wanted, reason), KubeAiState(samples, 0)


@dataclass(frozen=True)
class KpaState:
    samples: tuple[tuple[float, float], ...] = ()  # (time, concurrency) within the stable window
    panic_since: float | None = None
    max_panic: int = 0
    zero_since: float | None = None


@dataclass(frozen=True)
class Knative:
    """Knative Serving's KPA (knative.dev, "Configuring the autoscaler", "Additional
    autoscaling configuration for KPA"; ``pkg/autoscaler/scaling/autoscaler.go``).

    Every 2 s (tick-interval) the observed concurrency (requests at the pods and buffered
    in the activator) is averaged over the stable window (60 s) and the panic window
    (10% of it: 6 s); desired = ceil(average / (target x target-utilization 70%)). The
    replicas may rise at most x1000 and fall at most /2 a decision (max-scale-up-rate,
    max-scale-down-rate). When the panic window asks for >= 200% of the ready pods
    (panic-threshold-percentage) the KPA panics: it follows the panic window and does not
    scale down until 60 s without a panic condition. At zero demand over the stable
    window the last pod goes after scale-to-zero-grace-period (30 s). The activator wakes
    it at once on a request at zero.
    ``target`` is the concurrency target (container-concurrency-target-default is 100;
    sized here for the profile).
    """

    target: float = 100.0
    utilization: float = 0.7
    min_replicas: int = 0
    max_replicas: int = 32
    interval: float = 2.0
    stable_window: float = 60.0
    panic_fraction: float = 0.1
    panic_threshold: float = 2.0
    max_up_rate: float = 1000.0
    max_down_rate: float = 2.0
    grace: float = 30.0
    name: str = "knative"

    def initial(self) -> KpaState:
        return KpaState()

    def wake(self, view: View, state: KpaState) -> tuple[ScaleTo | None, KpaState]:
        return self.decide(view, state)

    def decide(self, view: View, state: KpaState) -> tuple[ScaleTo, KpaState]:
        now = view.now
        samples = (*(s for s in state.samples if now - s[0] < self.stable_window), (now, view.signals.demand))
        panic_window = self.stable_window * self.panic_fraction
        recent = [v for t, v in samples if now - t < panic_window]
        stable = sum(v for _, v in samples) / len(samples)
        panic = sum(recent) / len(recent)
        per_pod = self.target * self.utilization
        ready = max(1, view.ready)
        up_limit = math.ceil(self.max_up_rate * ready)
        down_limit = math.floor(ready / self.max_down_rate)
        desired_stable = _clamp(_ceil(stable / per_pod), down_limit, up_limit)
        desired_panic = _clamp(_ceil(panic / per_pod), down_limit, up_limit)
        panic_since = state.panic_since
        if (panic / per_pod) / ready >= self.panic_threshold:
            panic_since = now
        elif panic_since is not None and now - panic_since >= self.stable_window:
            panic_since = None
        if panic_since is not None:
            wanted = max(desired_panic, state.max_panic)
            reason = f"panic: {panic:.1f} over {panic_window:g}s / {per_pod:g} per pod"
            max_panic = wanted
        else:
            wanted, max_panic = desired_stable, 0
            reason = f"stable: {stable:.1f} over {self.stable_window:g}s / {per_pod:g} per pod"
        zero_since = state.zero_since
        if wanted == 0 and view.current > 0:
            zero_since = zero_since if zero_since is not None else now
            if now - zero_since < self.grace:
                wanted, reason = 1, f"{reason}; scale-to-zero grace {self.grace:g}s"
        elif wanted > 0:
            zero_since = None
        wanted = _clamp(wanted, self.min_replicas, self.max_replicas)
        return ScaleTo(wanted, reason), KpaState(samples, panic_since, max_panic, zero_since)
