"""GPU tiers: usable memory and the facts that decide whether, and how fast, a plan runs on each (with sources)."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.units import MIB

Segment = Literal["consumer", "workstation", "datacenter"]
Vendor = Literal["nvidia", "amd"]

# Where the facts come from (cited per tier in `sources`).
CUDA_GPUS = "https://developer.nvidia.com/cuda-gpus (compute capability)"
FLASH_ATTN = (
    "github.com/Dao-AILab/flash-attention README.md (FlashAttention-2: Ampere, Ada, Hopper; bf16 needs Ampere on; "
    "Turing: FlashAttention 1.x / flash-attention-turing; ROCm: MI200/MI300, backward head dim <= 128; "
    "FlashAttention-3: Hopper, H100/H800) and setup.py (CUDA archs 80;90;100;120)"
)
BNB = (
    "https://huggingface.co/docs/bitsandbytes/v0.50.0/installation (CUDA: compute capability 6.0+, LLM.int8() 7.5+; "
    "AMD GPUs officially supported; v0.48 docs: ROCm experimental)"
)
ADA_WP = "NVIDIA Ada GPU architecture whitepaper v2.01, appendix A (FP16 tensor TFLOPS with FP32 accumulate)"
AMPERE_WP = "NVIDIA Ampere GA102 GPU architecture whitepaper (GeForce FP16 tensor with FP32 accumulate: half rate)"
DERIVED = "derived: tensor cores x boost clock x 128 FLOP/clk (GeForce FP32-accumulate rate of the whitepapers)"


class GpuTier(BaseModel):
    """One GPU model; usable_bytes is the total memory the CUDA driver reports (torch total_memory).

    Compute figures are dense (no 2:4 sparsity) peak rates; `dense_16bit_tflops` is the FP16/BF16 tensor rate
    with FP32 accumulation, the one mixed-precision training uses.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    segment: Segment
    vendor: Vendor = "nvidia"
    memory_gb: int = Field(description="Marketed memory size.")
    usable_bytes: int = Field(description="Memory the driver reports as total (what a process can address).")
    architecture: str = Field("unknown", description="GPU architecture (and chip).")
    compute_capability: str = Field("", description="CUDA compute capability (AMD: the gfx target).")
    launched: int = Field(0, description="Launch year; breaks ties towards the older, cheaper generation.")
    bf16: bool = Field(True, description="bfloat16 tensor-core math (NVIDIA from Ampere, CC 8.0, on).")
    fp8: bool = Field(False, description="FP8 tensor cores (Ada, Hopper, Blackwell, CDNA 3).")
    flash_attention_2: bool = Field(True, description="FlashAttention-2 runs (CUDA: Ampere on; ROCm: MI200/MI300).")
    flash_attention_3: bool = Field(False, description="FlashAttention-3 runs (Hopper only).")
    fa2_max_backward_head_dim: int = Field(256, description="Largest head dim FlashAttention-2's backward supports.")
    bitsandbytes: bool = Field(True, description="bitsandbytes (NF4/FP4, 8-bit optimizers) supports the GPU.")
    int8_matmul: bool = Field(True, description="bitsandbytes LLM.int8() (CUDA compute capability 7.5 on).")
    bitsandbytes_note: str = Field("", description="Version and backend the bitsandbytes facts hold for.")
    memory_bandwidth_gbs: float = Field(0, description="Peak memory bandwidth, GB/s.")
    dense_16bit_tflops: float = Field(0, description="Dense FP16/BF16 tensor TFLOPS with FP32 accumulate.")
    fp32_tflops: float = Field(0, description="Dense FP32 (non-tensor) TFLOPS, for fp32 plans.")
    interconnect: str = Field("", description="GPU-to-GPU link.")
    interconnect_gbs: float = Field(0, description="GPU-to-GPU bandwidth per GPU and direction, GB/s (modelled).")
    sources: tuple[str, ...] = Field((), description="Where each fact comes from.")


PCIE3, PCIE4, PCIE5 = 16.0, 32.0, 64.0  # GB/s per direction of an x16 link (PCI-SIG: 8/16/32 GT/s x16)
BNB_CUDA = "bitsandbytes 0.50 (CUDA)"


def _tier(
    name: str, segment: Segment, memory_gb: int, usable_mib: int, vendor: Vendor = "nvidia", **facts: object
) -> GpuTier:
    facts.setdefault("bitsandbytes_note", BNB_CUDA)
    return GpuTier.model_validate(
        {
            "name": name,
            "segment": segment,
            "vendor": vendor,
            "memory_gb": memory_gb,
            "usable_bytes": usable_mib * MIB,
            **facts,
        }
    )


def _src(*own: str) -> tuple[str, ...]:
    return (*own, CUDA_GPUS, FLASH_ATTN, BNB)


# usable_mib: total memory as nvidia-smi / torch.cuda.get_device_properties report it (driver-reserved part excluded).
# 16-bit TFLOPS: dense, FP32 accumulate; bandwidth and links from the datasheet named in each row's sources.
# fmt: off
GPU_TIERS: tuple[GpuTier, ...] = (
    _tier("RTX 3060", "consumer", 12, 12_288, architecture="Ampere (GA106)", compute_capability="8.6",
          launched=2021, memory_bandwidth_gbs=360, dense_16bit_tflops=25.5, fp32_tflops=12.7,
          interconnect="PCIe 4.0 x16", interconnect_gbs=PCIE4,
          sources=_src("https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3060-3060ti/", DERIVED)),
    _tier("RTX 4070 Ti", "consumer", 12, 12_282, architecture="Ada Lovelace (AD104)", compute_capability="8.9",
          launched=2023, fp8=True, memory_bandwidth_gbs=504, dense_16bit_tflops=80.2, fp32_tflops=40.1,
          interconnect="PCIe 4.0 x16", interconnect_gbs=PCIE4,
          sources=_src("https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4070-family/", DERIVED)),
    _tier("RTX 4080", "consumer", 16, 16_376, architecture="Ada Lovelace (AD103)", compute_capability="8.9",
          launched=2022, fp8=True, memory_bandwidth_gbs=716.8, dense_16bit_tflops=97.5, fp32_tflops=48.7,
          interconnect="PCIe 4.0 x16", interconnect_gbs=PCIE4, sources=_src(ADA_WP)),
    _tier("RTX 4060 Ti 16GB", "consumer", 16, 16_380, architecture="Ada Lovelace (AD106)", compute_capability="8.9",
          launched=2023, fp8=True, memory_bandwidth_gbs=288, dense_16bit_tflops=44.1, fp32_tflops=22.1,
          interconnect="PCIe 4.0 x8", interconnect_gbs=PCIE4 / 2,
          sources=_src("https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4060-4060ti/", DERIVED)),
    _tier("RTX 3090", "consumer", 24, 24_576, architecture="Ampere (GA102)", compute_capability="8.6",
          launched=2020, memory_bandwidth_gbs=936, dense_16bit_tflops=71, fp32_tflops=35.6,
          interconnect="PCIe 4.0 x16 (2-way NVLink bridge 112.5 GB/s not modelled)", interconnect_gbs=PCIE4,
          sources=_src(AMPERE_WP)),
    _tier("RTX 4090", "consumer", 24, 24_564, architecture="Ada Lovelace (AD102)", compute_capability="8.9",
          launched=2022, fp8=True, memory_bandwidth_gbs=1008, dense_16bit_tflops=165.2, fp32_tflops=82.6,
          interconnect="PCIe 4.0 x16", interconnect_gbs=PCIE4, sources=_src(ADA_WP)),
    _tier("RTX 5090", "consumer", 32, 32_607, architecture="Blackwell (GB202)", compute_capability="12.0",
          launched=2025, fp8=True, memory_bandwidth_gbs=1792, dense_16bit_tflops=209.5, fp32_tflops=104.8,
          interconnect="PCIe 5.0 x16", interconnect_gbs=PCIE5,
          sources=_src("NVIDIA RTX Blackwell GPU architecture whitepaper (RTX 5090)", DERIVED)),
    _tier("RTX A6000", "workstation", 48, 49_140, architecture="Ampere (GA102)", compute_capability="8.6",
          launched=2020, memory_bandwidth_gbs=768, dense_16bit_tflops=154.8, fp32_tflops=38.7,
          interconnect="PCIe 4.0 x16 (2-way NVLink bridge 112.5 GB/s not modelled)", interconnect_gbs=PCIE4,
          sources=_src("NVIDIA RTX A6000 datasheet (tensor 309.7 TFLOPS with sparsity)")),
    _tier("RTX 6000 Ada", "workstation", 48, 49_140, architecture="Ada Lovelace (AD102)", compute_capability="8.9",
          launched=2022, fp8=True, memory_bandwidth_gbs=960, dense_16bit_tflops=364.2, fp32_tflops=91.1,
          interconnect="PCIe 4.0 x16", interconnect_gbs=PCIE4, sources=_src("NVIDIA RTX 6000 Ada datasheet", ADA_WP)),
    _tier("L40S", "workstation", 48, 46_068, architecture="Ada Lovelace (AD102)", compute_capability="8.9",
          launched=2023, fp8=True, memory_bandwidth_gbs=864, dense_16bit_tflops=362.05, fp32_tflops=91.6,
          interconnect="PCIe 4.0 x16 (no NVLink)", interconnect_gbs=PCIE4,
          sources=_src("NVIDIA L40S datasheet (BF16/FP16 tensor 362.05 TFLOPS dense, 733 with sparsity)")),
    _tier("T4", "datacenter", 16, 15_360, architecture="Turing (TU104)", compute_capability="7.5",
          launched=2018, bf16=False, flash_attention_2=False, memory_bandwidth_gbs=320, dense_16bit_tflops=65, fp32_tflops=8.1,
          interconnect="PCIe 3.0 x16", interconnect_gbs=PCIE3,
          sources=_src("NVIDIA T4 datasheet (mixed-precision FP16/FP32 65 TFLOPS)")),
    _tier("A10G", "datacenter", 24, 23_028, architecture="Ampere (GA102)", compute_capability="8.6",
          launched=2021, memory_bandwidth_gbs=600, dense_16bit_tflops=70, fp32_tflops=31.2,
          interconnect="PCIe 4.0 x16", interconnect_gbs=PCIE4,
          sources=_src("https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/ (AWS publishes "
                       "no A10G datasheet)", DERIVED)),
    _tier("L4", "datacenter", 24, 23_034, architecture="Ada Lovelace (AD104)", compute_capability="8.9",
          launched=2023, fp8=True, memory_bandwidth_gbs=300, dense_16bit_tflops=121, fp32_tflops=30.3,
          interconnect="PCIe 4.0 x16", interconnect_gbs=PCIE4,
          sources=_src("NVIDIA L4 datasheet (FP16 tensor 242 TFLOPS with sparsity)")),
    _tier("V100 32GB", "datacenter", 32, 32_768, architecture="Volta (GV100)", compute_capability="7.0",
          launched=2018, bf16=False, flash_attention_2=False, int8_matmul=False, memory_bandwidth_gbs=900,
          dense_16bit_tflops=125, fp32_tflops=15.7, interconnect="NVLink 2 (300 GB/s, SXM2)", interconnect_gbs=150,
          sources=_src("NVIDIA V100 datasheet (SXM2: tensor 125 TFLOPS, 900 GB/s)")),
    _tier("A100 40GB", "datacenter", 40, 40_960, architecture="Ampere (GA100)", compute_capability="8.0",
          launched=2020, memory_bandwidth_gbs=1555, dense_16bit_tflops=312, fp32_tflops=19.5,
          interconnect="NVLink 3 (600 GB/s, SXM4)", interconnect_gbs=300,
          sources=_src("NVIDIA A100 datasheet (BF16 tensor 312 TFLOPS dense)")),
    _tier("A100 80GB", "datacenter", 80, 81_920, architecture="Ampere (GA100)", compute_capability="8.0",
          launched=2020, memory_bandwidth_gbs=2039, dense_16bit_tflops=312, fp32_tflops=19.5,
          interconnect="NVLink 3 (600 GB/s, SXM4)", interconnect_gbs=300,
          sources=_src("NVIDIA A100 datasheet (80GB SXM: 2,039 GB/s)")),
    _tier("H100 80GB", "datacenter", 80, 81_559, architecture="Hopper (GH100)", compute_capability="9.0",
          launched=2022, fp8=True, flash_attention_3=True, memory_bandwidth_gbs=3350, dense_16bit_tflops=989.4,
          fp32_tflops=66.9, interconnect="NVLink 4 (900 GB/s, SXM5)", interconnect_gbs=450,
          sources=_src("NVIDIA H100 datasheet (SXM: BF16 1,979 TFLOPS with sparsity, 3.35 TB/s)")),
    _tier("H100 NVL", "datacenter", 94, 95_830, architecture="Hopper (GH100)", compute_capability="9.0",
          launched=2023, fp8=True, flash_attention_3=True, memory_bandwidth_gbs=3900, dense_16bit_tflops=835.5,
          fp32_tflops=60, interconnect="NVLink bridge (600 GB/s, pairs) + PCIe 5.0", interconnect_gbs=300,
          sources=_src("NVIDIA H100 datasheet (NVL: BF16 1,671 TFLOPS with sparsity, 3.9 TB/s)")),
    _tier("H200", "datacenter", 141, 143_771, architecture="Hopper (GH100)", compute_capability="9.0",
          launched=2024, fp8=True, flash_attention_3=True, memory_bandwidth_gbs=4800, dense_16bit_tflops=989.4,
          fp32_tflops=66.9, interconnect="NVLink 4 (900 GB/s, SXM)", interconnect_gbs=450,
          sources=_src("NVIDIA H200 datasheet (SXM: BF16 1,979 TFLOPS with sparsity, 4.8 TB/s)")),
    _tier("B200", "datacenter", 180, 183_359, architecture="Blackwell (B200)", compute_capability="10.0",
          launched=2025, fp8=True, memory_bandwidth_gbs=8000, dense_16bit_tflops=2250, fp32_tflops=80,
          interconnect="NVLink 5 (1.8 TB/s)", interconnect_gbs=900,
          sources=_src("NVIDIA HGX B200 datasheet (1,000 W: BF16 2.25 PFLOPS dense), "
                       "https://glennklockwood.com/garden/processors/B200")),
    _tier("MI300X", "datacenter", 192, 196_592, vendor="amd", architecture="CDNA 3", compute_capability="gfx942",
          launched=2023, fp8=True, fa2_max_backward_head_dim=128, memory_bandwidth_gbs=5300,
          dense_16bit_tflops=1307.4, fp32_tflops=163.4, interconnect="Infinity Fabric (896 GB/s, 7 links)",
          interconnect_gbs=448, bitsandbytes_note="bitsandbytes 0.50 (ROCm; 4-bit blocksize 128 on ROCm, the "
          "estimate models CUDA's 64)",
          sources=("AMD Instinct MI300X datasheet (BF16 1,307.4 TFLOPS dense, 5.3 TB/s, 896 GB/s Infinity Fabric)",
                   FLASH_ATTN, BNB)),
)
# fmt: on


def _tier_key(name: str) -> str:
    return name.strip().lower().replace(" ", "")


@functools.cache
def _tiers_by_key() -> dict[str, GpuTier]:
    """Each tier under its spelling-insensitive key, made on first use (nothing at import time)."""
    return {_tier_key(t.name): t for t in reversed(GPU_TIERS)}  # reversed: the first tier of a key wins


def find_tier(name: str) -> GpuTier | None:
    """The tier named `name` (case and spaces ignored); a dict lookup, since a recommendation asks once per tier."""
    return _tiers_by_key().get(_tier_key(name))


def tier_name(value: str, what: str = "GPU tier") -> str:
    """The tier's own spelling of `value`, for a data row's validator; ValueError naming the known tiers."""
    tier = find_tier(value)
    if tier is None:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(t.name for t in GPU_TIERS)}")
    return tier.name
