"""Local Model replicas are placed by the shared scheduling cycle, the one local jobs run in.

So a replica cannot take the GPUs the cycle reserved for a starving job, never preempts
a job, and packs shares and takes whole GPUs by the same rule as jobs. The GPUs are
``Gpu`` values written down here (``fake-H100``), standing in for what NVML reports.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from builders import gpus, model

from aiplane.api import TrainingJob
from aiplane.engines import EngineRegistry, LocalLaunch
from aiplane.gateway.load import LoadTracker
from aiplane.policies.scheduling import Gpu
from aiplane.runtime.local import cycle
from aiplane.runtime.local.controller import LocalController
from aiplane.runtime.local.cycle import Running, Snapshot, Start, Wait, place_replica
from aiplane.runtime.local.store import Store
from aiplane.runtime.local.supervisor import Replica
from aiplane.runtime.local.workloads import LocalJob, local_job

H100S = tuple(Gpu(i, "fake-H100") for i in range(2))
THREE = tuple(Gpu(i, "fake-H100") for i in range(3))
FOUR_H100 = tuple(gpus(*["NVIDIA H100 80GB HBM3"] * 4))


def training(name: str, workers: int = 1, gpus: float = 2, **spec: Any) -> TrainingJob:
    body = {"command": ["true"], "workers": workers, "gpusPerWorker": gpus, **spec}
    return TrainingJob.model_validate({"kind": "TrainingJob", "metadata": {"name": name}, "spec": body})


def job(name: str, gpus: float = 2, created: float = 0.0, **spec: Any) -> LocalJob:
    return local_job(training(name, gpus=gpus, **spec), 1, created)


def devices_of(placed: Start | Wait) -> tuple[int, ...]:
    assert isinstance(placed, Start), placed
    (devices,) = placed.devices
    return devices


# -- shares and whole GPUs --------------------------------------------------------------
def test_two_half_gpu_replicas_share_one_device() -> None:
    first = place_replica(Snapshot(H100S), "m", 0.5)
    assert first == Start("Model/m", ((0,),), None, "shares GPU 0")
    second = place_replica(Snapshot(H100S, held={0: 0.5}), "m", 0.5)
    assert second == Start("Model/m", ((0,),), None, "shares GPU 0")
    # full now: the next half goes to the other GPU
    assert devices_of(place_replica(Snapshot(H100S, held={0: 1.0}), "m", 0.5)) == (1,)


@pytest.mark.parametrize(
    ("held", "need", "device"),
    [
        ({0: 0.5, 1: 0.25}, 0.5, 0),  # the one it fills exactly
        ({0: 0.75, 1: 0.25}, 0.5, 2),  # not GPU 1: the 0.25 left there would fit no share
        ({0: 0.5, 1: 0.5}, 0.5, 0),  # a tie goes to the lowest index
        ({0: 1.0, 1: 1.0, 2: 0.1}, 0.9, 2),  # exactly full is a fit
        ({1: 0.5}, 0.5, 1),  # best fit among equal scores: the half-used GPU, not the free GPU 0
        ({2: 0.5, 3: 0.25}, 0.25, 2),  # both stay usable by a share; the one with less room
    ],
)
def test_a_share_goes_where_it_fits_best(held: dict[int, float], need: float, device: int) -> None:
    assert devices_of(place_replica(Snapshot(FOUR_H100, held=held), "m", need)) == (device,)


def test_shares_fill_a_gpu_before_the_next_one_opens() -> None:
    held: dict[int, float] = {}
    for _ in range(4):
        (index,) = devices_of(place_replica(Snapshot(FOUR_H100, held=held), "m", 0.25))
        held[index] = held.get(index, 0.0) + 0.25
    assert held == {0: 1.0}
    assert devices_of(place_replica(Snapshot(FOUR_H100, held=held), "m", 0.25)) == (1,)


@pytest.mark.parametrize(
    ("held", "need", "devices"),
    [
        ({}, 1, (0,)),
        ({}, 2, (0, 1)),
        ({0: 1.0, 2: 0.5}, 2, (1, 3)),
        ({0: 0.25}, 1, (1,)),
        ({}, 4, (0, 1, 2, 3)),
    ],
)
def test_whole_gpus_take_free_devices(held: dict[int, float], need: float, devices: tuple[int, ...]) -> None:
    placed = place_replica(Snapshot(FOUR_H100, held=held), "m", need)
    assert placed == Start("Model/m", (devices,), None, f"GPU(s) {','.join(map(str, devices))}")


def test_running_jobs_hold_their_gpus() -> None:
    running = (Running(job("busy", gpus=1), ((0,),)),)
    assert devices_of(place_replica(Snapshot(H100S, running=running), "m", 1)) == (1,)
    two = (Running(job("both", gpus=1, workers=2), ((0,), (1,))),)
    assert place_replica(Snapshot(H100S, running=two), "m", 0.5) == Wait(
        "Model/m", "no GPU has 0.5 free", "placement"
    )


def test_not_enough_free_whole_gpus_names_the_counts() -> None:
    placed = place_replica(Snapshot(FOUR_H100, held={0: 1.0, 1: 0.5, 2: 1.0}), "m", 2)
    assert placed == Wait("Model/m", "needs 2 free GPU(s), 1 free of 4", "placement")


def test_no_gpu_with_room_for_a_share() -> None:
    placed = place_replica(Snapshot(FOUR_H100, held={i: 0.75 for i in range(4)}), "m", 0.5)
    assert placed == Wait("Model/m", "no GPU has 0.5 free", "placement")


def test_no_gpu_requested_needs_no_device() -> None:
    assert place_replica(Snapshot(()), "m", 0) == Start("Model/m", ((),), None, "no GPU requested")
    assert place_replica(Snapshot(H100S, held={0: 1.0, 1: 1.0}), "m", 0) == Start(
        "Model/m", ((),), None, "no GPU requested"
    )


def test_a_machine_without_gpus_says_so_and_names_no_model() -> None:
    placed = place_replica(Snapshot(()), "m", 1)
    assert placed == Wait("Model/m", "needs 1 GPU(s); this machine has no GPU", "placement")
    assert "None" not in placed.reason


# -- GPU models -----------------------------------------------------------------------
def test_a_model_this_machine_lacks_waits_naming_it_and_what_there_is() -> None:
    mixed = tuple(gpus("NVIDIA A100-SXM4-40GB", "NVIDIA L4", "NVIDIA L4"))
    assert place_replica(Snapshot(mixed), "m", 1, "H100") == Wait(
        "Model/m",
        "no GPU of model 'H100' on this machine (have: NVIDIA A100-SXM4-40GB, NVIDIA L4)",
        "placement",
    )
    assert place_replica(Snapshot(H100S), "m", 0.5, "A100") == Wait(
        "Model/m", "no GPU of model 'A100' on this machine (have: fake-H100)", "placement"
    )


def test_gpu_model_matches_whole_names_and_aliases() -> None:
    """One matcher (gpumodel.py): "A100" is the 80 GB part, never an A100-40GB."""
    mixed = tuple(gpus("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"))
    assert devices_of(place_replica(Snapshot(mixed), "m", 1, "h100")) == (1,)
    assert isinstance(place_replica(Snapshot(mixed), "m", 0.5, "A100"), Wait)
    assert devices_of(place_replica(Snapshot(mixed), "m", 0.5, "A100-40GB")) == (0,)
    assert devices_of(place_replica(Snapshot(mixed), "m", 0.5, "A100-40GB|H100")) in {(0,), (1,)}
    # a name outside the catalogue matches the machine's longer name by a dashed suffix
    rtx = (Gpu(0, "NVIDIA GeForce RTX 4090"),)
    assert devices_of(place_replica(Snapshot(rtx), "m", 1, "RTX-4090")) == (0,)


def test_whole_gpus_come_from_one_model() -> None:
    mixed = tuple(gpus("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"))
    assert devices_of(place_replica(Snapshot(mixed, held={1: 1.0}), "m", 1, "H100")) == (2,)
    assert place_replica(Snapshot(mixed, held={1: 1.0}), "m", 2, "H100") == Wait(
        "Model/m", "needs 2 free GPU(s), 1 free of 2", "placement"
    )
    assert place_replica(Snapshot(mixed, held={1: 1.0}), "m", 2) == Wait(
        "Model/m",
        "needs 2 free GPU(s) of one model, free: 1 of 1 on local/NVIDIA A100-SXM4-40GB, "
        "1 of 2 on local/NVIDIA H100 80GB HBM3",
        "placement",
    )


# -- reservations and preemption --------------------------------------------------------
def starving() -> tuple[LocalJob, tuple[Running, ...], dict[str, tuple[int, ...]]]:
    """A 2-GPU gang that waited past reserve_after_s behind a 2-GPU job on 3 GPUs: it
    reserved the machine, whose third GPU is free."""
    busy = (Running(job("busy", gpus=2), ((0, 1),)),)
    big = job("big", gpus=2)
    result = cycle.schedule(Snapshot(THREE, pending=(big,), running=busy, now=400.0))
    assert result.reservations == {big.key: (0,)}
    return big, busy, result.reservations


def test_a_replica_stays_off_the_gpus_reserved_for_a_starving_job() -> None:
    big, busy, reservations = starving()
    for need in (0.5, 1):
        snapshot = Snapshot(THREE, pending=(big,), running=busy, reservations=reservations, now=401.0)
        assert place_replica(snapshot, "m", need) == Wait(
            "Model/m",
            "GPU(s) 0,1,2 reserved for TrainingJob/big, a job that waited too long for them",
            "placement",
        )
    # without the reservation, GPU 2 would be the replica's: the reservation is what stops it
    unreserved = Snapshot(THREE, pending=(big,), running=busy, now=401.0)
    assert devices_of(place_replica(unreserved, "m", 0.5)) == (2,)


def test_once_the_starving_job_starts_the_replica_places() -> None:
    big, _, reservations = starving()
    # the busy job ends: the big one starts, and its reservation goes with it
    result = cycle.schedule(Snapshot(THREE, pending=(big,), reservations=reservations, now=500.0))
    (start,) = result.decisions
    assert isinstance(start, Start) and start.devices == ((0, 1),)
    assert result.reservations == {}
    running = (Running(big, start.devices),)
    snapshot = Snapshot(THREE, running=running, reservations=result.reservations, now=500.0)
    assert place_replica(snapshot, "m", 0.5) == Start("Model/m", ((2,),), None, "shares GPU 2")


@pytest.mark.parametrize("priority", [0, -50])
def test_a_replica_does_not_take_gpus_a_reserving_job_can_start_on_now(priority: int) -> None:
    """The reservation's job fits once the busy job is gone: it starts at the runner's next
    cycle, so the replica must not take its GPUs meanwhile, whatever the job's priority."""
    _, _, reservations = starving()
    big = job("big", gpus=2, priority=priority)
    snapshot = Snapshot(H100S, pending=(big,), reservations=reservations, now=401.0)
    placed = place_replica(snapshot, "m", 0.5)
    assert isinstance(placed, Wait) and "reserved for TrainingJob/big" in placed.reason


def test_a_reservation_on_another_gpu_model_leaves_the_rest_free() -> None:
    mixed = (Gpu(0, "fake-H100"), Gpu(1, "fake-H100"), Gpu(2, "fake-L4"))
    busy = (Running(job("busy", gpus=1, gpuModel="fake-H100"), ((0,),)),)
    big = job("big", gpus=2, gpuModel="fake-H100")
    result = cycle.schedule(Snapshot(mixed, pending=(big,), running=busy, now=400.0))
    assert result.reservations == {big.key: (0,)}  # node 0: the H100s
    snapshot = Snapshot(mixed, pending=(big,), running=busy, reservations=result.reservations)
    assert devices_of(place_replica(snapshot, "m", 1)) == (2,)
    assert place_replica(snapshot, "m", 1, "fake-H100") == Wait(
        "Model/m", "GPU(s) 0,1 reserved for TrainingJob/big, a job that waited too long for them", "placement"
    )


def test_a_replica_never_preempts_a_job() -> None:
    """Even a job of the lowest priority keeps its GPUs: the replica waits."""
    low = (Running(job("low", gpus=2, priority=-1000), ((0, 1),)),)
    placed = place_replica(Snapshot(H100S, running=low), "m", 1)
    assert placed == Wait("Model/m", "needs 1 free GPU(s), 0 free of 2", "placement")


def test_jobs_never_preempt_replicas() -> None:
    urgent = job("urgent", gpus=2, priority=1000)
    result = cycle.schedule(Snapshot(H100S, held={0: 1.0}, pending=(urgent,)))
    assert result.evictions == []
    assert result.decisions == [Wait(urgent.key, "0/1 nodes fit: 1 too few free GPUs", "placement")]


# -- the controller, with the jobs runner's reservations ----------------------------------
def controller(tmp_path: Path, machine: tuple[Gpu, ...]) -> LocalController:
    plane = LocalController(
        Store(tmp_path / "state.db"), EngineRegistry(), LoadTracker(), list(machine), tmp_path
    )
    # no engine process: the launch is a stub, and starting a replica only records it
    plane._launch = lambda m, port, devices: LocalLaunch(["true"])  # type: ignore[method-assign]
    plane.supervisor.start = lambda r: plane.supervisor.replicas.__setitem__(r.id, r)  # type: ignore[method-assign]
    return plane


def replica(rid: str, name: str, devices: tuple[int, ...]) -> Replica:
    return Replica(rid, name, 1, "127.0.0.1", 1, devices, Path("/dev/null"), LocalLaunch(["true"]))


async def test_the_controller_keeps_replicas_off_a_reservation_until_the_job_starts(tmp_path: Path) -> None:
    plane = controller(tmp_path, H100S)
    plane.jobs.reserve_after_s = 0.0  # the gang reserves at once
    plane._shares = {"old": 1.0, "new": 0.5}
    plane.supervisor.replicas["old-1"] = replica("old-1", "old", (0,))  # holds GPU 0
    plane.jobs.store.apply(training("big", gpus=2, command=["sleep", "30"]))
    try:
        await plane.jobs.reconcile(time.time(), plane._replicas_held())
        assert plane.jobs.reservations == {"TrainingJob/big": (0,)}
        snapshot = plane.jobs.snapshot_for_replicas(plane._replicas_held())
        assert [j.key for j in snapshot.pending] == ["TrainingJob/big"]
        new = model("new").gpus(0.5).build()
        assert plane._scale_up(new, 1, 1) == (
            "Pending: GPU(s) 0,1 reserved for TrainingJob/big, a job that waited too long for them"
        )
        assert set(plane.supervisor.replicas) == {"old-1"}  # GPU 1 was free, but held for the job
        # the old replica goes, the job starts on both GPUs and its reservation is gone
        del plane.supervisor.replicas["old-1"]
        await plane.jobs.reconcile(time.time(), plane._replicas_held())
        assert plane.jobs.reservations == {} and plane.jobs.runs["TrainingJob/big"].devices == ((0, 1),)
        assert plane._scale_up(new, 1, 1) == "Pending: no GPU has 0.5 free"
        plane.jobs.store.delete("TrainingJob", "big")
        await plane.jobs.reconcile(time.time(), plane._replicas_held())
        deadline = time.monotonic() + 20
        while plane.jobs.snapshot_for_replicas({}).running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # its workers stop in the background, holding the GPUs
        assert plane._scale_up(new, 1, 2) is None
        assert sorted(r.devices for r in plane.supervisor.replicas.values()) == [(0,), (0,)]
    finally:
        await plane.jobs.stop_all()
