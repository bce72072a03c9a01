"""GPU tiers with their usable memory, and the recommendation of the smallest tier or fewest GPUs that fit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.estimate import estimate
from app.core.plan import MAX_GPUS
from app.core.result import Estimate
from app.core.spec import ModelSpec
from app.core.units import MIB

Segment = Literal["consumer", "workstation", "datacenter"]


class GpuTier(BaseModel):
    """One GPU model; usable_bytes is the total memory the CUDA driver reports (torch total_memory)."""

    model_config = ConfigDict(frozen=True)

    name: str
    segment: Segment
    vendor: Literal["nvidia", "amd"] = "nvidia"
    memory_gb: int = Field(description="Marketed memory size.")
    usable_bytes: int = Field(description="Memory the driver reports as total (what a process can address).")


def _tier(
    name: str, segment: Segment, memory_gb: int, usable_mib: int, vendor: Literal["nvidia", "amd"] = "nvidia"
) -> GpuTier:
    return GpuTier(name=name, segment=segment, vendor=vendor, memory_gb=memory_gb, usable_bytes=usable_mib * MIB)


# usable_mib: total memory as nvidia-smi / torch.cuda.get_device_properties report it (driver-reserved part excluded)
GPU_TIERS: tuple[GpuTier, ...] = (
    _tier("RTX 3060", "consumer", 12, 12_288),
    _tier("RTX 4070 Ti", "consumer", 12, 12_282),
    _tier("RTX 4080", "consumer", 16, 16_376),
    _tier("RTX 4060 Ti 16GB", "consumer", 16, 16_380),
    _tier("RTX 3090", "consumer", 24, 24_576),
    _tier("RTX 4090", "consumer", 24, 24_564),
    _tier("RTX 5090", "consumer", 32, 32_607),
    _tier("RTX A6000", "workstation", 48, 49_140),
    _tier("RTX 6000 Ada", "workstation", 48, 49_140),
    _tier("L40S", "workstation", 48, 46_068),
    _tier("T4", "datacenter", 16, 15_360),
    _tier("A10G", "datacenter", 24, 23_028),
    _tier("L4", "datacenter", 24, 23_034),
    _tier("V100 32GB", "datacenter", 32, 32_768),
    _tier("A100 40GB", "datacenter", 40, 40_960),
    _tier("A100 80GB", "datacenter", 80, 81_920),
    _tier("H100 80GB", "datacenter", 80, 81_559),
    _tier("H100 NVL", "datacenter", 94, 95_830),
    _tier("H200", "datacenter", 141, 143_771),
    _tier("B200", "datacenter", 180, 183_359),
    _tier("MI300X", "datacenter", 192, 196_592, vendor="amd"),
)


def find_tier(name: str) -> GpuTier | None:
    key = name.strip().lower().replace(" ", "")
    return next((t for t in GPU_TIERS if t.name.lower().replace(" ", "") == key), None)


class TierFit(BaseModel):
    """How one tier holds the plan."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    usable_bytes: int
    fits: bool = Field(description="Fits on plan.gpus GPUs of this tier with the headroom kept free.")
    headroom_bytes: int = Field(
        description="Usable bytes left after the estimate on plan.gpus GPUs, before the headroom (negative: short)."
    )
    gpus_needed: int | None = Field(
        description="Fewest GPUs of this tier under the plan's sharding; None if none suffice."
    )
    reason: str | None = Field(None, description="Why gpus_needed is None.")


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    headroom: float = Field(description="Fraction of each tier's usable memory kept free (0.1 = 10 %).")
    recommended: str | None = Field(
        description="Smallest tier that fits on plan.gpus, else the tier needing fewest GPUs."
    )
    recommended_gpus: int | None
    tiers: tuple[TierFit, ...]


def budget_bytes(tier: GpuTier, headroom_fraction: float) -> int:
    """The one fit test's budget: a plan fits when device_bytes <= usable × (1 − headroom) (floored: bytes are
    whole, so `device <= int(x)` is `device <= x`)."""
    return int(tier.usable_bytes * (1 - headroom_fraction))


def first_passing(passes: Callable[[int], bool], failing: int, passing: int) -> int:
    """The smallest value in (failing, passing] for which `passes` holds, by bisection.

    The one monotone search of the core: it trusts the laws the core tests hold (per-GPU bytes never rise as GPUs
    are added; memory never falls as batch, sequence or rank grows), so `passes` flips once between the two.
    """
    while passing - failing > 1:
        mid = (failing + passing) // 2
        if passes(mid):
            passing = mid
        else:
            failing = mid
    return passing


def _gpus_needed(est: Estimate, model: ModelSpec, budget: int, per_gpu: Callable[[int], int]) -> int | None:
    """Fewest GPUs of one tier (its budget) under the plan's sharding; None when no count suffices."""
    plan = est.plan

    def fits_on(n: int) -> bool:
        return per_gpu(n) <= budget

    if fits_on(1):
        return 1
    if plan.sharding == "ddp":
        return None  # every DDP replica holds the whole model
    limit = min(MAX_GPUS, model.arch.num_layers) if plan.sharding == "none" else MAX_GPUS
    if not fits_on(limit):
        return None
    return first_passing(fits_on, 1, limit)


def recommend(
    model: ModelSpec, est: Estimate, headroom_fraction: float = 0.10, tiers: tuple[GpuTier, ...] = GPU_TIERS
) -> Recommendation:
    """Judge every tier for the plan `est` was made for: fits on plan.gpus, bytes left, and the fewest GPUs that
    would do (other GPU counts are estimated, each once)."""
    plan = est.plan
    cache: dict[int, int] = {plan.gpus: est.device_bytes} if plan.gpus == 1 else {}

    def per_gpu(n: int) -> int:
        if n not in cache:
            cache[n] = estimate(model, plan.model_copy(update={"gpus": n})).device_bytes
        return cache[n]

    fits: list[TierFit] = []
    for tier in tiers:
        budget = budget_bytes(tier, headroom_fraction)
        needed = _gpus_needed(est, model, budget, per_gpu) if plan.device == "cuda" else None
        reason = None
        if needed is None:
            reason = (
                "data-parallel replicas each hold the whole model: use fsdp or zero3"
                if plan.sharding == "ddp"
                else "does not fit even split across the maximum number of GPUs"
            )
        fits.append(
            TierFit(
                gpu=tier.name,
                usable_bytes=tier.usable_bytes,
                fits=est.device_bytes <= budget,
                headroom_bytes=tier.usable_bytes - est.device_bytes,
                gpus_needed=needed,
                reason=reason,
            )
        )
    return _recommendation(plan.gpus, headroom_fraction, fits)


def _recommendation(gpus: int, headroom_fraction: float, fits: list[TierFit]) -> Recommendation:
    """The smallest tier that fits on the plan's GPUs, else the tier needing the fewest GPUs."""
    fitting = sorted((f for f in fits if f.fits), key=lambda f: (f.usable_bytes, f.gpu))
    if fitting:
        best: TierFit | None = fitting[0]
        count: int | None = gpus
    else:
        candidates = sorted((f for f in fits if f.gpus_needed), key=lambda f: (f.gpus_needed or 0, f.usable_bytes))
        best = candidates[0] if candidates else None
        count = best.gpus_needed if best else None
    return Recommendation(
        headroom=headroom_fraction, recommended=best.gpu if best else None, recommended_gpus=count, tiers=tuple(fits)
    )
