"""Activation memory: what autograd saves per decoder layer, the logits and loss peak, and transients.

A decoder layer is assembled here from its parts: the norms and LoRA branches (app/core/step.py), the attention
variants (app/core/attention.py), the MLPs (app/core/mlp.py) and the experts (app/core/experts.py). A model's layers
come in kinds (`layer_kinds`: an MoE model's dense layers are their own kind), and some layers carry extras
(q/k norms, a sliding window's mask). Each function is one row of the README's "How the estimate is computed"
(`activation_bytes`, `layer_transient_bytes`, `logits_peak_bytes`); notation as there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from app.core.adapters import Adapted
from app.core.attention import (
    AttentionHalf,
    Core,
    attention_extras,
    attention_half_bytes,
    attention_masks_bytes,
    first_layer_discount,
    packed_mask_bytes,
)
from app.core.experts import expert_step, moe_combine_backward_bytes, moe_experts, one_expert_rows, routed_rows
from app.core.fused_head import sft_fused_head_bytes, sft_hidden_saved_bytes, sft_loss_saved_bytes
from app.core.mlp import GatedProduct, Mlp, dense_mlp, gated_mlp
from app.core.plan import TrainingPlan
from app.core.quant import rounded
from app.core.spec import ModelSpec
from app.core.step import (
    DOWN_LEAVES,
    LayerKind,
    Step,
    branch_norm_bytes,
    fsdp1_adapter_casts,
    head_saved_bytes,
    layer_kinds,
    norm_keeps_input,
    normed_input_bytes,
    precision,
    residual_norm_bytes,
    step,
)
from app.core.units import DTYPE_BYTES, FP32


class LayerActivations(NamedTuple):
    saved: int  # bytes autograd keeps for one decoder layer with no checkpointing
    forward_transient: int  # extra bytes while one layer runs forward without saving (checkpointed)
    backward_transient: int  # gradient buffers while one layer is backpropagated
    recompute_transient: int  # checkpointing: what is alive besides the saved tensors as a layer's recompute ends
    layer_input: int  # bytes of one layer's input hidden state (what checkpointing keeps)
    head_saved: int  # final norm (and lm_head input when trained) kept for backward
    first_layer_discount: int = 0  # what layer 0 does not keep when its input needs no gradient
    input_in_saved: int = 0  # the layer input, when its first norm keeps it (checkpointing already keeps it)
    qk_norms: int = 0  # the q/k norms' bytes in `saved` (layers without them keep none)
    sliding: int = 0  # a sliding layer's mask and repeated K/V in `saved` (full-attention layers keep none)
    masks: int = 0  # the attention masks every layer reads (`attention_masks_bytes`), once per model
    forward_unchecked: int = 0  # forward_transient of a layer that saves as it runs (checkpoint_every's others)
    mlp_part: int = 0  # the MLP half's share of `saved` (its norm, its saved tensors)


class LayerStack(NamedTuple):
    """Every decoder layer's activations: one `LayerActivations` per kind (layer 0's kind first), with counts."""

    kinds: tuple[tuple[int, LayerActivations], ...]  # (layers of the kind, one layer's activations)
    saved: int  # all decoder layers' saved bytes (no checkpointing), layers without the extras counted without
    masks: int = 0  # the attention masks every layer reads (`attention_masks_bytes`)
    firsts: tuple[int, ...] = (0,)  # each kind's first layer index

    @property
    def first(self) -> LayerActivations:
        return self.kinds[0][1]

    @property
    def layers(self) -> int:
        return sum(count for count, _ in self.kinds)


def mlp(x: Step) -> Mlp:
    if x.moe:
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
    """`i_w`, the widest MLP intermediate a gradient spans: `2i` for a fused gate_up, the routed rows' `k·i` (Llama 4:
    `E·i`) for MoE."""
    return (2 * x.i if x.arch.gate_up_fused else x.i) * (routed_rows(x) // x.t if x.moe else 1)


def fused_chunk_backward_bytes(x: Step, product: GatedProduct) -> int:
    """A fused gate_up's chunk backward concatenates the gate and up gradients (`2i`) while both halves live, after
    down's and act's saved tensors are freed: `T·h·a_res + 4·T·i·g −` those. Source: the tracker's backward dumps.
    """
    t = x.t
    return t * x.h * x.p.residual + 4 * t * x.i * x.g - product.down_saved - product.act_saved


def gated_product_backward_bytes(x: Step, product: GatedProduct) -> int:
    """Inside the gated product's backward (MulBackward) the product's gradient and both factors' live at once, with
    one residual gradient, down's saved tensors already freed: `T·h·a_res + 3·T·i·g −` those; MoE experts adapt
    weights, not activations, so theirs stay in the activation dtype: `3·R·i·a` over the routed rows. Source:
    tracker dumps.
    """
    rows, dtype = (routed_rows(x), x.p.act) if x.moe else (x.t, x.g)
    return x.t * x.h * x.p.residual + 3 * rows * x.i * dtype - product.down_saved


def gated_moments(x: Step, product: GatedProduct | None) -> list[int]:
    """The backward moments of one MLP: down's, and the gated product's (a fused gate_up's chunk its own)."""
    chunked = product is not None and x.arch.gate_up_fused and not x.moe
    # a fused gate_up: down's backward holds the product's gradient (i wide); the chunk is its own moment
    moments = [down_backward_bytes(x, x.i if chunked else widest_intermediate(x))]
    if product is not None:
        if chunked:
            moments.append(fused_chunk_backward_bytes(x, product))
        moments.append(gated_product_backward_bytes(x, product))
    return moments


def backward_transient_bytes(x: Step, layer_mlp: Mlp, attention: AttentionHalf, mlp_part: int) -> int:
    """The largest backward moment of one layer: the MLP's (a shared expert's ops ran after the routed experts', so
    its backward runs first and sees the whole layer, the routed experts' after its saved tensors are freed), and
    attention's, when its scores' gradients live after the MLP's saved tensors (`mlp_part`) are freed
    (`attention_backward_bytes`)."""
    if x.moe and x.arch.experts == "linear":
        moments = linear_expert_moments(x)
    else:
        moments = gated_moments(x, layer_mlp.product) + ([moe_combine_backward_bytes(x)] if x.moe else [])
    if layer_mlp.shared is not None:  # its ops ran after the routed experts': autograd runs its backward first
        shared_x = x._replace(i=x.arch.shared_expert_size, moe=False)
        shared = gated_moments(shared_x, layer_mlp.shared.product)
        moments = [m - layer_mlp.shared.saved for m in moments] + shared
    if attention.core.backward_scores:
        moments.append(attention_backward_bytes(x, attention, mlp_part))
    return max(moments)


def linear_expert_moments(x: Step) -> list[int]:
    """transformers 4's expert loop runs backward an expert at a time: one expert's gated-MLP moments over its rows
    (`one_expert_rows`, `gated_moments`), beside the incoming residual gradient and the block input's gradient that
    the experts' index_add backward accumulates `2·T·h·a_res`. Source: MixtralSparseMoeBlock.forward (4.57.6),
    tracker dumps on that stack.
    """
    one = expert_step(x, one_expert_rows(x))
    product = gated_mlp(one).product
    return [m + 2 * x.t * x.h * x.p.residual for m in gated_moments(one, product)]


def attention_backward_bytes(x: Step, attention: AttentionHalf, mlp_part: int) -> int:
    """Attention's backward (eager, or a kernel that materialises the scores): the incoming residual gradient and the
    scores' gradients beyond the saved tensors, once the MLP half's and o_proj's saved tensors are freed:
    `T·h·a_res + scores' gradients − MLP half − o_proj's`. Source: tracker dumps.
    """
    return x.t * x.h * x.p.residual + attention.core.backward_scores - mlp_part - attention.output_part


def attention_forward_bytes(x: Step, attention: AttentionHalf) -> int:
    """A layer running attention forward (eager, or a kernel that materialises the scores) without saving
    (checkpointed): the normed input `T·h·a`, what the core reads (q, K, V) and the score tensors alive at the
    peak: `T·h·a + core − saved scores + forward scores`. Source: tracker dumps."""
    core = attention.core
    return x.t * x.h * x.p.act + core.saved - core.scores_saved + core.forward_scores


def recompute_scores_bytes(x: Step, core: Core, mlp_part: int) -> int:
    """Checkpointing: while a layer's recompute runs attention its MLP half is not recomputed yet, and the scores
    live beside the incoming residual gradient: `T·h·a_res + forward scores − saved scores − MLP half`."""
    return x.t * x.h * x.p.residual + core.forward_scores - core.scores_saved - mlp_part


def expanded_output_gradient_bytes(x: Step) -> int:
    """Llama 4's routed experts' output is summed over the experts into the shared expert's: with frozen experts that
    sum's backward and the reshape after it (they need no saved tensor) run before the recompute and copy the
    gradient out for every expert, `T·E·h·a`; with trained experts the recompute comes first (tracker dumps)."""
    frozen = not x.full and "experts" not in x.by_leaf
    return routed_rows(x) * x.h * x.p.act if x.moe and x.arch.experts == "dense" and frozen else 0


def recompute_end_bytes(x: Step, tail: int) -> int:
    """As a checkpointed layer's recompute ends: the residual gradient, the norm's fp32 gradient and (16-bit stream)
    its cast back `T·h·4 + T·h·a_res (+ T·h·a_res)`, plus what the recompute still references (`tail`).
    """
    t, h, a_res = x.t, x.h, x.p.residual
    return t * h * FP32 + t * h * a_res + (t * h * a_res if a_res != FP32 else 0) + tail


def adapter_cast_width(x: Step) -> int:
    """The input width of a layer's last adapted projection under `fsdp1_adapter_casts`: down's `i` when it is
    adapted, else `h` (a projection reading the stream); 0 without those casts."""
    if not fsdp1_adapter_casts(x.plan) or not x.by_leaf:
        return 0
    return x.i if any(leaf in x.by_leaf for leaf in DOWN_LEAVES) else x.h


def adapter_cast_bytes(x: Step) -> int:
    """LoRA under FSDP1's MixedPrecision with autocast (`fsdp1_adapter_casts`): at the layer's last adapted
    projection (`adapter_cast_width` `in`) PEFT's fp32 cast of its 16-bit input `T·in·4` and, with dropout, dropout's
    fp32 output `T·in·4` live beside everything the layer has saved, until autocast's 16-bit cast for lora_A is made.
    Source: peft tuners_utils.py `_cast_input_dtype`, torch dropout, tracker dumps on CPU ranks (llama, LoRA, x2)."""
    return x.t * adapter_cast_width(x) * FP32 * (2 if x.plan.dropout > 0 else 1)


def adapter_forward_bytes(x: Step) -> int:
    """`adapter_cast_bytes`' moment in a checkpointed layer's forward, which saves nothing: besides the casts, the
    16-bit input they read `T·in·c`, the base projection's output `T·h·c` and, with dropout, its fp32 mask `T·in·4`
    (else autocast's cast `T·in·c` being made). Source: tracker dumps on CPU ranks (llama, LoRA, x2: the peak at
    down_proj's dropout)."""
    width, c = adapter_cast_width(x), x.p.compute
    if not width:
        return 0
    return adapter_cast_bytes(x) + x.t * width * (c + (FP32 if x.plan.dropout > 0 else c)) + x.t * x.h * c


def adapter_recompute_bytes(x: Step) -> int:
    """`adapter_forward_bytes`' moment in a layer's recompute, beside the incoming residual gradient `T·h·a_res`; the
    mask is among the tensors the recompute saves. Source: tracker dumps on CPU ranks (llama, LoRA, x2: -5.66 % with
    the gathered adapters' terms, -0.57 % with these)."""
    width = adapter_cast_width(x)
    if not width:
        return 0
    mask = x.t * width * FP32 if x.plan.dropout > 0 else 0
    return x.t * x.h * x.p.residual + adapter_forward_bytes(x) - mask


# --- one layer, the checkpointed layers, the logits --------------------------------------------------------------


class WeightCopies(NamedTuple):
    """Autocast's 16-bit copies of the weights the matmuls read (0 without autocast)."""

    layer: int  # one decoder layer's: its linear weights and LoRA A/B, each saved by its matmul for backward
    head: int  # lm_head's (the embedding's, when tied), saved by its matmul
    cached: int  # the trainable ones of every decoder layer: autocast's cache holds them until the forward ends


def autocast_weight_copies(model: ModelSpec, plan: TrainingPlan, by_leaf: Mapping[str, Adapted]) -> WeightCopies:
    """Under torch.autocast each matmul casts its fp32 weight to the compute dtype `c` and saves the cast for
    backward (the weight of a frozen projection too: its input needs a gradient); casts of leaf tensors that
    require grad (the trainable weights) are also kept in autocast's cache until the outermost autocast region
    exits (the end of the forward): one layer's `Σ numel·c` of its linear weights and LoRA A/B, lm_head's
    `V·h·c`. Source: torch aten/src/ATen/autocast_mode.cpp `cached_cast` (`arg.requires_grad() && arg.is_leaf()`,
    cleared by `clear_autocast_cache` when the nesting drops to 0), tracker dumps (saved-tensor hooks)."""
    if not plan.autocast_over_fp32:  # gathered in `c` by an FSDP policy: autocast's weight casts are no-ops
        return WeightCopies(0, 0, 0)
    c, layers = DTYPE_BYTES[plan.dtype], model.arch.num_layers
    linear = [g for g in model.groups if g.kind == "linear"]
    frozen = sum(g.count * rounded(g.in_features * g.out_features * c) for g in linear if g.in_layers)
    head = sum(rounded(g.in_features * g.out_features * c) for g in linear if g.output_layer)
    lora = sum(ad.group.count * sum(rounded(s[0] * s[1] * c) for s in ad.shapes[:2]) for ad in by_leaf.values())
    trainable = frozen if plan.method == "full" else lora
    return WeightCopies(layer=math.ceil((frozen + lora) / layers), head=head, cached=trainable)


def autocast_cache_bytes(model: ModelSpec, plan: TrainingPlan, by_leaf: Mapping[str, Adapted], layers: int) -> int:
    """autocast_cache_bytes: with checkpointing the checkpointed layers save nothing in forward, but autocast's cache
    keeps the 16-bit copies of their trainable weights (`autocast_weight_copies`) until the forward ends; without
    it those copies are the saved ones (in activation_bytes). Measured with the tracker."""
    if not plan.autocast_over_fp32 or not plan.gradient_checkpointing:
        return 0
    copies = autocast_weight_copies(model, plan, by_leaf)
    return math.ceil(copies.cached * kept_layers(plan, layers)[0] / model.arch.num_layers)


def layer_activations(
    model: ModelSpec, plan: TrainingPlan, by_leaf: Mapping[str, Adapted], kind: LayerKind | None = None
) -> LayerActivations:
    """Per-layer activation bytes for a micro-batch of plan.batch_size x plan.seq_len tokens (`by_leaf`: the
    adapted groups in the decoder layers, `adapted_by_leaf`), for one layer of `kind` with every extra its model
    has (q/k norms, a sliding window)."""
    x = step(model, plan, by_leaf, kind)
    t, h, a_res = x.t, x.h, x.p.residual
    norm = residual_norm_bytes(x)  # each norm of the residual stream: the first, the second, the final one
    attention = attention_half_bytes(x, norm)
    second_norm = 0 if x.arch.parallel_block else norm
    layer_mlp = mlp(x)
    qk_norms, sliding = attention_extras(x)
    branch_norms = branch_norm_bytes(x)
    normed = normed_input_bytes(x, attention.keeps_input, layer_mlp.keeps_input)
    copies = autocast_weight_copies(model, plan, by_leaf)
    saved = attention.saved + second_norm + layer_mlp.saved + normed + qk_norms + sliding + branch_norms + copies.layer
    saved += packed_mask_bytes(x)
    mlp_part = second_norm + layer_mlp.saved + branch_norms // 2
    core = attention.core
    # checkpointed, the forward saves nothing: attention's tensors are alive while it runs; else they are saved
    unchecked = max(
        layer_mlp.forward_transient,
        core.forward_scores - core.scores_saved - mlp_part - attention.output_part,
        adapter_cast_bytes(x),
    )
    return LayerActivations(
        saved=saved,
        forward_transient=max(
            layer_mlp.forward_transient, attention_forward_bytes(x, attention), adapter_forward_bytes(x)
        )
        if plan.gradient_checkpointing
        else unchecked,
        forward_unchecked=unchecked,
        backward_transient=backward_transient_bytes(x, layer_mlp, attention, mlp_part),
        recompute_transient=max(
            recompute_end_bytes(x, layer_mlp.recompute_tail + expanded_output_gradient_bytes(x)),
            recompute_scores_bytes(x, core, mlp_part),
            adapter_recompute_bytes(x),
        ),
        layer_input=t * h * a_res,
        head_saved=head_saved_bytes(x, norm) + copies.head + sft_hidden_saved_bytes(model, plan),
        first_layer_discount=first_layer_discount(x, norm, attention),
        input_in_saved=t * h * a_res if norm_keeps_input(x, a_res) else 0,
        qk_norms=qk_norms,
        sliding=sliding,
        masks=attention_masks_bytes(x),
        mlp_part=mlp_part,
    )


def layer_stack(model: ModelSpec, plan: TrainingPlan, by_leaf: Mapping[str, Adapted]) -> LayerStack:
    """Every decoder layer: each kind's activations (with the extras, as layer 0 has them when any layer does), and
    the total saved with each extra counted on the layers that have it (`qk_norm_layers`, `sliding_layers`)."""
    arch = model.arch
    layout = layer_kinds(arch)
    kinds = tuple((kind.layers, layer_activations(model, plan, by_leaf, kind)) for kind in layout)
    first = kinds[0][1]  # the extras are the same in every kind
    without = (arch.num_layers - arch.qk_norm_layers) * first.qk_norms
    without += (arch.num_layers - arch.sliding_layers) * first.sliding
    saved = sum(count * la.saved for count, la in kinds) - without
    return LayerStack(kinds=kinds, saved=saved, masks=first.masks, firsts=tuple(kind.first for kind in layout))


def kept_layers(plan: TrainingPlan, num_layers: int) -> tuple[int, int]:
    """(layers whose input is kept, layers recomputed at once in backward) under checkpointing; with
    `checkpoint_every` n only layers 0, n, 2n, … are checkpointed (`checkpointed_layers`)."""
    if plan.checkpointing == "sqrt-n":
        k = math.ceil(math.sqrt(num_layers))
        return k, min(k, num_layers)
    return checkpointed_layers(plan, num_layers), 1


def kind_layers(stack: LayerStack) -> tuple[tuple[int, ...], ...]:
    """Each kind's layer indices: one kind holds them all; an MoE model's dense kind the rest of its MoE layers,
    which follow the dense ones (DeepSeek's first_k_dense_replace) or interleave from the first MoE layer every
    `L / moe layers` (Llama 4's interleave_moe_layer_step)."""
    total = stack.layers
    if len(stack.kinds) == 1:
        return (tuple(range(total)),)
    (dense, _), (moe, _) = stack.kinds[0], stack.kinds[1]
    first = stack.firsts[1]
    routed = range(first, total) if first == dense else range(first, total, max(1, total // max(1, moe)))
    layers = set(routed)
    return tuple(i for i in range(total) if i not in layers), tuple(sorted(layers))


def checkpointed_by_kind(stack: LayerStack, plan: TrainingPlan) -> tuple[int, ...]:
    """Each kind's checkpointed layers under `checkpoint_every` n (indices that are multiples of n): Llama 4's
    every_n_layers=2 checkpoints only its dense layers 0, 2, …, so its MoE layers are never recomputed."""
    n = plan.checkpoint_every
    return tuple(sum(1 for i in indices if i % n == 0) for indices in kind_layers(stack))


def unchecked_saved_bytes(stack: LayerStack, plan: TrainingPlan, layers: int) -> int:
    """checkpoint_every > 1: what the layers left unchecked keep, each kind's saved set times its unchecked layers
    (scaled as `stack.saved` counts the extras only on the layers that have them); on a worst GPU running fewer
    layers than the model's, the average layer's."""
    if plan.checkpoint_every == 1:
        return 0
    if layers != stack.layers or len(stack.kinds) == 1:
        return math.ceil(stack.saved * (layers - checkpointed_layers(plan, layers)) / stack.layers)
    per_kind = [count * la.saved for count, la in stack.kinds]
    checked = checkpointed_by_kind(stack, plan)
    unchecked = sum((count - c) * la.saved for (count, la), c in zip(stack.kinds, checked, strict=True))
    return math.ceil(unchecked * stack.saved / sum(per_kind))


def checkpointed_layers(plan: TrainingPlan, num_layers: int) -> int:
    """transformers 5 `every_n_layers` = n checkpoints the decoder layers whose index is a multiple of n
    (modeling_utils._set_gradient_checkpointing: `layer_index % every_n_layers == 0`): ⌈L/n⌉ of them; the other
    layers keep their whole saved set, as without checkpointing."""
    return -(-num_layers // plan.checkpoint_every)


def kept_logits_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """keep_logits: a loop that holds the model's output (`out = model(...); out.loss.backward(); opt.step()`, as
    hand-written loops and the HF course's do) keeps the logits, `T·V·a`, from its forward through backward, the
    optimizer step and the next forward, until the next output replaces it (transformers.Trainer drops it in
    compute_loss). Measured with the tracker."""
    if not plan.keep_logits or plan.fused_cross_entropy:
        return 0  # Liger's fused loss returns no logits
    return plan.batch_size * plan.seq_len * model.arch.vocab_size * precision(plan).logits


def fused_cross_entropy_bytes(model: ModelSpec, plan: TrainingPlan) -> tuple[int, int]:
    """logits_peak_bytes under Liger's fused linear cross-entropy, (forward, backward). The forward computes the
    loss and both gradients chunk by chunk: `chunk = min(next_pow2(⌈T / ⌈V/h⌉⌉), T)` rows of logits `chunk·V·a`
    (the kernel writes their gradient in place) and of `grad_logits @ W` `chunk·h·a`, beside grad_input `T·h·a`,
    the fp32 loss `T·4` and the target mask `T`, and lm_head's weight gradient `V·h·w` when it is trained; backward
    hands on grad_input `T·h·a`. First principles, not measured (Triton kernels: no CPU run). Source:
    linkedin/Liger-Kernel src/liger_kernel/ops/fused_linear_cross_entropy.py `fused_linear_cross_entropy_forward`."""
    t, v, h, a = plan.batch_size * plan.seq_len, model.arch.vocab_size, model.arch.hidden_size, precision(plan).logits
    inc = -(-v // h)
    chunk = min(1 << max(0, math.ceil(math.log2(-(-t // inc)))), t)
    weight_grad = (
        v * h * (FP32 if plan.autocast_over_fp32 or plan.dtype != "bf16" else a) if plan.method == "full" else 0
    )
    grad_input = t * h * a
    return grad_input + weight_grad + t * FP32 + t + chunk * (v + h) * a, grad_input


def loss_saved_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """What the loss keeps for backward once the forward is done (the logits themselves freed with the output):
    log_softmax's fp32 output `4·T·V`, or under Liger's fused cross-entropy the grad_input it made in forward
    (`fused_cross_entropy_bytes`' backward term). Source: torch cross_entropy (log_softmax saves its result,
    nll_loss reads it), transformers ForCausalLMLoss."""
    if plan.fused_cross_entropy:
        return fused_cross_entropy_bytes(model, plan)[1]
    if plan.loop == "sft":
        return sft_loss_saved_bytes(model, plan)
    return plan.batch_size * plan.seq_len * model.arch.vocab_size * FP32


def logits_bytes(model: ModelSpec, plan: TrainingPlan) -> tuple[int, int]:
    """logits_peak_bytes, (forward, backward) at their peaks.

    Forward: the logits (lm_head dtype, `a`), their fp32 upcast in the loss (skipped when the logits are already
    fp32) and log_softmax's fp32 output: `T·V·(a + 4 + 4)`, or `8·T·V` when `a = 4` (QLoRA, fp32 models).
    Backward: the saved log_softmax, its incoming gradient and the fp32 gradient of the logits: `12·T·V`.
    Source: transformers ForCausalLMLoss (logits.float()), torch cross_entropy; measured with the tracker.
    """
    if plan.fused_cross_entropy:
        return fused_cross_entropy_bytes(model, plan)
    if plan.loop == "sft":  # TRL's fused LM head: no logits (app/core/fused_head.py)
        return sft_fused_head_bytes(model, plan)
    p = precision(plan)
    tv = plan.batch_size * plan.seq_len * model.arch.vocab_size
    forward = tv * (p.logits + FP32 + (FP32 if p.logits != FP32 else 0))
    backward = tv * 3 * FP32
    return forward, backward
