"""The estimate's value objects: breakdown terms, phases, parameter counts and the Estimate itself."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from app.core.plan import TrainingPlan

Category = Literal["weights", "adapters", "gradients", "optimizer", "activations", "transient", "overhead"]
# allocated: live at the peak, counted by torch.cuda.max_memory_allocated;
# reserved: cached by the allocator on top (max_memory_reserved); device: outside the allocator (nvidia-smi).
Counted = Literal["allocated", "reserved", "device"]


class Term(BaseModel):
    """One named memory term at the peak, in bytes."""

    model_config = ConfigDict(frozen=True)

    term: str
    bytes: int = Field(ge=0)
    note: str
    category: Category
    counted: Counted = "allocated"
    evictable: bool = Field(False, description="Paged (unified) memory the driver may move to host RAM under pressure.")
    evidence: Literal["measured-cpu", "measured-cpu-ranks", "first-principles"] = Field(
        "first-principles",
        description="What backs this term's formula: measured by the CPU live-tensor tracker (measured-cpu), by "
        "torch.distributed CPU ranks (measured-cpu-ranks, DDP/FSDP2, FSDP2's CPU offload counted by placement), or "
        "first-principles (not measured: CUDA-only overheads, ZeRO with or without offload, layer splitting). "
        "app/core/evidence.py.",
    )


class PhasePeak(BaseModel):
    """Bytes allocated at the high point of one phase of a training step (load, forward, backward, optimizer)."""

    model_config = ConfigDict(frozen=True)

    name: str
    bytes: int = Field(ge=0)


class Params(BaseModel):
    model_config = ConfigDict(frozen=True)

    base: int = Field(description="Parameters of the base model, tied weights once.")
    trainable: int = Field(description="Parameters the optimizer updates.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trainable_pct(self) -> float:
        return round(100 * self.trainable / self.base, 4) if self.base else 0.0


class Adjustment(BaseModel):
    """A plan setting the real stack refuses, replaced by the nearest one it accepts (plans that are not strict)."""

    model_config = ConfigDict(frozen=True)

    field: str
    requested: Any
    used: Any
    why: str


class Estimate(BaseModel):
    """What one fine-tuning step of `plan` on `model` needs per GPU."""

    model_config = ConfigDict(frozen=True)

    model: str
    revision: str | None = None
    plan: TrainingPlan
    params: Params
    breakdown: tuple[Term, ...]
    phases: tuple[PhasePeak, ...]
    peak_phase: str
    double_quant_saving_bytes: int | None = Field(
        None, description="Bytes double quantization saves against single quantization (4-bit plans only)."
    )
    offloaded_bytes: int = Field(
        0,
        ge=0,
        description="Bytes kept in host RAM instead of on a GPU (offload: optimizer states, zero3 weights; FSDP2's "
        "sharded weights, adapters and gradients too), without the host optimizer step's temporaries; "
        "part of no device total.",
    )
    flatten_peak_bytes: int | None = Field(
        None,
        ge=0,
        description="DeepSpeed ZeRO-2 without offload, where it exceeds the step's peak: what max_memory_allocated "
        "reads at the load on a GPU whose free memory holds the flat buffer the trainable parameters are copied "
        "into (their originals beside it). A GPU without that room flattens through host memory, so it never stops "
        "a plan that fits: the fit verdicts judge the step's peak (peak_allocated_bytes).",
    )
    notes: tuple[str, ...] = ()
    adjustments: tuple[Adjustment, ...] = Field(
        (), description="Settings changed to the nearest plan the stack accepts; `plan` is the plan estimated."
    )

    # cached_property: the model is frozen, so the totals never change (pydantic supports computed_field over it);
    # recommend() and the fit searches read them thousands of times per request
    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def peak_allocated_bytes(self) -> int:
        """What torch.cuda.max_memory_allocated would report on one GPU."""
        return sum(t.bytes for t in self.breakdown if t.counted == "allocated")

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def peak_reserved_bytes(self) -> int:
        """What torch.cuda.max_memory_reserved would report on one GPU."""
        return self.peak_allocated_bytes + sum(t.bytes for t in self.breakdown if t.counted == "reserved")

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def device_bytes(self) -> int:
        """What nvidia-smi would show for the process on one GPU."""
        return self.peak_reserved_bytes + sum(t.bytes for t in self.breakdown if t.counted == "device")

    @property
    def room_peak_bytes(self) -> int:
        """max_memory_allocated on a device with room for every moment the libraries size to the free memory
        (`flatten_peak_bytes`): what the CPU ranks measure, whose memory always has that room."""
        return max(self.peak_allocated_bytes, self.flatten_peak_bytes or 0)

    @property
    def per_gpu(self) -> bool:
        return self.plan.gpus > 1

    def term(self, name: str) -> Term | None:
        return next((t for t in self.breakdown if t.term == name), None)
