"""``aiplane sim schedule --departures`` through the shared cycle: numbers worked out by hand.

Queue quotas are each QoS class's share of the trace's GPU-seconds (all of the slice in
one cohort); utilisation is averaged from the first to the last arrival.
"""

from __future__ import annotations

import pytest

from aiplane.policies.scheduling.fleet import NodeShape, PodShape
from aiplane.sim import departures
from aiplane.sim.traces import TracePod


def node(name: str, gpus: int) -> NodeShape:
    return NodeShape(name, 64_000, 262_144, gpus, "T4")


def pod(name: str, gpus: int, qos: str, created: float, deleted: float) -> TracePod:
    return TracePod(PodShape(name, 1000, 1024, gpus, 1000 if gpus else 0), qos, created, deleted)


def test_reclaimed_pod_is_requeued_and_runs_only_what_it_had_left() -> None:
    """One 4-GPU node. Quotas: BE 4*240/440 = 2.182, LS 1.818. Four BE pods fill the node,
    borrowing LS's idle quota; at 10 s the LS pod reclaims it: be0 is evicted after 10 s of
    its 60, waits (its queue is over quota) until the others leave at 60 s, and runs 50 s."""
    pods = [pod(f"be{i}", 1, "BE", 0, 60) for i in range(4)]
    pods += [pod("ls0", 1, "LS", 10, 210), pod("tail", 0, "BE", 300, 301)]
    stats = departures.replay_departures([node("n0", 4)], pods, "best-fit", 42)
    assert stats.preemptions == 1
    assert stats.never_started == 0
    # GPU-seconds until the last arrival (300 s): 4x10 + 4x50 + 2x50 + 1x100 = 440 of 4x300;
    # had be0 run all 60 s again it would be 450
    assert stats.gpu_utilisation == pytest.approx(440 / 1200)
    # waits: be0 60 s (arrival to its last start), everyone else 0
    assert stats.mean_wait_s == pytest.approx(60 / 6)
    assert stats.p95_wait_s == pytest.approx(0.75 * 60)


def test_priority_preemption_victim_restarts_at_once_where_there_is_room() -> None:
    """Two 2-GPU nodes, one BE pod on each (spread). The 2-GPU LS pod fits its quota
    (borrowing) but no node: be0 is evicted, the LS pod takes its node, and be0 restarts on
    the other node at the same instant, to run the 90 s it had left."""
    pods = [pod("be0", 1, "BE", 0, 100), pod("be1", 1, "BE", 0, 100)]
    pods += [pod("ls0", 2, "LS", 10, 60), pod("tail", 0, "BE", 200, 201)]
    stats = departures.replay_departures([node("n0", 2), node("n1", 2)], pods, "spread", 42, load=1.0)
    assert stats.preemptions == 1
    assert stats.never_started == 0
    # 2x10 + 4x50 + 2x40 = 300 GPU-seconds of 4x200
    assert stats.gpu_utilisation == pytest.approx(300 / 800)
    assert stats.mean_wait_s == pytest.approx(10 / 4)  # be0 restarted at 10 s


def test_best_effort_pods_borrow_idle_quota_instead_of_waiting() -> None:
    """BE's quota is 4*150/350 = 1.714 GPUs, yet its three 1-GPU pods start at once on
    LS's idle quota; the LS pod arrives after they left and needs no reclaim."""
    pods = [pod(f"be{i}", 1, "BE", 0, 50) for i in range(3)] + [pod("ls0", 1, "LS", 100, 300)]
    stats = departures.replay_departures([node("n0", 4)], pods, "best-fit", 42, load=1.0)
    assert stats.preemptions == 0
    assert stats.never_started == 0
    assert stats.mean_wait_s == 0
    assert stats.gpu_utilisation == pytest.approx(3 * 50 / (4 * 100))  # without borrowing 1 of 3


def test_a_pod_passed_over_for_300s_gets_a_node_reserved_and_starts() -> None:
    """Two 4-GPU nodes, spread. A 1-GPU LS pod arrives every 10 s for 40 s, so each node
    keeps two: every departure leaves 3 GPUs free, taken again by the next arrival. The
    4-GPU LS pod, of the same priority and older, is tried first each time but fits no
    node, and would wait for the stream to end (about 1020 s). At 320 s it has waited
    305 s and reserves n0, where that instant's departure left one pod; the newcomers go to
    n1; at 340 s n0's last pod leaves and it starts. Nobody else waits."""
    pods = [pod(f"s{k}", 1, "LS", 10 * k, 10 * k + 40) for k in range(101)]
    pods.append(pod("big", 4, "LS", 15, 65))
    stats = departures.replay_departures([node("n0", 4), node("n1", 4)], pods, "spread", 42, load=1.0)
    assert stats.preemptions == 0
    assert stats.never_started == 0
    assert stats.mean_wait_s == pytest.approx((340 - 15) / len(pods))


def test_a_reservation_does_not_hold_back_higher_priority_pods() -> None:
    """Two 2-GPU nodes, spread. The 1-GPU LS stream keeps one pod on each node, and each
    departure's node goes to the next LS arrival, which outranks the 2-GPU BE pod: its
    reservation (from 320 s) binds only its own priority and lower, so it waits for the
    stream to end: at 1010 s s99 leaves, no arrival follows, and its node is free."""
    pods = [pod(f"s{k}", 1, "LS", 10 * k, 10 * k + 20) for k in range(101)]
    pods.append(pod("big", 2, "BE", 15, 65))
    stats = departures.replay_departures([node("n0", 2), node("n1", 2)], pods, "spread", 42, load=1.0)
    assert stats.preemptions == 0
    assert stats.never_started == 0
    assert stats.mean_wait_s * len(pods) == pytest.approx(1010 - 15)


def test_a_pod_no_node_can_take_is_counted_as_never_started() -> None:
    pods = [pod("be0", 1, "BE", 0, 50), pod("huge", 8, "LS", 5, 100), pod("be1", 1, "BE", 10, 20)]
    stats = departures.replay_departures([node("n0", 4)], pods, "best-fit", 42, load=1.0)
    assert (stats.never_started, stats.preemptions, stats.mean_wait_s) == (1, 0, 0)
