"""Activation memory: what autograd saves per decoder layer, the logits and loss peak, and transients.

The model is the plain PyTorch training step the calibration harness runs (no autocast). Rules, each
read off the libraries and held against the tracker's per-op dumps:
- A frozen base projection (nn.Linear, or bitsandbytes' MatMul4Bit, which keeps only the packed weight)
  saves nothing of its input; a trainable one (full fine-tuning) saves its input.
- PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype) and casts each adapted input to fp32; with
  dropout > 0 the cast copy is freed and the dropout output plus its mask are saved (the mask is bool
  on CUDA's fused kernel, the input dtype on the CPU path), and lora_A's output is saved by lora_B.
- QLoRA's prepare_model_for_kbit_training upcasts embeddings, norms and lm_head to fp32, so the residual
  stream, norm outputs and projection outputs are fp32; bitsandbytes returns outputs in the input dtype.
- RMSNorm computes in fp32: it saves an fp32 copy of a 16-bit input (or the fp32 input itself) and rsqrt;
  LayerNorm saves its input and two fp32 statistics per token.
- Rotary embeddings save only cos/sin: q and k after rotation are new tensors kept by attention, v is kept
  as projected (for a fused qkv projection the whole fused output stays alive through the v view).

Each function below is one row of the README's "How the estimate is computed" (`activation_bytes`,
`layer_transient_bytes`, `logits_peak_bytes`); notation as there: `T` tokens, `h` hidden, `q`, `kv`, `i`
intermediate, `k` experts per token, `r` LoRA rank, `a` activation bytes, `a_res` residual-stream bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from app.core.adapters import Adapted
from app.core.plan import TrainingPlan
from app.core.spec import ArchSummary, ModelSpec
from app.core.units import BOOL, DTYPE_BYTES, FP32

DOWN_LEAVES = ("down_proj", "fc2", "dense_4h_to_h")


class Precision(NamedTuple):
    """Bytes per element of the tensors a step creates."""

    compute: int  # bitsandbytes compute dtype / model dtype
    residual: int  # residual stream (embedding output dtype)
    act: int  # norm outputs, projection outputs, attention, MLP intermediates
    logits: int  # lm_head output
    mask: int  # LoRA dropout mask element


def precision(plan: TrainingPlan) -> Precision:
    c = DTYPE_BYTES[plan.dtype]
    # torch's fused dropout (CUDA) keeps a bool mask; the CPU path multiplies by a mask in the input dtype (fp32)
    mask = BOOL if plan.device == "cuda" else FP32
    if plan.method == "qlora":
        return Precision(c, FP32, FP32, FP32, mask)  # compute, residual, act, logits, mask
    return Precision(c, c, c, c, mask)


class LayerActivations(NamedTuple):
    saved: int  # bytes autograd keeps for one decoder layer with no checkpointing
    forward_transient: int  # extra bytes while one layer runs forward without saving (checkpointed)
    backward_transient: int  # gradient buffers while one layer is backpropagated
    recompute_transient: int  # checkpointing: what is alive besides the saved tensors as a layer's recompute ends
    layer_input: int  # bytes of one layer's input hidden state (what checkpointing keeps)
    head_saved: int  # final norm (and lm_head input when trained) kept for backward
    first_layer_discount: int = 0  # what layer 0 does not keep when its input needs no gradient
    input_in_saved: int = 0  # the layer input, when its first norm keeps it (checkpointing already keeps it)


class Step(NamedTuple):
    """One micro-batch through one decoder layer: the shapes, the precision and the adapted projections.

    The functions of this module take it as `x` and read the README's notation off it: `x.t`, `x.h`, `x.i`, ...
    """

    arch: ArchSummary
    plan: TrainingPlan
    p: Precision
    by_leaf: Mapping[str, Adapted]  # adapted module groups in the decoder layers, by leaf name
    t: int  # tokens, batch x sequence
    h: int  # hidden
    q: int  # heads x head_dim
    kv: int  # kv_heads x head_dim
    i: int  # intermediate
    k: int  # experts per token (1 without experts)
    full: bool  # full fine-tuning: every weight trained
    g: int  # bytes of the MLP intermediate's gradient (`mlp_grad_bytes`)


def step(model: ModelSpec, plan: TrainingPlan, by_leaf: Mapping[str, Adapted]) -> Step:
    a, p, full = model.arch, precision(plan), plan.method == "full"
    t, q, kv = plan.batch_size * plan.seq_len, a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    k, g = max(1, a.experts_per_token), mlp_grad_bytes(p, full, by_leaf)
    return Step(a, plan, p, by_leaf, t, a.hidden_size, q, kv, a.intermediate_size, k, full, g)


def mlp_grad_bytes(p: Precision, full: bool, by_leaf: Mapping[str, Adapted]) -> int:
    """`g`: the MLP intermediate's gradient dtype, fp32 when an adapted down projection's LoRA branch carries it."""
    down_adapted = full or any(leaf in by_leaf for leaf in DOWN_LEAVES)
    return max(p.act, FP32 if down_adapted else 0)


def adapted_by_leaf(adapted: Iterable[Adapted]) -> dict[str, Adapted]:
    """The adapted module groups inside the decoder layers, by leaf name (what the activation rules look up)."""
    return {ad.group.leaf: ad for ad in adapted if ad.group.in_layers}


# --- norms -------------------------------------------------------------------------------------------------


def norm_bytes(x: Step, width: int, input_bytes: int) -> int:
    """A norm keeps rsqrt `T·4` and an fp32 copy of a 16-bit input `T·width·4` (an fp32 input is kept itself, by
    the caller); LayerNorm keeps mean and rstd `2·T·4` beside its input; a trained weight (full fine-tuning) also
    keeps the normalized activation its gradient needs. Source: torch RMSNorm/LayerNorm autograd, tracker dumps.
    """
    t, kind = x.t, x.arch.norm_kind
    if kind == "layer":
        return 2 * t * FP32  # mean and rstd; the input itself is kept (caller's tensor)
    saved = t * FP32  # rsqrt, one per token
    if input_bytes != FP32:
        saved += t * width * FP32  # the fp32 copy pow/mul keep
    if x.full:  # a trained weight keeps the normalized activation its gradient needs
        saved += t * width * (FP32 if kind == "gemma" else x.p.act)
    return saved


def norm_keeps_input(x: Step, input_bytes: int) -> bool:
    return x.arch.norm_kind == "layer" or input_bytes == FP32


def residual_norm_bytes(x: Step) -> int:
    """A norm of the residual stream: its own bytes, plus the stream `T·h·a_res` when the norm keeps it."""
    a_res = x.p.residual
    kept_input = x.t * x.h * a_res if norm_keeps_input(x, a_res) else 0
    return norm_bytes(x, x.h, a_res) + kept_input


def normed_input_bytes(x: Step, attention_keeps: bool, mlp_keeps: bool) -> int:
    """A norm output feeding projections `T·h·a`, kept if any consumer keeps it (one output for a parallel block)."""
    one = x.t * x.h * x.p.act
    if x.arch.parallel_block:
        return one if attention_keeps or mlp_keeps else 0
    return (one if attention_keeps else 0) + (one if mlp_keeps else 0)


def head_saved_bytes(x: Step, final_norm: int) -> int:
    """The final norm (`residual_norm_bytes`), and lm_head's input `T·h·a` when lm_head is trained (full
    fine-tuning)."""
    return final_norm + (x.t * x.h * x.p.act if x.full else 0)


# --- projections and their LoRA branches ---------------------------------------------------------------------


class Projection(NamedTuple):
    """What one projection keeps of the tensor it reads."""

    saved: int  # bytes beyond the input tensor itself
    keeps_input: bool  # whether it keeps that input (then the caller counts it)


def lora_branch(x: Step, leaf: str, in_features: int) -> Projection:
    """A frozen projection keeps nothing of its input, a trained one keeps it; a LoRA branch keeps its dropout output
    and mask `T·in·(4+m)` (`m` = 1 for CUDA's bool mask, 4 for the CPU path) or, without dropout, the fp32 cast
    of its input (an fp32 input is kept itself), plus lora_A's output `T·r·4`; DoRA also the base output.
    Source: PEFT lora.Linear.forward (autocast_adapter_dtype), torch dropout, tracker dumps.
    """
    t, p, plan, ad = x.t, x.p, x.plan, x.by_leaf.get(leaf)
    if ad is None:
        return Projection(0, x.full)
    saved = 0
    keeps_input = x.full
    if plan.dropout > 0:
        saved += t * in_features * (FP32 + p.mask)  # dropout output and mask (the fp32 cast is freed)
    elif p.act != FP32:
        saved += t * in_features * FP32  # lora_A keeps the fp32 cast of the input
    else:
        keeps_input = True  # lora_A keeps the fp32 input itself
    saved += t * plan.rank * FP32  # lora_A's output, kept by lora_B
    if plan.dora:
        saved += t * ad.group.out_features * FP32  # DoRA keeps the base output to rescale it
    return Projection(saved, keeps_input)


def attention_leaves(x: Step) -> tuple[str, ...]:
    return ("qkv_proj",) if x.arch.qkv_fused else ("q_proj", "k_proj", "v_proj")


# --- attention ---------------------------------------------------------------------------------------------


def attention_bytes(x: Step) -> int:
    """Attention keeps q and k after rotary `T·(q+kv)·a`, v `T·kv·a` (the whole fused qkv output `T·(q+2kv)·a` for
    Phi-3), its output `T·q·a` and an fp32 logsumexp `b·heads·s·4`; eager instead keeps the fp32 softmax and its
    cast `b·heads·s²·(4+a)` (no cast when a = 4) and, with grouped KV, K and V repeated for every head.
    Source: torch SDPA / flash kernels' saved tensors, transformers eager_attention_forward, tracker dumps.
    """
    a, arch, plan, t = x.p.act, x.arch, x.plan, x.t
    q, kv = x.q, x.kv
    b, s = plan.batch_size, plan.seq_len
    saved = t * (q + 2 * kv) * a if arch.qkv_fused else t * kv * a  # a fused output stays alive through the v view
    saved += t * (q + kv) * a  # q and k after rotary
    if plan.attn == "eager":
        if arch.num_heads // arch.num_kv_heads > 1:
            saved += 2 * t * (q - kv) * a  # repeat_kv materialises K and V for every head
        saved += b * arch.num_heads * s * s * (FP32 + (a if a != FP32 else 0))  # fp32 softmax and its cast back
    else:
        saved += b * arch.num_heads * s * FP32  # flash/efficient kernels keep the fp32 logsumexp
    return saved + t * q * a  # the attention output (kept by the kernel's backward)


def eager_scores_bytes(x: Step) -> int:
    """Eager attention's transient scores while a layer runs: `b·heads·s²·(2a+4)` (none for sdpa/flash)."""
    plan = x.plan
    if plan.attn != "eager":
        return 0
    return plan.batch_size * x.arch.num_heads * plan.seq_len * plan.seq_len * (2 * x.p.act + FP32)


def attention_half_bytes(x: Step, first_norm: int) -> tuple[int, bool]:
    """The attention half's saved bytes (the first norm, q/k/v and o projections, attention), and whether q/k/v
    keep their normed input."""
    qkv = [lora_branch(x, leaf, x.h) for leaf in attention_leaves(x)]
    o_proj = lora_branch(x, "o_proj", x.q)  # its input is the attention output (the kernel returns it heads-last)
    saved = first_norm + sum(c.saved for c in qkv) + attention_bytes(x) + o_proj.saved
    return saved, any(c.keeps_input for c in qkv)


def first_layer_discount(x: Step, first_norm: int) -> int:
    """Without checkpointing PEFT never calls enable_input_require_grads, so layer 0's input needs no gradient: its
    first norm and the dropout masks of its adapted attention projections `T·h·m` each are not kept.
    Source: transformers Trainer / PEFT prepare_model_for_kbit_training (enable_input_require_grads), tracker dumps.
    """
    if x.full or x.plan.gradient_checkpointing:
        return 0
    masked = sum(1 for leaf in attention_leaves(x) if leaf in x.by_leaf) if x.plan.dropout > 0 else 0
    return first_norm + masked * x.t * x.h * x.p.mask


# --- MLPs --------------------------------------------------------------------------------------------------


class GatedProduct(NamedTuple):
    """What is freed before the backward of a gated MLP's product act(gate) · up."""

    down_saved: int  # the down projection's saved tensors (and, for MoE, the output the routing weighting kept)
    act_saved: int  # act(gate), freed before a fused gate_up chunk's backward


class Mlp(NamedTuple):
    """What one MLP keeps, and the moments its forward and backward add."""

    saved: int
    keeps_input: bool  # whether its input projections keep the normed input
    forward_transient: int  # its unsaved intermediates while it runs (checkpointed forward)
    product: GatedProduct | None = None  # None: no gated product (a dense MLP)
    recompute_tail: int = 0  # what the running recompute still references as it ends inside down


def dense_mlp(x: Step) -> Mlp:
    """A dense MLP keeps fc1's output `T·i·a` (kept by the activation), and the activation's output `T·i·a` when fc2
    keeps its input; transient `2·T·i·a`. Source: torch GELU/Linear autograd, tracker dumps.
    """
    t, i, a = x.t, x.i, x.p.act
    up = [lora_branch(x, leaf, x.h) for leaf in ("fc1", "dense_h_to_4h")]
    down = [lora_branch(x, leaf, i) for leaf in ("fc2", "dense_4h_to_h")]
    saved = sum(c.saved for c in up + down) + t * i * a  # fc1's output, kept by the activation
    if any(c.keeps_input for c in down):
        saved += t * i * a
    return Mlp(saved=saved, keeps_input=any(c.keeps_input for c in up), forward_transient=2 * t * i * a)


def gated_mlp(x: Step) -> Mlp:
    """A gated MLP keeps gate, up and act(gate) `3·T·i·a` (a fused gate_up the same `2i` output), and the product
    `T·i·a` only when down keeps its input; transient `4·T·i·a`. Source: torch SiLU/mul autograd, tracker dumps.
    """
    t, i, a = x.t, x.i, x.p.act
    leaves = ("gate_up_proj",) if x.arch.gate_up_fused else ("gate_proj", "up_proj")
    up = [lora_branch(x, leaf, x.h) for leaf in leaves]
    down = lora_branch(x, "down_proj", i)
    down_saved = down.saved + (t * i * a if down.keeps_input else 0)  # the product, kept by a trained down
    keeps_input = any(c.keeps_input for c in up)
    return Mlp(
        saved=sum(c.saved for c in up) + 3 * t * i * a + down_saved,
        keeps_input=keeps_input,
        forward_transient=4 * t * i * a,
        product=GatedProduct(down_saved=down_saved, act_saved=t * i * a),
        recompute_tail=recompute_tail_in_down(x, keeps_input, down.keeps_input),
    )


def moe_experts(x: Step) -> Mlp:
    """MoE keeps the fp32 routing softmax `T·E·4` and, for the `T·k` routed rows, gate/up, act(gate) and the expert
    output `T·k·(3i+h)·a`; experts whose weights need gradients also their inputs `T·k·(h+i)·a`; ParamWrapper-adapted
    experts the folded weights `W + BA` and, for 16-bit weights, the LoRA factors cast to that dtype.
    Source: transformers 5 grouped_mm experts, PEFT ParamWrapper, tracker dumps.
    """
    t, i, h, a = x.t, x.i, x.h, x.p.act
    routed = t * x.k
    experts = x.by_leaf.get("experts")
    trained = x.full or experts is not None
    saved = t * x.arch.num_experts * FP32  # fp32 routing softmax
    saved += routed * (2 * i + i + h) * a  # gate/up output, act(gate), expert output (kept by the weighting)
    if trained:
        saved += routed * (h + i) * a  # experts whose weights need gradients keep their inputs
    if experts is not None:
        saved += folded_expert_bytes(x, experts)
    # freed before the experts' gated-product backward: the product the down grouped_mm keeps when its weights
    # need gradients, and the expert output the routing weighting kept
    down_saved = (routed * i * a if trained else 0) + routed * h * a
    return Mlp(
        saved=saved,
        keeps_input=x.full or x.by_leaf.get("gate") is not None,  # a trained router keeps the normed input
        forward_transient=routed * (h + 2 * i) * a,
        product=GatedProduct(down_saved=down_saved, act_saved=0),
    )


def folded_expert_bytes(x: Step, experts: Adapted) -> int:
    """ParamWrapper materialises W + BA for every wrapped parameter, kept by the matmul; for 16-bit weights the
    fold's baddbmm also keeps the fp32 LoRA factors cast to the weight dtype."""
    a = x.p.act
    saved = sum(math.prod(p.shape) for p in experts.group.params if p.name in experts.wrapped_params) * a
    if a != FP32:
        saved += sum(math.prod(shape) for shape in experts.shapes) * a
    return saved


def mlp(x: Step) -> Mlp:
    if x.arch.num_experts:
        return moe_experts(x)
    return gated_mlp(x) if x.arch.mlp_gated else dense_mlp(x)


# --- backward moments and the recompute's end ----------------------------------------------------------------


def down_backward_bytes(x: Step, width: int) -> int:
    """Down's backward: the residual gradients in and out `2·T·h·a_res`, an fp32 gradient of the normed input `T·h·4`
    and the gradient of the MLP intermediate `T·width·g`. Source: the tracker's backward dumps.
    """
    t, h = x.t, x.h
    return 2 * t * h * x.p.residual + t * h * FP32 + t * width * x.g


def widest_intermediate(x: Step) -> int:
    """`i_w`, the widest MLP intermediate a gradient spans: `2i` for a fused gate_up, `k·i` routed rows for MoE."""
    return (2 * x.i if x.arch.gate_up_fused else x.i) * (x.k if x.arch.num_experts else 1)


def fused_chunk_backward_bytes(x: Step, product: GatedProduct) -> int:
    """A fused gate_up's chunk backward concatenates the gate and up gradients (`2i`) while both halves live, after
    down's and act's saved tensors are freed: `T·h·a_res + 4·T·i·g −` those. Source: the tracker's backward dumps.
    """
    t = x.t
    return t * x.h * x.p.residual + 4 * t * x.i * x.g - product.down_saved - product.act_saved


def gated_product_backward_bytes(x: Step, product: GatedProduct) -> int:
    """Inside the gated product's backward (MulBackward) the product's gradient and both factors' live at once, with
    one residual gradient, down's saved tensors already freed: `T·h·a_res + 3·T·i·g −` those; MoE experts adapt
    weights, not activations, so theirs stay in the activation dtype: `3·T·k·i·a`. Source: tracker dumps.
    """
    rows, dtype = (x.t * x.k, x.p.act) if x.arch.num_experts else (x.t, x.g)
    return x.t * x.h * x.p.residual + 3 * rows * x.i * dtype - product.down_saved


def moe_combine_backward_bytes(x: Step) -> int:
    """The MoE's backward begins with the fp32 routing-weighted combine: the incoming residual gradient and, each
    routed tokens × hidden in fp32, the expanded gradient of the k outputs and the zeros and index_put that undo the
    sort by expert: `T·h·a_res + 3·T·k·h·4`. Source: transformers 5 MoE forward, tracker dumps.
    """
    return x.t * x.h * x.p.residual + 3 * x.t * x.k * x.h * FP32


def backward_transient_bytes(x: Step, layer_mlp: Mlp, scores: int) -> int:
    """The largest backward moment of one layer, plus eager attention's `scores` (not in the MoE combine's moment)."""
    product = layer_mlp.product
    chunked = product is not None and x.arch.gate_up_fused and not x.arch.num_experts
    # a fused gate_up: down's backward holds the product's gradient (i wide); the chunk is its own moment
    moments = [down_backward_bytes(x, x.i if chunked else widest_intermediate(x))]
    if product is not None:
        if chunked:
            moments.append(fused_chunk_backward_bytes(x, product))
        moments.append(gated_product_backward_bytes(x, product))
    peak = max(moments) + scores
    if x.arch.num_experts:
        peak = max(peak, moe_combine_backward_bytes(x))
    return peak


def recompute_tail_in_down(x: Step, mlp_keeps: bool, down_keeps: bool) -> int:
    """A gated MLP's recompute ends inside the down projection: still referenced by the running forward are the
    block's residual (unless the norm keeps it: then it is saved), the MLP's input (unless kept), the product (unless
    down keeps it), the base output, and the fp32 cast of the input that dropout reads (without dropout lora_A saves
    that cast, already counted; an fp32 input is not copied). Source: the tracker's recompute dumps.
    """
    t, h, i, a, a_res = x.t, x.h, x.i, x.p.act, x.p.residual
    tail = (0 if norm_keeps_input(x, a_res) else t * h * a_res) + t * h * a + (0 if mlp_keeps else t * h * a)
    tail += 0 if down_keeps else t * i * a
    if "down_proj" in x.by_leaf and x.plan.dropout > 0 and a != FP32:
        tail += t * i * FP32
    return tail


def recompute_end_bytes(x: Step, tail: int) -> int:
    """As a checkpointed layer's recompute ends: the residual gradient, the norm's fp32 gradient and (16-bit stream)
    its cast back `T·h·4 + T·h·a_res (+ T·h·a_res)`, plus what the recompute still references (`tail`).
    """
    t, h, a_res = x.t, x.h, x.p.residual
    return t * h * FP32 + t * h * a_res + (t * h * a_res if a_res != FP32 else 0) + tail


# --- one layer, the checkpointed layers, the logits --------------------------------------------------------------


def layer_activations(model: ModelSpec, plan: TrainingPlan, by_leaf: Mapping[str, Adapted]) -> LayerActivations:
    """Per-layer activation bytes for a micro-batch of plan.batch_size x plan.seq_len tokens (`by_leaf`: the
    adapted groups in the decoder layers, `adapted_by_leaf`)."""
    x = step(model, plan, by_leaf)
    t, h, a_res = x.t, x.h, x.p.residual
    norm = residual_norm_bytes(x)  # each norm of the residual stream: the first, the second, the final one
    attention, attention_keeps = attention_half_bytes(x, norm)
    second_norm = 0 if x.arch.parallel_block else norm
    layer_mlp = mlp(x)
    scores = eager_scores_bytes(x)
    return LayerActivations(
        saved=attention + second_norm + layer_mlp.saved + normed_input_bytes(x, attention_keeps, layer_mlp.keeps_input),
        forward_transient=max(layer_mlp.forward_transient, scores),
        backward_transient=backward_transient_bytes(x, layer_mlp, scores),
        recompute_transient=recompute_end_bytes(x, layer_mlp.recompute_tail),
        layer_input=t * h * a_res,
        head_saved=head_saved_bytes(x, norm),
        first_layer_discount=first_layer_discount(x, norm),
        input_in_saved=t * h * a_res if norm_keeps_input(x, a_res) else 0,
    )


def kept_layers(plan: TrainingPlan, num_layers: int) -> tuple[int, int]:
    """(layers whose input is kept, layers recomputed at once in backward) under checkpointing."""
    if plan.checkpointing == "sqrt-n":
        k = math.ceil(math.sqrt(num_layers))
        return k, min(k, num_layers)
    return num_layers, 1


def logits_bytes(model: ModelSpec, plan: TrainingPlan) -> tuple[int, int]:
    """logits_peak_bytes, (forward, backward) at their peaks.

    Forward: the logits (lm_head dtype, `a`), their fp32 upcast in the loss (skipped when the logits are already
    fp32) and log_softmax's fp32 output: `T·V·(a + 4 + 4)`, or `8·T·V` when `a = 4` (QLoRA, fp32 models).
    Backward: the saved log_softmax, its incoming gradient and the fp32 gradient of the logits: `12·T·V`.
    Source: transformers ForCausalLMLoss (logits.float()), torch cross_entropy; measured with the tracker.
    """
    p = precision(plan)
    tv = plan.batch_size * plan.seq_len * model.arch.vocab_size
    forward = tv * (p.logits + FP32 + (FP32 if p.logits != FP32 else 0))
    backward = tv * 3 * FP32
    return forward, backward
