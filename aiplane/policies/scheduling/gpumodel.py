"""One rule for "does this GPU satisfy that request": the only GPU-model matcher in aiplane.

A request names one model or several alternatives (``V100M16|V100M32``, as in the
Alibaba trace's ``gpu_spec``); a GPU has one model name. Names are compared whole and
without case, after resolving the aliases users write (``A100``) to the product names
GPU feature discovery reports (``NVIDIA-A100-SXM4-80GB``), so ``A100`` never matches an
``A100-40GB`` by accident, as a substring rule would. Placement (local GPUs, cluster
nodes, the simulator), quota lookup and lowering all call this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GpuProduct:
    """A GPU as GPU feature discovery labels it, with a typical 8-GPU host (the dev cluster's fleet)."""

    alias: str
    product: str  # nvidia.com/gpu.product
    memory_mib: int  # nvidia.com/gpu.memory
    family: str  # nvidia.com/gpu.family
    host_cpu: int  # vCPU of an 8-GPU host
    host_memory_gib: int
    instance_type: str


PRODUCTS: dict[str, GpuProduct] = {
    p.alias: p
    for p in (
        GpuProduct("H200", "NVIDIA-H200", 143771, "hopper", 192, 2048, "p5en.48xlarge"),
        GpuProduct("H100", "NVIDIA-H100-80GB-HBM3", 81559, "hopper", 192, 2048, "p5.48xlarge"),
        GpuProduct("A100", "NVIDIA-A100-SXM4-80GB", 81920, "ampere", 96, 1152, "p4de.24xlarge"),
        GpuProduct("A100-40GB", "NVIDIA-A100-SXM4-40GB", 40960, "ampere", 96, 1152, "p4d.24xlarge"),
        GpuProduct("L40S", "NVIDIA-L40S", 46068, "ada-lovelace", 192, 1536, "g6e.48xlarge"),
        GpuProduct("L4", "NVIDIA-L4", 23034, "ada-lovelace", 192, 768, "g6.48xlarge"),
        GpuProduct("A10G", "NVIDIA-A10G", 23028, "ampere", 192, 768, "g5.48xlarge"),
        GpuProduct("T4", "Tesla-T4", 15360, "turing", 96, 384, "g4dn.metal"),
    )
}
SEPARATOR = "|"
ANY = "*"


def product(alias: str) -> GpuProduct | None:
    """The catalogue entry for ``alias`` (any case), or None for a name outside it."""
    return _by_alias().get(alias.lower())


@lru_cache(maxsize=1)
def _by_alias() -> dict[str, GpuProduct]:
    return {k.lower(): v for k, v in PRODUCTS.items()}


@lru_cache(maxsize=1)
def _canonical() -> dict[str, str]:
    """Lower-cased alias or product name -> lower-cased product name."""
    table = {}
    for p in PRODUCTS.values():
        table[p.alias.lower()] = p.product.lower()
        table[p.product.lower()] = p.product.lower()
    return table


def canonical(name: str) -> str:
    """One spelling per model: the product name for a known alias, else the name itself, in
    lower case with spaces as dashes (NVML says ``Tesla T4`` where GFD labels ``Tesla-T4``)."""
    key = "-".join(name.lower().split())
    return _canonical().get(key, key)


@lru_cache(maxsize=4096)
def parse_spec(text: str | None) -> frozenset[str]:
    """``"V100M16|V100M32"`` -> the canonical names it accepts; empty (any model) for None or ``""``/``*``."""
    if not text:
        return frozenset()
    names = frozenset(canonical(part) for part in text.split(SEPARATOR) if part.strip())
    return frozenset() if canonical(ANY) in names else names


def spec_matches(spec: str | None, model: str | None) -> bool:
    """Whether a GPU of ``model`` satisfies ``spec``. No spec accepts every model; a GPU of
    unknown model satisfies only a request without one."""
    wanted = parse_spec(spec)
    if not wanted:
        return True
    if model is None:
        return False
    have = canonical(model)
    # a name outside the catalogue may drop the vendor's prefix: "RTX-4090" is an
    # "NVIDIA-GeForce-RTX-4090"; a dash-separated suffix, never a substring
    return have in wanted or any(w not in _canonical().values() and have.endswith("-" + w) for w in wanted)


def first_match(spec: str | None, models: Iterable[str]) -> str | None:
    """The first of ``models`` (quota keys, node models) that ``spec`` accepts, in the given order."""
    return next((m for m in models if spec_matches(spec, m)), None)
