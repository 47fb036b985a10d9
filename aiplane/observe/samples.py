"""Samples of one scrape, and what Prometheus computes from two of them.

The local plane has no Prometheus of its own, so ``aiplane top`` (two scrapes of the
plane's ``/metrics``) and the plane's metrics history (two reads of its registry) do
Prometheus's arithmetic themselves: a counter's increase across a reset, and
``histogram_quantile``. Both follow Prometheus's definitions, so a figure here and the
same query in Prometheus agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

Labels = dict[str, str]


@dataclass
class Snapshot:
    """Every sample of a scrape by series name: (labels, value) pairs."""

    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)

    @classmethod
    def of_samples(cls, samples: Iterable[Sample]) -> Snapshot:
        snap = cls()
        for s in samples:
            snap.samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return snap

    @classmethod
    def read(cls, registry: CollectorRegistry) -> Snapshot:
        return cls.of_samples(s for family in registry.collect() for s in family.samples)

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """A ``/metrics`` page in Prometheus's text format."""
        return cls.of_samples(s for family in text_string_to_metric_families(text) for s in family.samples)

    def of(self, name: str) -> list[tuple[Labels, float]]:
        return self.samples.get(name, [])

    def sum_by(self, name: str, label: str, where: Labels | None = None) -> dict[str, float]:
        """``sum by (label) (name{where})``."""
        out: dict[str, float] = {}
        for labels, v in self.of(name):
            if where and any(labels.get(k) != want for k, want in where.items()):
                continue
            key = labels.get(label, "")
            out[key] = out.get(key, 0.0) + v
        return out

    def buckets_by(self, histogram: str, label: str) -> dict[str, dict[float, float]]:
        """A histogram's cumulative bucket counts (le -> count) summed by ``label``."""
        out: dict[str, dict[float, float]] = {}
        for labels, v in self.of(f"{histogram}_bucket"):
            per = out.setdefault(labels.get(label, ""), {})
            le = float(labels.get("le", "+Inf"))
            per[le] = per.get(le, 0.0) + v
        return out


def increase(now: float, before: float | None) -> float:
    """A counter's increase; one that went down was reset, and counts from zero (as
    Prometheus's ``increase`` does, without its extrapolation)."""
    if before is None or now < before:
        return now
    return now - before


def bucket_increase(now: dict[float, float], before: dict[float, float] | None) -> dict[float, float]:
    """Per-bucket increase of a histogram; any bucket that went down means a reset."""
    old = before or {}
    if any(v < old.get(le, 0.0) for le, v in now.items()):
        old = {}
    return {le: v - old.get(le, 0.0) for le, v in now.items()}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative bucket counts (le -> count):
    linear within the bucket the rank falls in; the last finite bound when it falls in
    +Inf; None without observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return bounds[-2] if len(bounds) > 1 else None
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return None
