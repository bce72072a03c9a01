"""Weights as served, per GPU: the precision of each tensor, its tensor-parallel shard, and LoRA adapter memory."""

from __future__ import annotations

import math

from app.core.adapters import Adapted, LoraKey, adapted_modules
from app.core.mxfp4 import MXFP4_GROUP
from app.core.quant import ceil_div, quantized_weight_allocated, rounded
from app.core.spec import ModelSpec, ModuleGroup, ParamShape
from app.core.units import BF16, FP32, UINT8
from app.errors import StackRefusal
from app.serving.plan import ServingPlan

# vLLM VocabParallelEmbedding / ParallelLMHead pad the vocabulary to a multiple of 64 (DEFAULT_VOCAB_PADDING_SIZE)
VOCAB_PADDING = 64
# FP8 checkpoints (DeepSeek-V3's quantization_config weight_block_size; vLLM/transformers FineGrainedFP8):
# e4m3 weights with one fp32 scale (weight_scale_inv) per 128 x 128 block
FP8_BLOCK = 128
# MXFP4 (gpt-oss quantization_config; transformers integrations/mxfp4.py, app/core/mxfp4.py): fused experts stored as
# e2m1 pairs packed in uint8 `*_blocks` plus one uint8 e8m0 scale per MXFP4_GROUP values `*_scales`; the rest 16-bit
# Row-parallel projections in vLLM (input split across ranks); every other decoder linear is column-parallel.
ROW_PARALLEL = frozenset({"o_proj", "down_proj", "dense", "fc2", "out_proj", "w2", "c_proj", "dense_4h_to_h"})


def sharded(group: ModuleGroup) -> bool:
    """Tensor parallelism splits decoder linears, fused experts and the vocabulary; norms and routers replicate."""
    if group.kind in ("linear", "embedding") or group.output_layer:
        return not _router(group)
    return group.in_layers and any(len(p.shape) == 3 for p in group.params)


def _router(group: ModuleGroup) -> bool:
    return group.leaf == "gate" and group.in_layers and group.kind == "linear" and group.out_features < 1024


def _fp8(group: ModuleGroup, param: ParamShape) -> bool:
    """FP8 checkpoints quantize the decoder linears' weights and the fused experts; embeddings, lm_head, norms,
    routers and biases stay 16-bit."""
    if not group.in_layers or _router(group):
        return False
    return (group.kind == "linear" and param.name == "weight") or len(param.shape) == 3


def _fp8_bytes(param: ParamShape, tp: int) -> int:
    """e4m3 weight (1 byte) + fp32 scale per 128 x 128 block (per expert for 3-D experts), split over tp."""
    *lead, rows, cols = param.shape
    scales = math.prod(lead) * ceil_div(rows, FP8_BLOCK) * ceil_div(cols, FP8_BLOCK)
    return rounded(ceil_div(param.numel, tp) * UINT8) + rounded(ceil_div(scales, tp) * FP32)


def _vocab_rows(group: ModuleGroup, plan: ServingPlan) -> int:
    rows = group.in_features if group.kind == "embedding" else group.out_features
    return ceil_div(rows, VOCAB_PADDING) * VOCAB_PADDING if plan.vllm else rows


def param_bytes(group: ModuleGroup, param: ParamShape, plan: ServingPlan) -> int:
    """One parameter of one instance on one GPU, in its served precision (16-bit unless quantized)."""
    tp = plan.tp if sharded(group) else 1
    numel = param.numel
    if group.kind == "embedding" or group.output_layer:
        rows = _vocab_rows(group, plan)
        numel = rows * (numel // max(1, group.in_features if group.kind == "embedding" else group.out_features))
    if plan.weights == "fp8" and _fp8(group, param):
        return _fp8_bytes(param, tp)
    if plan.weights == "mxfp4" and group.in_layers and len(param.shape) == 3:
        shard = ceil_div(numel, tp)
        return rounded(ceil_div(shard, 2) * UINT8) + rounded(ceil_div(shard, MXFP4_GROUP) * UINT8)
    if plan.weights in ("nf4", "int8") and group.quantizable and param.name == "weight":
        # transformers' bnb quantizer (and vLLM's bitsandbytes loader): nf4 without double quant
        # (BitsAndBytesConfig default bnb_4bit_use_double_quant=False), int8 with one fp32 scale per row
        out = ceil_div(group.out_features, tp)
        return quantized_weight_allocated(ceil_div(numel, tp), out, plan.weights, False)
    return rounded(ceil_div(numel, tp) * BF16)  # bf16 and fp16 are both 2 bytes


def weight_bytes(model: ModelSpec, plan: ServingPlan) -> int:
    """weight_bytes: every parameter (tied ones once) at its served precision, the GPU's tensor-parallel shard."""
    return sum(g.count * sum(param_bytes(g, p, plan) for p in g.params) for g in model.groups)


def _adapters(model: ModelSpec, lora: LoraKey) -> tuple[tuple[Adapted, ...], tuple[str, ...]]:
    """The adapted modules of an all-linear adapter as PEFT would train it: where PEFT refuses a module on this
    model (e.g. Llama 4's router), the nearest targets it accepts (StackRefusal.accepted), as training does."""
    try:
        return adapted_modules(model, lora)
    except StackRefusal as refusal:
        if refusal.field != "targets" or not isinstance(refusal.accepted, tuple):
            raise
        return adapted_modules(model, lora._replace(targets=refusal.accepted))


def peft_adapter_bytes(model: ModelSpec, plan: ServingPlan) -> int:
    """lora_adapter_bytes (transformers + PEFT): N adapters loaded side by side, each r x in + out x r on every
    linear of the layers (all-linear, matched as PEFT matches), fp32: PeftModel.from_pretrained's
    autocast_adapter_dtype=True upcasts 16-bit adapter weights. Replicated on every tensor-parallel rank."""
    if plan.adapters == 0:
        return 0
    adapted, _ = _adapters(model, LoraKey(True, "all-linear", plan.adapter_rank, False, False))
    one = sum(ad.group.count * sum(rounded(math.prod(s) * FP32) for s in ad.shapes) for ad in adapted)
    return plan.adapters * one


def vllm_lora_slot_bytes(model: ModelSpec, plan: ServingPlan) -> int:
    """lora_slot_bytes (vLLM): --max-loras x --max-lora-rank slots preallocated on every LoRA-able decoder linear,
    whatever the adapters load (vllm/lora/layers: create_lora_weights allocates lora_a_stacked
    (max_loras, 1, max_lora_rank, input_size) and lora_b_stacked (max_loras, 1, output_size, max_lora_rank) in
    the model dtype); column-parallel layers split B's output, row-parallel ones A's input."""
    if plan.adapters == 0:
        return 0
    n, r, tp = plan.adapters, plan.adapter_rank, plan.tp
    total = 0
    for g in model.groups:
        if g.kind != "linear" or not g.in_layers or not g.peft_linear or _router(g):
            continue
        row = g.leaf in ROW_PARALLEL
        a_in = ceil_div(g.in_features, tp) if row else g.in_features
        b_out = g.out_features if row else ceil_div(g.out_features, tp)
        total += g.count * (rounded(n * r * a_in * BF16) + rounded(n * b_out * r * BF16))
    return total
