"""GPU placement on one machine: whole GPUs take free devices, fractions pack best-fit."""

from __future__ import annotations

import pytest
from builders import gpus

from aiplane.policies.scheduling import Fit, NoFit, place

FOUR_H100 = gpus(
    "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"
)


@pytest.mark.parametrize("need", [0, 0.0, -1])
def test_no_gpu_requested_fits_with_no_devices(need: float) -> None:
    assert place(FOUR_H100, {}, need) == Fit((), "no GPU requested")
    assert place([], {}, need) == Fit((), "no GPU requested")


@pytest.mark.parametrize(
    ("used", "need", "devices"),
    [
        ({}, 1, (0,)),
        ({}, 2, (0, 1)),
        ({0: 1.0, 2: 0.5}, 2, (1, 3)),
        ({0: 0.25}, 1, (1,)),
        ({0: 0.0, 1: 1.0}, 1, (0,)),
        ({}, 4, (0, 1, 2, 3)),
    ],
)
def test_whole_gpus_take_free_devices(used: dict[int, float], need: float, devices: tuple[int, ...]) -> None:
    fit = place(FOUR_H100, used, need)
    assert isinstance(fit, Fit)
    assert fit.devices == devices
    assert fit.reason == f"{len(devices)} whole GPU(s)"


@pytest.mark.parametrize(
    ("used", "need", "device"),
    [
        ({0: 0.5, 1: 0.25}, 0.5, 0),  # the fullest that still fits
        ({0: 0.75, 1: 0.25}, 0.5, 1),  # GPU 0 has only 0.25 free
        ({0: 0.5, 1: 0.5}, 0.5, 0),  # a tie goes to the lowest index
        ({}, 0.5, 0),
        ({0: 1.0, 1: 1.0, 2: 0.1}, 0.9, 2),  # exactly full is a fit
        ({1: 0.2, 3: 0.6}, 0.25, 3),
    ],
)
def test_fractions_pack_onto_the_fullest_gpu_that_fits(
    used: dict[int, float], need: float, device: int
) -> None:
    assert place(FOUR_H100, used, need) == Fit((device,), f"shares GPU {device} (best fit)")


def test_fractions_fill_a_gpu_before_starting_the_next() -> None:
    used: dict[int, float] = {}
    for _ in range(4):
        fit = place(FOUR_H100, used, 0.25)
        assert isinstance(fit, Fit)
        (index,) = fit.devices
        used[index] = used.get(index, 0.0) + 0.25
    assert used == {0: 1.0}
    fit = place(FOUR_H100, used, 0.25)
    assert isinstance(fit, Fit) and fit.devices == (1,)


def test_not_enough_free_whole_gpus_names_the_counts() -> None:
    assert place(FOUR_H100, {0: 1.0, 1: 0.5, 2: 1.0}, 2) == NoFit("needs 2 free GPU(s), 1 free of 4")


def test_no_gpu_with_room_for_a_fraction() -> None:
    assert place(FOUR_H100, {i: 0.75 for i in range(4)}, 0.5) == NoFit("no GPU has 0.5 free")


def test_gpu_model_filter_matches_whole_names_and_aliases() -> None:
    """One matcher (policies/scheduling/gpumodel.py): "A100" is the 80 GB part, never an A100-40GB."""
    mixed = gpus("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
    fit = place(mixed, {}, 1, gpu_model="h100")
    assert isinstance(fit, Fit) and fit.devices == (1,)
    assert isinstance(place(mixed, {}, 0.5, gpu_model="A100"), NoFit)
    fit = place(mixed, {}, 0.5, gpu_model="A100-40GB")
    assert isinstance(fit, Fit) and fit.devices == (0,)
    fit = place(mixed, {}, 0.5, gpu_model="A100-40GB|H100")
    assert isinstance(fit, Fit) and fit.devices == (0,)


def test_gpu_model_filter_counts_only_matching_devices() -> None:
    mixed = gpus("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
    assert place(mixed, {1: 1.0}, 2, gpu_model="H100") == NoFit("needs 2 free GPU(s), 1 free of 2")


def test_missing_gpu_model_names_what_the_machine_has() -> None:
    mixed = gpus("NVIDIA A100-SXM4-40GB", "NVIDIA L4", "NVIDIA L4")
    assert place(mixed, {}, 1, gpu_model="H100") == NoFit(
        "no GPU of model 'H100' on this machine (have: NVIDIA A100-SXM4-40GB, NVIDIA L4)"
    )


def test_no_gpus_at_all_is_no_fit() -> None:
    result = place([], {}, 1)
    assert isinstance(result, NoFit)
    assert "has no GPU" in result.reason


def test_no_gpus_at_all_reason_does_not_mention_a_model_nobody_asked_for() -> None:
    result = place([], {}, 1)
    assert isinstance(result, NoFit)
    assert "None" not in result.reason
