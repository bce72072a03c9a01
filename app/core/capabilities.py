"""What stops a plan on a GPU tier (no bf16, no FlashAttention-2, no LLM.int8()), and the setting that would not."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.core.plan import TrainingPlan
from app.core.tiers import GpuTier

# bitsandbytes does the 4/8-bit base weights and these optimizers (bnb.optim.AdamW8bit, PagedAdamW, PagedAdamW8bit)
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit")


class Blocker(BaseModel):
    """One fact of a tier that the plan needs and the tier lacks."""

    model_config = ConfigDict(frozen=True)

    fact: str = Field(description="The GpuTier field the plan needs, e.g. bf16 or flash_attention_2.")
    reason: str = Field(description="What the tier lacks, e.g. 'no bf16'.")
    advice: str = Field(description="What to do instead, e.g. 'use fp16, or a GPU from Ampere on'.")
    fix: dict[str, str] | None = Field(None, description="The plan change that removes this blocker, if one does.")


def bf16_blocker(tier: GpuTier, plan: TrainingPlan) -> Blocker | None:
    """bf16 tensor math needs NVIDIA Ampere (compute capability 8.0) or newer: T4 (7.5) and V100 (7.0) have none."""
    if plan.dtype != "bf16" or tier.bf16:
        return None
    return Blocker(fact="bf16", reason="no bf16", advice="use fp16, or a GPU from Ampere on", fix={"dtype": "fp16"})


def flash_attention_blocker(tier: GpuTier, plan: TrainingPlan, head_dim: int) -> Blocker | None:
    """FlashAttention-2 runs on Ampere, Ada, Hopper (and Blackwell builds) and on ROCm MI200/MI300, whose backward
    takes head dims up to 128 only (flash-attention README)."""
    if plan.attn != "flash_attention_2":
        return None
    if not tier.flash_attention_2:
        return Blocker(
            fact="flash_attention_2",
            reason="no FlashAttention-2 (it needs Ampere or newer)",
            advice="use sdpa",
            fix={"attn": "sdpa"},
        )
    if head_dim > tier.fa2_max_backward_head_dim:
        return Blocker(
            fact="fa2_max_backward_head_dim",
            reason=f"FlashAttention-2's backward here takes head dim <= {tier.fa2_max_backward_head_dim}, "
            f"the model has {head_dim}",
            advice="use sdpa",
            fix={"attn": "sdpa"},
        )
    return None


def bitsandbytes_blockers(tier: GpuTier, plan: TrainingPlan) -> list[Blocker]:
    """bitsandbytes: NF4/FP4 and 8-bit optimizers from compute capability 6.0, LLM.int8() from 7.5 (bitsandbytes
    installation docs); AMD GPUs through its ROCm backend."""
    uses_bnb = plan.quantized or plan.optimizer in BNB_OPTIMIZERS
    if uses_bnb and not tier.bitsandbytes:
        return [
            Blocker(
                fact="bitsandbytes",
                reason="bitsandbytes does not support this GPU",
                advice="use lora or full fine-tuning with a torch optimizer",
            )
        ]
    if plan.quant == "int8" and not tier.int8_matmul:
        return [
            Blocker(
                fact="int8_matmul",
                reason="no LLM.int8() (bitsandbytes needs compute capability 7.5 or newer)",
                advice="use nf4",
                fix={"quant": "nf4"},
            )
        ]
    return []


def blockers(tier: GpuTier, plan: TrainingPlan, head_dim: int) -> tuple[Blocker, ...]:
    """Everything that stops `plan` on `tier` (empty: it runs)."""
    found = [bf16_blocker(tier, plan), flash_attention_blocker(tier, plan, head_dim)]
    return tuple(b for b in found if b is not None) + tuple(bitsandbytes_blockers(tier, plan))


def cannot_run(found: tuple[Blocker, ...]) -> str | None:
    """The tiers table's line: 'cannot run: no bf16 (use fp16, or a GPU from Ampere on)'."""
    if not found:
        return None
    return "cannot run: " + "; ".join(f"{b.reason} ({b.advice})" for b in found)


def fixed_plan(plan: TrainingPlan, found: tuple[Blocker, ...]) -> TrainingPlan | None:
    """The plan with every blocker's fix applied, or None when one has no fix (or the result is not a valid plan)."""
    if not found or any(b.fix is None for b in found):
        return None
    changes: dict[str, str] = {}
    for b in found:
        changes.update(b.fix or {})
    try:
        return TrainingPlan.model_validate({**plan.model_dump(), **changes})
    except ValueError:
        return None
