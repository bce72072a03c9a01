"""GPU tiers with their usable memory, and the recommendation of the smallest tier or fewest GPUs that fit."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.estimate import estimate
from app.core.plan import MAX_GPUS, TrainingPlan
from app.core.spec import ModelSpec

MIB = 1024 * 1024
GIB = 1024 * MIB

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
    headroom_bytes: int = Field(description="Usable bytes left after the estimate on plan.gpus GPUs (negative: short).")
    gpus_needed: int | None = Field(
        description="Fewest GPUs of this tier under the plan's sharding; None if none suffice."
    )
    reason: str | None = Field(None, description="Why gpus_needed is None.")


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    headroom: float
    recommended: str | None = Field(
        description="Smallest tier that fits on plan.gpus, else the tier needing fewest GPUs."
    )
    recommended_gpus: int | None
    tiers: tuple[TierFit, ...]


def _fits(device_bytes: int, tier: GpuTier, headroom: float) -> bool:
    return device_bytes <= tier.usable_bytes * (1 - headroom)


def _gpus_needed(
    model: ModelSpec, plan: TrainingPlan, tier: GpuTier, headroom: float, cache: dict[int, int]
) -> int | None:
    def per_gpu(n: int) -> int:
        if n not in cache:
            cache[n] = estimate(model, plan.model_copy(update={"gpus": n})).device_bytes
        return cache[n]

    if _fits(per_gpu(1), tier, headroom):
        return 1
    if plan.sharding == "ddp":
        return None  # every DDP replica holds the whole model
    limit = min(MAX_GPUS, model.arch.num_layers) if plan.sharding == "none" else MAX_GPUS
    if not _fits(per_gpu(limit), tier, headroom):
        return None
    lo, hi = 1, limit  # per-GPU bytes never rise with more GPUs: binary search the first that fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(per_gpu(mid), tier, headroom):
            hi = mid
        else:
            lo = mid
    return hi


def recommend(
    model: ModelSpec, plan: TrainingPlan, headroom: float = 0.10, tiers: tuple[GpuTier, ...] = GPU_TIERS
) -> Recommendation:
    """Judge every tier: fits on plan.gpus, headroom left, and the fewest GPUs that would do."""
    device = estimate(model, plan).device_bytes
    cache: dict[int, int] = {plan.gpus: device} if plan.gpus == 1 else {}
    fits: list[TierFit] = []
    for tier in tiers:
        needed = _gpus_needed(model, plan, tier, headroom, cache) if plan.device == "cuda" else None
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
                fits=_fits(device, tier, headroom),
                headroom_bytes=tier.usable_bytes - device,
                gpus_needed=needed,
                reason=reason,
            )
        )
    fitting = sorted((f for f in fits if f.fits), key=lambda f: (f.usable_bytes, f.gpu))
    if fitting:
        best: TierFit | None = fitting[0]
        count: int | None = plan.gpus
    else:
        candidates = sorted((f for f in fits if f.gpus_needed), key=lambda f: (f.gpus_needed or 0, f.usable_bytes))
        best = candidates[0] if candidates else None
        count = best.gpus_needed if best else None
    return Recommendation(
        headroom=headroom, recommended=best.gpu if best else None, recommended_gpus=count, tiers=tuple(fits)
    )
