"""What backs each breakdown term of an estimate: a measurement (the CPU tracker, CPU ranks) or first principles.

The CPU reference tracker (one process) measured every single-device term of the CPU matrices
(docs/accuracy-full.md); torch.distributed CPU ranks over gloo measured DDP's and FSDP2's per-GPU terms
(docs/accuracy-multi.md), FSDP2's CPU offload included (counted by placement: app/calibration/offload.py),
QLoRA under FSDP2 (PEFT's recipe, calibration/cpu-matrix-multi-qlora.toml), FSDP2's MixedPrecisionPolicy in bf16
and fp16 over fp32 shards, with and without offload (calibration/cpu-matrix-multi-mp.toml, cpu-matrix-multi-mp2.toml),
FSDP1 full and LoRA (calibration/cpu-matrix-multi-fsdp1.toml) and QLoRA as the frameworks build it under FSDP1
(no fp32 upcast, FULL_SHARD, no or BACKWARD_PRE prefetch: calibration/cpu-matrix-multi-fsdp1-qlora.toml), and DeepSpeed ZeRO-2/3 engines (bf16, fp16 and fp32, torch AdamW and SGD and transformers' Adafactor, full, LoRA and QLoRA, with and without accumulation, at
DeepSpeed's bucket sizes and the configs' auto: calibration/cpu-matrix-zero*.toml, app/core/zero.py), and gradient
accumulation under DDP, FSDP1 and FSDP2 as transformers' Trainer runs it (calibration/cpu-matrix-multi-accum.toml). Checkpointing every n-th layer (`checkpoint_every`, calibration/cpu-matrix-trainer-every2.toml)
and offloaded checkpointing (`checkpoint_offload`, counted by placement: app/calibration/offload.py
`host_saved_checkpoints`, calibration/cpu-matrix-trainer-offload.toml) are measured on the CPU tracker through
transformers.Trainer. ZeRO-2's offload_optimizer (full and LoRA in bf16, fp16 and fp32, QLoRA in bf16) is measured
on the CPU ranks by placement (app/calibration/zero_offload.py, calibration/cpu-matrix-zero-offload.toml,
cpu-matrix-zero-offload2.toml), and ZeRO-3's offload (offload_param with offload_optimizer, full and LoRA in bf16 and
fp32) is too (app/calibration/zero3_offload.py, calibration/cpu-matrix-zero3-offload.toml). Nothing here is measured
on CUDA yet: the CUDA-only overheads, ZeRO
with bitsandbytes' optimizers (CUDA kernels), layers split across GPUs with int8 weights (or outside what
`layer_split_measured` names: device_map="auto" on virtual GPUs, counted by placement, app/calibration/layer_split.py,
calibration/cpu-matrix-layer-split.toml) and bitsandbytes' int8 and paged paths are first-principles.
"""

from __future__ import annotations

from typing import Literal

from app.core.layer_split import splits_layers
from app.core.plan import TrainingPlan
from app.core.step import fsdp1_adapter_recompute_fails

Evidence = Literal["measured-cpu", "measured-cpu-ranks", "first-principles"]

# outside the live tensors, or CUDA-only library paths: no CPU run can measure them
FIRST_PRINCIPLES_TERMS = frozenset(
    {
        "cublas_workspace_bytes",
        "allocator_cache_bytes",
        "cuda_context_bytes",
        "paged_optimizer_state_bytes",
        "master_weight_bytes",
    }
)
# the terms only data parallelism adds, measured on CPU ranks (app/core/sharding.py)
RANK_TERMS = frozenset({"ddp_bucket_bytes", "ddp_broadcast_bytes", "reduce_scatter_bytes", "allgather_buffer_bytes"})
MEASURED_LAYOUTS = ("ddp", "fsdp", "fsdp_grad_op")
# DeepSpeed ZeRO plans the CPU ranks measured (app/calibration/zero.py): their terms, the fp32 master included
ZERO_TERMS = frozenset({"master_weight_bytes", "zero_bucket_bytes", "zero_reduce_bytes", "zero_init_bytes"})


def zero_measured(plan: TrainingPlan) -> bool:
    """A ZeRO-2/3 plan of the kind the CPU ranks ran: full, LoRA or QLoRA, bf16, fp16 or fp32, torch AdamW or SGD or
    transformers' Adafactor, with or without accumulation, at DeepSpeed's bucket sizes or the configs' auto
    (calibration/cpu-matrix-zero*.toml); with offload, ZeRO-2's offload_optimizer (`zero_offload_measured`)."""
    return (
        plan.sharding in ("zero2", "zero3")
        and plan.gpus > 1
        and plan.method in ("full", "lora", "qlora")
        and plan.dtype in ("bf16", "fp16", "fp32")
        and not plan.autocast
        and plan.optimizer in ("adamw", "sgd", "adafactor")
        and (not plan.offload or zero_offload_measured(plan))
    )


def zero_offload_measured(plan: TrainingPlan) -> bool:
    """ZeRO-Offload as the CPU ranks ran it, counted by placement (app/calibration/zero_offload.py): ZeRO-2's
    offload_optimizer, full or LoRA in bf16, fp16 or fp32 (calibration/cpu-matrix-zero-offload.toml; fp16:
    cpu-matrix-zero-offload2.toml), QLoRA in bf16 (cpu-matrix-zero-offload2.toml), not QLoRA in fp16 or fp32; ZeRO-3's
    offload_param with offload_optimizer, full or LoRA in bf16 or fp32 (app/calibration/zero3_offload.py,
    calibration/cpu-matrix-zero3-offload.toml), not fp16 (not run) or QLoRA (refused)."""
    if plan.sharding == "zero3":
        return plan.method in ("full", "lora") and plan.dtype in ("bf16", "fp32")
    if plan.sharding != "zero2":
        return False
    return plan.dtype == "bf16" if plan.method == "qlora" else plan.method in ("full", "lora")


def layer_split_measured(plan: TrainingPlan) -> bool:
    """Layers split across GPUs (sharding none, gpus > 1) as the virtual GPUs of one CPU process measured them, every
    storage counted on the GPU device_map="auto" and accelerate's hooks put it on (app/calibration/layer_split.py,
    calibration/cpu-matrix-layer-split.toml): full and LoRA in bf16 with torch AdamW, 2 and 4 GPUs, checkpointing
    on and off, no accumulation. Not QLoRA (its map and terms follow the source and ran, but one checkpointed point
    read +5.68 %: calibration/results/cpu-matrix-layer-split-qlora.report.jsonl), int8 (it keeps the ⌈L/n⌉ bound:
    `layer_split.splits_layers`), fp16, fp32, autocast, other optimizers, DoRA."""
    return (
        splits_layers(plan)
        and plan.method in ("full", "lora")
        and plan.dtype == "bf16"
        and not plan.autocast
        and not plan.dora
        and plan.optimizer == "adamw"
        and plan.grad_accum_steps == 1
        and not plan.offload
        and not plan.checkpoint_offload
    )


def measured_policy(plan: TrainingPlan) -> bool:
    """FSDP2's MixedPrecisionPolicy was measured in bf16 (calibration/cpu-matrix-multi-mp.toml) and in fp16 and with
    CPU offload (cpu-matrix-multi-mp2.toml); FSDP1's MixedPrecision in bf16 for full fine-tuning
    (cpu-matrix-multi-fsdp1-mp.toml) and fp16 (cpu-matrix-multi-fsdp1-mp-fp16.toml); either policy in bf16 under
    accelerate's autocast, full and LoRA, without offload (cpu-matrix-multi-mp-autocast.toml), FSDP1's in fp16 too
    (cpu-matrix-multi-fsdp1-mp-fp16.toml). Not measured: LoRA under FSDP1's without autocast (it fails in PEFT's
    forward on the CPU ranks), nor with SHARD_GRAD_OP, checkpointing and dropout under autocast (it fails in the
    recompute: `step.fsdp1_adapter_recompute_fails`), fp16 under FSDP2's with autocast, QLoRA (refused with it)."""
    if not plan.fsdp_mixed_precision:
        return True
    if plan.autocast:
        dtypes = ("bf16", "fp16") if plan.fsdp_version == 1 else ("bf16",)
        return plan.dtype in dtypes and not plan.offload and not fsdp1_adapter_recompute_fails(plan)
    if plan.fsdp_version == 1:
        return plan.dtype in ("bf16", "fp16") and plan.method == "full"
    return plan.dtype in ("bf16", "fp16")


def units_measured(plan: TrainingPlan) -> bool:
    """FSDP2 under accelerate's units (plan.fsdp_units accelerate) was measured in bf16: full, LoRA and QLoRA,
    reshard on and off, with and without CPU offload (calibration/cpu-matrix-multi-units.toml); with accelerate's
    bf16 and fp16 policies, and accumulating, full and LoRA (cpu-matrix-multi-units-mp.toml). Not there: fp32, fp16
    without the policy, autocast, QLoRA accumulating (the matrices before the units, fsdp_units layers, ran some)."""
    if plan.sharding not in ("fsdp", "fsdp_grad_op") or plan.fsdp_version != 2 or plan.fsdp_units != "accelerate":
        return True
    dtype = plan.dtype == "bf16" or (plan.dtype == "fp16" and plan.fsdp_mixed_precision)
    return dtype and not plan.autocast and not (plan.method == "qlora" and plan.grad_accum_steps > 1)


def term_evidence(term: str, plan: TrainingPlan) -> Evidence:
    """`measured-cpu-ranks` for a term of a DDP/FSDP2 plan (FSDP2 with or without CPU offload) or of a ZeRO plan
    the CPU ranks ran (`zero_measured`) on several GPUs, `measured-cpu` for a single-device term the CPU matrices
    measure, `first-principles` for the rest."""
    if term in FIRST_PRINCIPLES_TERMS and not (term in ZERO_TERMS and zero_measured(plan)):
        return "first-principles"
    if term == "dequant_transient_bytes" and plan.quant == "int8":
        return "first-principles"  # bitsandbytes' int8 backward: an allowance no run has measured
    if term in ("activation_bytes", "layer_transient_bytes") and plan.packing and plan.attn != "flash_attention_2":
        return "first-principles"  # packed rows' masks: no packed run measured
    if term == "logits_peak_bytes" and plan.fused_cross_entropy:
        return "first-principles"  # Liger's Triton kernels: no CPU run measures them
    if term == "logits_peak_bytes" and plan.loop == "sft" and plan.device == "cuda":
        return "first-principles"  # TRL's Triton folds of the fused LM head: the CPU runs measure its torch folds
    if plan.gpus > 1 or plan.sharding != "none" or plan.offload:
        # accumulated gradients are measured on one device, under ZeRO (cpu-matrix-zero-accum) and under DDP/FSDP as
        # the Trainer accumulates (no sync before a window's last micro-batch: cpu-matrix-multi-accum)
        # QLoRA under FSDP1 ran in bf16 with no or BACKWARD_PRE prefetch (SHARD_GRAD_OP is refused: adapters.py)
        fsdp1_qlora = (
            plan.fsdp_version == 1
            and plan.method == "qlora"
            and (plan.dtype != "bf16" or plan.fsdp_backward_prefetch == "post")
        )
        if (
            (plan.sharding in MEASURED_LAYOUTS or zero_measured(plan))
            and plan.gpus > 1
            and measured_policy(plan)
            and units_measured(plan)
            and not fsdp1_qlora
        ):
            return "measured-cpu-ranks"  # offload: FSDP2's and ZeRO-2's (TrainingPlan refuses it with ddp); QLoRA too
        if layer_split_measured(plan):
            return "measured-cpu-ranks"  # layers split across GPUs: virtual GPUs counted by placement
        return "first-principles"  # ZeRO-3's offload and the ZeRO plans not run, layer splits not measured
    return "first-principles" if term in RANK_TERMS else "measured-cpu"
