"""In-flight and queued requests per model and replica: the gateway's view of load.

The autoscaler reads it (concurrency is the signal), the router reads it (least load).
"""

from __future__ import annotations

from collections import defaultdict


class LoadTracker:
    def __init__(self) -> None:
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self.queued: defaultdict[str, int] = defaultdict(int)
        self.per_replica: defaultdict[str, int] = defaultdict(int)
        self.last_request: dict[str, float] = {}

    def start(self, model: str, replica_id: str) -> None:
        self.in_flight[model] += 1
        self.per_replica[replica_id] += 1

    def finish(self, model: str, replica_id: str) -> None:
        self.in_flight[model] -= 1
        self.per_replica[replica_id] -= 1
        if self.per_replica[replica_id] <= 0:
            del self.per_replica[replica_id]

    def replica_load(self, replica_id: str) -> int:
        return self.per_replica.get(replica_id, 0)
