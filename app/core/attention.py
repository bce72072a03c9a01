"""Attention's saved tensors per decoder layer: the Llama-style block and the 2024-2025 variants.

Rotary embeddings save only cos/sin: q and k after rotation are new tensors kept by attention, v is kept as
projected (for a fused qkv projection the whole fused output stays alive through the v view). Each function is
one row (or sub-row) of the README's "How the estimate is computed"; notation as there and in app/core/step.py.
"""

from __future__ import annotations

from typing import NamedTuple

from app.core.step import Step, lora_branch, norm_bytes
from app.core.units import FP32

INT64 = 8  # torch.int64, e.g. the indices max() keeps for its backward
# every projection that can feed q, k or v (fused or not, MLA's compressed paths)
QKV_FEEDING = frozenset(
    {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "Wqkv", "c_attn", "qkv"}
    | {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"}
)


class Core(NamedTuple):
    """What the attention core keeps, the width of its output (o_proj's input) and whether the kernel keeps it, and,
    for kernels that materialise the scores (eager, the CPU math kernel): the score tensors among the saved, those
    alive at the forward's peak (saved or not), and those beyond the saved in its backward."""

    saved: int
    out_width: int
    output_kept: bool
    scores_saved: int = 0
    forward_scores: int = 0
    backward_scores: int = 0


def attention_leaves(x: Step) -> tuple[str, ...]:
    return ("qkv_proj",) if x.arch.qkv_fused else ("q_proj", "k_proj", "v_proj")


def attention_bytes(x: Step) -> int:
    """Attention (sdpa, flash) keeps q and k after rotary `T·(q+kv)·a`, v `T·kv·a` (the whole fused qkv output
    `T·(q+2kv)·a` for Phi-3), its output `T·q·a` and an fp32 logsumexp `b·heads·s·4`.
    Source: torch SDPA / flash kernels' saved tensors, tracker dumps.
    """
    a, arch, plan, t = x.p.act, x.arch, x.plan, x.t
    saved = t * (x.q + 2 * x.kv) * a if arch.qkv_fused else t * x.kv * a  # a fused output stays alive through v
    saved += t * (x.q + x.kv) * a  # q and k after rotary
    saved += plan.batch_size * arch.num_heads * plan.seq_len * FP32  # flash/efficient kernels keep the logsumexp
    return saved + t * x.q * a  # the attention output (kept by the kernel's backward)


def eager_attention_bytes(x: Step) -> Core:
    """Eager attention keeps q after rotary `T·q·a`, K and V as the matmuls read them (`T·kv·a` each; with grouped KV
    repeated for every head, `T·q·a` each; the whole fused qkv output for Phi-3) and the fp32 softmax with its cast
    back `b·H·s²·(4+a)` (one tensor when a = 4). While it runs: the masked scores, the softmax's fp32 copy of them
    and its output `b·H·s²·(a+8)` (`8` when a = 4); in backward, beyond the saved: the probabilities' gradient cast
    to fp32 and softmax's backward `b·H·s²·8`, less the cast the second matmul's backward freed.
    Source: transformers eager_attention_forward (softmax(dtype=float32).to(query.dtype)), tracker dumps.
    """
    a, arch, plan, t = x.p.act, x.arch, x.plan, x.t
    scores = plan.batch_size * arch.num_heads * plan.seq_len * plan.seq_len
    kv = x.q if arch.num_heads > arch.num_kv_heads else x.kv  # repeat_kv copies K and V for every head
    saved = t * (x.q + 2 * x.kv) * a if arch.qkv_fused else t * (x.q + 2 * kv) * a
    cast = a if a != FP32 else 0
    kept = scores * (FP32 + cast)
    forward = scores * (cast + 2 * FP32)
    backward = scores * (2 * FP32 - cast) - t * kv * a  # the second matmul's backward freed the cast and V
    return Core(saved + kept, x.q, False, scores_saved=kept, forward_scores=forward, backward_scores=backward)


def qk_norm_bytes(x: Step) -> int:
    """q_norm and k_norm (Qwen3, Gemma 3, OLMo 2; Llama 4's weightless L2 norm) on the projections `T·(q+kv)`: per
    row rsqrt (rows `T·heads` for a per-head norm, `T` for a whole-projection one) and the fp32 copy of a 16-bit
    input (an fp32 input is kept itself: the same bytes), and with a trained weight (full) the normalized
    activation. Source: Qwen3Attention / Gemma3Attention / Llama4TextAttention.forward, tracker dumps.
    """
    arch = x.arch
    if arch.qk_norm == "none":
        return 0
    saved = 0
    for heads, width in ((arch.num_heads, x.q), (arch.num_kv_heads, x.kv)):
        rows, norm_width = (x.t * heads, arch.head_dim) if arch.qk_norm == "head" else (x.t, width)
        saved += norm_bytes(x, norm_width, x.p.act, rows=rows, weighted=arch.qk_norm_weight)
        if x.p.act == FP32:
            saved += rows * norm_width * FP32  # the fp32 input the norm keeps itself
    return saved


def sliding_mask_bytes(x: Step) -> int:
    """A sliding-window (or chunked) layer under sdpa once the sequence reaches the window: transformers passes a
    bool mask (b, 1, s, s), so torch converts it to an additive mask in the query dtype that the kernel keeps,
    `b·s²·a`, and transformers no longer lets sdpa broadcast grouped KV heads (use_gqa_in_sdpa needs no mask): K and
    V are repeated for every head, `2·T·(q−kv)·a` (a view, no copy, with one KV head). flash_attention_2 windows
    natively and eager computes the whole `s²` either way. Source: transformers masking_utils and
    integrations/sdpa_attention.py, torch sdpa's convert_boolean_attn_mask, tracker dumps.
    """
    arch, plan = x.arch, x.plan
    if plan.packing or plan.attn != "sdpa" or arch.sliding_window is None or plan.seq_len < arch.sliding_window:
        return 0  # packed rows: every layer's mask is packed_mask_bytes'
    return masked_sdpa_bytes(x)


def packed_mask_bytes(x: Step) -> int:
    """packing: transformers detects packed rows from position_ids (masking_utils find_packed_sequence_indices) and
    then never lets sdpa skip the mask (allow_is_causal_skip = False), so every layer under sdpa reads a
    block-diagonal bool mask and keeps what a sliding layer keeps (`masked_sdpa_bytes`: the additive mask `b·s²·a`
    and grouped K/V repeated); flash_attention_2 runs varlen (cu_seqlens) without a mask, eager's float mask is
    materialised anyway. First principles (no packed run measured). Source: transformers masking_utils
    `_preprocess_mask_arguments`, `create_causal_mask`."""
    return masked_sdpa_bytes(x) if x.plan.packing and x.plan.attn == "sdpa" else 0


def masked_sdpa_bytes(x: Step) -> int:
    """What an sdpa layer given a bool mask keeps: the additive mask `b·s²·a` and K/V repeated for every head."""
    arch, plan, a = x.arch, x.plan, x.p.act
    saved = plan.batch_size * plan.seq_len * plan.seq_len * a
    if arch.num_kv_heads > 1 and arch.num_heads > arch.num_kv_heads:
        saved += 2 * x.t * (x.q - x.kv) * a
    return saved


def mla_attention_bytes(x: Step) -> Core:
    """DeepSeek's latent attention (MLA): the q path (q_a_proj, its norm, q_b_proj) and the kv path
    (kv_a_proj_with_mqa, the norm of its `kv_lora_rank` part, kv_b_proj) keep what their projections and norms keep;
    attention reads q = [q_nope, q_rope] and k = [k_nope, k_rope] `T·H·d_qk·a` each and v, a view of kv_b's output
    `T·H·(d_nope+d_v)·a`, and keeps them, its output `T·H·d_v·a` and the logsumexp. On the CPU (d_qk ≠ d_v: torch's
    math kernel, which computes 16-bit inputs in fp32, as the CPU flash kernel needs equal widths; CUDA's
    memory-efficient kernel takes them as they are) and with eager it keeps q·scale and k·scale `T·H·d_qk` each,
    v `T·H·d_v` (fp32 on the math kernel) and the softmax `b·H·s²·4` (eager: and its cast back) instead, with the
    fp32 scores and softmax `b·H·s²·8` (and the math kernel's fp32 causal mask `s²·4`) while it runs and the
    probabilities' and softmax's gradients `b·H·s²·8` in backward.
    Source: DeepseekV3Attention.forward, torch sdpa, tracker dumps.
    """
    mla, arch, plan, t, a = x.arch.mla, x.arch, x.plan, x.t, x.p.act
    assert mla is not None
    heads, b, s = arch.num_heads, plan.batch_size, plan.seq_len
    saved = 0
    if mla.q_lora_rank:
        saved += projection_with_norm_bytes(x, "q_b_proj", mla.q_lora_rank, mla.q_lora_rank)
    saved += projection_with_norm_bytes(x, "kv_b_proj", mla.kv_lora_rank, mla.kv_lora_rank + mla.qk_rope_head_dim)
    qk, v = heads * mla.qk_head_dim, heads * mla.v_head_dim
    if plan.attn == "eager" or (plan.device == "cpu" and mla.qk_head_dim != mla.v_head_dim):
        eager = plan.attn == "eager"
        cast = a if eager and a != FP32 else 0  # eager also keeps the softmax's cast back
        scores = b * heads * s * s
        kept = scores * (FP32 + cast)
        saved += t * (2 * qk + v) * (a if eager else FP32) + kept
        forward = scores * (cast + 2 * FP32) + (0 if eager else s * s * FP32)  # the math kernel's fp32 causal mask
        backward = scores * (2 * FP32 - cast)
        return Core(saved, v, False, scores_saved=kept, forward_scores=forward, backward_scores=backward)
    saved += 2 * t * qk * a + t * heads * (mla.qk_nope_head_dim + mla.v_head_dim) * a  # q, k, kv_b's output
    return Core(saved + t * v * a + b * heads * s * FP32, v, output_kept=True)  # the output and the logsumexp


def projection_with_norm_bytes(x: Step, reader: str, width: int, stored: int) -> int:
    """A compressed projection's output `T·width` normalised and read by `reader` (MLA's q_a_layernorm before q_b_proj,
    kv_a_layernorm before kv_b_proj): the norm's saved bytes (an fp32 input is kept itself: all `stored` columns, as
    the norm reads a view of them), and the reader's LoRA branch or, trained, its normalized input `T·width·a`."""
    a = x.p.act
    saved = norm_bytes(x, width, a) + (x.t * stored * FP32 if a == FP32 else 0)
    branch = lora_branch(x, reader, width)
    return saved + branch.saved + (x.t * width * a if branch.keeps_input else 0)


def sink_attention_bytes(x: Step) -> Core:
    """gpt-oss's eager attention with sinks (transformers has no sdpa path for it): q after rotary `T·q·a`, K and V
    as the matmuls read them (repeated for every head with grouped KV: `T·q·a` each), the max's int64 indices
    `b·H·s·8` and the softmax over the scores and the sink logit, in the activation dtype, `b·H·s·(s+1)·a`; while it
    runs the masked scores, their concatenation with the sinks and its shift by the max (or the softmax)
    `3·b·H·s·(s+1)·a`; in backward softmax's and the max's gradients, beyond the freed softmax, `2·b·H·s·(s+1)·a`.
    Source: modeling_gpt_oss.eager_attention_forward, tracker dumps.
    """
    arch, plan, t, a = x.arch, x.plan, x.t, x.p.act
    b, s, heads = plan.batch_size, plan.seq_len, arch.num_heads
    kv = x.q if heads > arch.num_kv_heads else x.kv
    probs = b * heads * s * (s + 1)
    kept = probs * a + b * heads * s * INT64
    saved = t * (x.q + 2 * kv) * a + kept
    return Core(saved, x.q, False, scores_saved=kept, forward_scores=3 * probs * a, backward_scores=2 * probs * a)


def qkv_leaves(x: Step) -> tuple[tuple[str, int], ...]:
    """The projections reading the layer's normed input, with their input widths."""
    if x.arch.attention == "mla" and x.arch.mla is not None:
        first = "q_a_proj" if x.arch.mla.q_lora_rank else "q_proj"
        return (first, x.h), ("kv_a_proj_with_mqa", x.h)
    return tuple((leaf, x.h) for leaf in attention_leaves(x))


def attention_core(x: Step) -> Core:
    arch = x.arch
    if arch.attention == "mla" and arch.mla is not None:
        return mla_attention_bytes(x)
    if arch.attention == "sinks" and x.plan.attn == "eager":
        return sink_attention_bytes(x)
    if x.plan.attn == "eager":
        return eager_attention_bytes(x)
    return Core(attention_bytes(x), x.q, output_kept=True)


class AttentionHalf(NamedTuple):
    saved: int  # the first norm, the projections and the attention core
    keeps_input: bool  # the projections reading the normed input keep it
    core: Core
    output_part: int  # what o_proj keeps, freed before the core's backward


def attention_half_bytes(x: Step, first_norm: int) -> AttentionHalf:
    """The attention half's saved bytes (the first norm, the projections, attention), and whether the projections
    reading the normed input keep it."""
    qkv = [lora_branch(x, leaf, width, normed=True) for leaf, width in qkv_leaves(x)]
    core = attention_core(x)
    o_proj = lora_branch(x, "o_proj", core.out_width)  # its input is the attention output
    kept_out = x.t * core.out_width * x.p.act if o_proj.keeps_input and not core.output_kept else 0
    saved = first_norm + sum(c.saved for c in qkv) + core.saved + o_proj.saved + kept_out
    return AttentionHalf(saved, any(c.keeps_input for c in qkv), core, o_proj.saved + kept_out)


def attention_masks_bytes(x: Step) -> int:
    """The masks transformers builds once per forward and every layer reads (kept through backward by checkpointing):
    eager adds a float mask `b·s²·a_res` per mask kind (causal, and sliding where some layers slide); sdpa gets a
    bool sliding mask `b·s²` once the sequence reaches the window. Source: transformers masking_utils, tracker dumps.
    """
    arch, plan = x.arch, x.plan
    square = plan.batch_size * plan.seq_len * plan.seq_len
    if plan.attn == "eager":
        kinds = (1 if arch.sliding_layers < arch.num_layers else 0) + (1 if arch.sliding_layers else 0)
        return kinds * square * x.p.residual
    if plan.attn == "sdpa" and plan.packing:  # a packed causal mask, and a packed sliding one where layers slide
        return square * (1 + (1 if arch.sliding_layers and arch.sliding_layers < arch.num_layers else 0))
    if plan.attn == "sdpa" and arch.sliding_window is not None and plan.seq_len >= arch.sliding_window:
        return square  # torch.bool
    return 0


def attention_extras(x: Step) -> tuple[int, int]:
    """(q/k norms' bytes, a sliding layer's mask and repeated K/V) of one layer that has them."""
    return qk_norm_bytes(x), sliding_mask_bytes(x)


def first_layer_discount(x: Step, first_norm: int, attention: AttentionHalf) -> int:
    """Without checkpointing PEFT never calls enable_input_require_grads, so layer 0's input needs no gradient: its
    first norm and the dropout masks of its adapted projections reading it `T·h·m` each are not kept, nor, when no
    projection feeding q, k or v is adapted (e.g. LoRA on o_proj only), anything of its attention core and q/k norms.
    Source: transformers Trainer / PEFT prepare_model_for_kbit_training (enable_input_require_grads), tracker dumps.
    """
    if x.full or x.plan.gradient_checkpointing:
        return 0
    masked = sum(1 for leaf, _ in qkv_leaves(x) if leaf in x.by_leaf) if x.plan.dropout > 0 else 0
    discount = first_norm + masked * x.t * x.h * x.p.mask
    if not any(leaf in x.by_leaf for leaf in QKV_FEEDING):
        discount += attention.core.saved + sum(attention_extras(x))
    return discount
