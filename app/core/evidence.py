"""What backs each breakdown term of an estimate: a measurement (the CPU tracker, CPU ranks) or first principles.

The CPU reference tracker (one process) measured every single-device term of the CPU matrices
(docs/accuracy-full.md); torch.distributed CPU ranks over gloo measured DDP's and FSDP2's per-GPU terms
(docs/accuracy-multi.md), FSDP2's CPU offload included (counted by placement: app/calibration/offload.py), and
QLoRA under FSDP2 (PEFT's recipe, calibration/cpu-matrix-multi-qlora.toml), and FSDP1 full and LoRA
(calibration/cpu-matrix-multi-fsdp1.toml; QLoRA under FSDP1 is not run: first-principles). Nothing here is measured on CUDA yet:
the CUDA-only overheads, ZeRO (DeepSpeed) with or without offload, layers split across GPUs and bitsandbytes'
int8 and paged paths are first-principles.
"""

from __future__ import annotations

from typing import Literal

from app.core.plan import TrainingPlan

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


def term_evidence(term: str, plan: TrainingPlan) -> Evidence:
    """`measured-cpu-ranks` for a term of a DDP/FSDP2 plan (FSDP2 with or without CPU offload) on several GPUs,
    `measured-cpu` for a single-device term the CPU matrices measure, `first-principles` for the rest."""
    if term in FIRST_PRINCIPLES_TERMS:
        return "first-principles"
    if term == "dequant_transient_bytes" and plan.quant == "int8":
        return "first-principles"  # bitsandbytes' int8 backward: an allowance no run has measured
    if term in ("activation_bytes", "layer_transient_bytes") and plan.packing and plan.attn != "flash_attention_2":
        return "first-principles"  # packed rows' masks: no packed run measured
    if term == "logits_peak_bytes" and plan.fused_cross_entropy:
        return "first-principles"  # Liger's Triton kernels: no CPU run measures them
    if term == "activation_bytes" and plan.checkpoint_offload:
        return "first-principles"  # saved tensors in host memory: one address space on CPU, no tracker run sees it
    if term in ("activation_bytes", "layer_transient_bytes") and plan.checkpoint_every > 1:
        return "first-principles"  # every_n_layers: QLoRA up to +14 % through the Trainer (not yet in bounds)
    if plan.gpus > 1 or plan.sharding != "none" or plan.offload:
        accumulated = term == "gradient_bytes" and plan.grad_accum_steps > 1  # measured on one device only
        fsdp1_qlora = plan.fsdp_version == 1 and plan.method == "qlora"  # not run on the CPU ranks
        if plan.sharding in MEASURED_LAYOUTS and plan.gpus > 1 and not accumulated and not fsdp1_qlora:
            return "measured-cpu-ranks"  # offload is FSDP2's only (TrainingPlan refuses it with ddp); QLoRA too
        return "first-principles"  # ZeRO-2/3 (with or without offload), layers split across GPUs
    return "first-principles" if term in RANK_TERMS else "measured-cpu"
