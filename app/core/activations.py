"""Activation memory: what autograd saves per decoder layer, the logits and loss peak, and transients.

The model is the plain PyTorch training step the calibration harness runs (no autocast):
- QLoRA with prepare_model_for_kbit_training upcasts embeddings, norms and lm_head to fp32, so the
  residual stream, norm outputs and projection outputs are fp32; bitsandbytes casts each projection
  input to the compute dtype (a saved copy per quantized projection) and the output back.
- PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype) and casts each adapted input to fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.core.adapters import Adapted
from app.core.plan import TrainingPlan
from app.core.quant import DTYPE_BYTES
from app.core.spec import ArchSummary, ModelSpec


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the tensors a step creates."""

    compute: int  # bitsandbytes compute dtype / model dtype
    residual: int  # residual stream (embedding output dtype)
    act: int  # norm outputs, projection outputs, attention, MLP intermediates
    logits: int  # lm_head output


def precision(plan: TrainingPlan) -> Precision:
    c = DTYPE_BYTES[plan.dtype]
    if plan.method == "qlora":
        # prepare_model_for_kbit_training: every non-quantized fp16/bf16 parameter becomes fp32,
        # so embeddings, norms and lm_head compute in fp32 and bnb returns outputs in the input dtype.
        return Precision(compute=c, residual=4, act=4, logits=4)
    return Precision(compute=c, residual=c, act=c, logits=c)


@dataclass(frozen=True)
class LayerActivations:
    saved: int  # bytes autograd keeps for one decoder layer with no checkpointing
    transient: int  # extra bytes while one layer runs forward or backward (scores, grad buffers)
    layer_input: int  # bytes of one layer's input hidden state (what checkpointing keeps)


def _norm_bytes(tokens: int, h: int, p: Precision, trainable: bool) -> int:
    # RMSNorm/LayerNorm in fp32: a fp32 copy of a non-fp32 input is saved, then the output in act dtype;
    # a trainable weight (full fine-tuning) also keeps the cast normalized input.
    nbytes = tokens * h * p.act + tokens * 4
    if p.residual != 4:
        nbytes += tokens * h * 4
    if trainable:
        nbytes += tokens * h * p.act
    return nbytes


def _linear_extra(
    tokens: int, in_f: int, out_f: int, quantized: bool, adapted: Adapted | None, plan: TrainingPlan, p: Precision
) -> int:
    """Bytes one projection saves beyond its (shared) input tensor."""
    nbytes = 0
    if quantized and p.act != p.compute:
        nbytes += tokens * in_f * p.compute  # bnb: x.to(compute_dtype), kept for backward
    if adapted is not None:
        if p.act != 4:
            nbytes += tokens * in_f * 4  # PEFT casts the input to the fp32 adapter dtype
        if plan.dropout > 0:
            nbytes += tokens * in_f * (4 + 1)  # dropout output and its bool mask
        nbytes += tokens * plan.rank * 4  # lora_A output, saved by lora_B
        if plan.dora:
            nbytes += tokens * out_f * 4  # DoRA keeps the base output to rescale by the magnitude
    return nbytes


def layer_activations(
    model: ModelSpec, plan: TrainingPlan, adapted: dict[str, Adapted], quantized: frozenset[str]
) -> LayerActivations:
    """Per-layer activation bytes for a micro-batch of plan.batch_size x plan.seq_len tokens."""
    a: ArchSummary = model.arch
    p = precision(plan)
    b, s = plan.batch_size, plan.seq_len
    t = b * s
    h, q, kv, i = a.hidden_size, a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.intermediate_size
    full = plan.method == "full"

    saved = t * h * p.residual  # the layer input, kept by the first norm
    saved += _norm_bytes(t, h, p, full) * (1 if a.parallel_block else max(1, a.norms_per_layer))
    if not a.parallel_block:
        saved += t * h * p.residual  # residual after attention, input of the second norm
    # attention: q and k after rotary, v, the attention output and its contiguous transpose
    saved += t * (2 * q + 2 * kv) * p.act + t * q * p.act
    if plan.attn == "eager":
        rep = a.num_heads // a.num_kv_heads
        if rep > 1:
            saved += 2 * t * (q - kv) * p.act  # repeat_kv materialises K and V for every head
        # softmax output in fp32 and its cast back, b x heads x s x s each
        saved += b * a.num_heads * s * s * (4 + (p.act if p.act != 4 else 0))
        transient = b * a.num_heads * s * s * (2 * p.act + 4)  # q.k scores, masked scores, grad of probs
    else:
        saved += b * a.num_heads * s * 4  # flash/efficient kernels keep the fp32 logsumexp only
        transient = 0
    # MLP: gated keeps gate, up, act(gate) and the product; plain keeps fc1 output and act output
    if a.num_experts:
        k = max(1, a.experts_per_token)
        saved += t * a.num_experts * (p.act + 4)  # router logits and fp32 routing softmax
        saved += t * k * (2 * h + (4 if a.mlp_gated else 2) * i) * p.act  # per-expert gathered tokens and MLP
    else:
        saved += t * i * p.act * (4 if a.mlp_gated else 2)
    for name, ad in adapted.items():
        g = ad.group
        if g.in_layers:
            saved += _linear_extra(t, g.in_features, g.out_features, name in quantized, ad, plan, p)
    for g in model.groups:
        if g.in_layers and g.kind == "linear" and g.name in quantized and g.name not in adapted:
            saved += _linear_extra(t, g.in_features, g.out_features, True, None, plan, p)
    # backward of one layer: gradient of its output and input, and of the widest intermediate
    transient += 2 * t * h * p.residual + 2 * t * max(i, q) * p.act
    return LayerActivations(saved=saved, transient=transient, layer_input=t * h * p.residual)


def kept_layers(plan: TrainingPlan, num_layers: int) -> tuple[int, int]:
    """(layers whose input is kept, layers recomputed at once in backward) under checkpointing."""
    if plan.checkpointing == "sqrt-n":
        k = math.ceil(math.sqrt(num_layers))
        return k, min(k, num_layers)
    return num_layers, 1


def logits_bytes(model: ModelSpec, plan: TrainingPlan) -> tuple[int, int]:
    """(forward, backward) bytes of the logits and cross-entropy at their peaks.

    Forward: logits (lm_head dtype), their fp32 upcast in the loss, and log_softmax's fp32 output.
    Backward: the saved log_softmax, its incoming gradient and the fp32 gradient of the logits.
    """
    p = precision(plan)
    tv = plan.batch_size * plan.seq_len * model.arch.vocab_size
    forward = tv * (p.logits + 4 + (4 if p.logits != 4 else 0))
    backward = tv * 12
    return forward, backward
