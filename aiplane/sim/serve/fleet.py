"""The simulated replicas of one model: starting, ready, draining, gone; and what they cost."""

from __future__ import annotations

from aiplane.sim.serve.profiles import Profile
from aiplane.sim.serve.replica import Replica


class Fleet:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.replicas: dict[str, Replica] = {}  # every replica that ever existed, by id, in start order
        self.cold_starts = 0  # replicas started after the beginning (the initial ones are warm)
        self.start_times: list[float] = []  # measured start-to-ready of the cold-started ones
        self._n = 0

    def start(self, now: float, *, warm: bool = False) -> Replica:
        """A new replica; a warm one (the fleet at time 0) is ready at once and costs no cold start."""
        replica = Replica(f"r{self._n}", self.profile, now)
        self._n += 1
        self.replicas[replica.id] = replica
        if warm:
            self.mark_ready(replica, now)
        else:
            self.cold_starts += 1
        return replica

    def mark_ready(self, replica: Replica, now: float) -> None:
        replica.state = "ready"
        replica.ready_at = now
        replica.t = now
        if now > replica.started_at:
            self.start_times.append(now - replica.started_at)

    def remove(self, replica: Replica, now: float) -> None:
        replica.state = "gone"
        replica.removed_at = now

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state != "gone"]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state == "ready"]

    def current(self) -> list[Replica]:
        """Wanted and existing: starting or ready, not draining (what an autoscaler counts)."""
        return [r for r in self.replicas.values() if r.state in ("starting", "ready")]

    def gpu_seconds(self, end: float) -> float:
        """Device-seconds of every replica that existed, starting and draining included."""
        total = 0.0
        for r in self.replicas.values():
            until = r.removed_at if r.removed_at is not None else end
            total += max(0.0, until - r.started_at) * self.profile.gpus
        return total
