"""What one calibration run measured: peak bytes, per-phase bytes and the environment it ran in."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Phase(BaseModel):
    """Memory at the end of one phase of a run, and the highest it reached during that phase."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(description="'load', then 'step<N>.forward', 'step<N>.backward', 'step<N>.optimizer'.")
    current_bytes: int = Field(ge=0, description="Bytes allocated when the phase ended.")
    peak_bytes: int = Field(ge=0, description="Highest bytes allocated at any time during the phase.")


Loop = Literal["plain", "trainer", "sft"]


class Environment(BaseModel):
    """Library versions and the device a measurement was taken on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    torch: str
    transformers: str
    peft: str
    bitsandbytes: str | None = Field(description="None when bitsandbytes is not installed.")
    python: str
    device_name: str = Field(description="GPU name, or the CPU's name for the CPU reference tracker.")
    total_memory_bytes: int | None = Field(description="Device memory; None on cpu, where it does not bound the run.")
    matmul_compute: Literal["native", "fp32"] = Field(
        "native",
        description="'fp32': CPU 16-bit matmuls were computed through fp32 (app/calibration/matmul.py); the "
        "tensors and their bytes are the native run's.",
    )
    loop: Loop = Field(
        "plain",
        description="The training loop that ran the steps: 'plain' (forward, backward, step, zero_grad) or 'trainer' "
        "(transformers.Trainer, app/calibration/trainer_loop.py) or 'sft' (trl.SFTTrainer, app/calibration/sft_loop.py).",
    )
    deepspeed: str | None = Field(
        None, description="DeepSpeed's version for a zero2/zero3 run (app/calibration/zero.py); None otherwise."
    )


class RankPeak(BaseModel):
    """One rank of a multi-rank run: its own peak and phases, from its own tracker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(ge=0)
    peak_allocated_bytes: int = Field(ge=0)
    phases: list[Phase]
    host_peak_bytes: int | None = Field(
        None, ge=0, description="Offload: the peak of the storages a CUDA run keeps in host RAM; None without offload."
    )
    all_storages_peak_bytes: int | None = Field(
        None, ge=0, description="Offload: the peak of every live storage, device and host together; None without."
    )


class Measurement(BaseModel):
    """One real fine-tuning run: the peak it reached and where in the step it was reached."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_type: str
    config: dict[str, Any] = Field(description="The model config actually built (after depth truncation).")
    plan: dict[str, Any] = Field(description="The TrainingPlan, dumped to a dict.")
    layers: int = Field(ge=1, description="Decoder layers actually built.")
    steps: int = Field(ge=1)
    device: Literal["cuda", "cpu"]
    peak_allocated_bytes: int = Field(ge=0, description="Highest bytes held by live tensors over the whole run.")
    peak_reserved_bytes: int | None = Field(
        description="Highest bytes reserved by the CUDA caching allocator; None on cpu (no caching allocator)."
    )
    phases: list[Phase]
    env: Environment
    duration_s: float = Field(ge=0, description="Wall time of build and steps, in seconds.")
    created_at: datetime
    ranks: tuple[RankPeak, ...] = Field(
        (), description="Multi-rank runs (app/calibration/distributed.py): every rank's peak and phases; empty for one."
    )
    worst_rank: int | None = Field(
        None, ge=0, description="The rank whose peak (and phases) this measurement reports; None for one process."
    )
    # Optional, so the reports and store exports written before step times were recorded still load.
    step_times_s: tuple[float, ...] = Field(
        (),
        description="Wall time of each optimizer step in order (its micro-batches' forward and backward and the "
        "optimizer step), from one step's end to the next; on cuda read after torch.cuda.synchronize(). On cpu it "
        "includes the live-tensor tracker's bookkeeping. Empty: not recorded.",
    )
    step_s: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="The measured step time: the median of step_times_s after the first (which also pays for "
        "warm-up: optimizer state allocation, kernel selection), or the only step; None when not recorded.",
    )
    tokens_per_step: int | None = Field(
        None, ge=1, description="Tokens one optimizer step trained: batch_size x seq_len x grad_accum_steps."
    )

    @property
    def tokens_per_s(self) -> float | None:
        """Measured training throughput: tokens_per_step / step_s; None without a measured step time."""
        if not self.step_s or self.tokens_per_step is None:
            return None
        return self.tokens_per_step / self.step_s

    host_peak_bytes: int | None = Field(
        None,
        ge=0,
        description="Offload on CPU ranks (or checkpoint_offload's saved inputs, in one process): the worst rank's "
        "peak of the storages a CUDA run keeps in host RAM (counted by placement, app/calibration/offload.py); "
        "peak_allocated_bytes is the rest, the device's. None without offload.",
    )
    all_storages_peak_bytes: int | None = Field(
        None,
        ge=0,
        description="Offload on CPU ranks (or checkpoint_offload): the worst rank's peak of every live storage, device "
        "and host.",
    )

    def phase(self, label: str) -> Phase:
        """The phase with this label (KeyError when the run has none)."""
        for item in self.phases:
            if item.label == label:
                return item
        raise KeyError(label)


def median_step_s(step_times_s: Sequence[float]) -> float | None:
    """The step time a run reports: the median of the steps after the first (the first also pays for warm-up:
    optimizer states allocated on first use, cuBLAS/kernel selection, caching-allocator growth), or the only
    step of a one-step run; None for no steps."""
    times = list(step_times_s[1:] or step_times_s)
    return statistics.median(times) if times else None
