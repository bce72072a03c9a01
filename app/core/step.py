"""One micro-batch through one decoder layer: its shapes and precision, and the rules every block shares.

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

Notation as in the README's "How the estimate is computed": `T` tokens, `h` hidden, `q`, `kv`, `i` intermediate,
`k` experts per token, `r` LoRA rank, `a` activation bytes, `a_res` residual-stream bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from app.core.adapters import Adapted
from app.core.plan import TrainingPlan
from app.core.spec import ArchSummary, ModelSpec
from app.core.units import BF16, BOOL, DTYPE_BYTES, FP32

DOWN_LEAVES = ("down_proj", "fc2", "dense_4h_to_h")


class Precision(NamedTuple):
    """Bytes per element of the tensors a step creates."""

    compute: int  # bitsandbytes compute dtype / model dtype
    residual: int  # residual stream (embedding output dtype)
    act: int  # norm outputs, projection outputs, attention, MLP intermediates
    logits: int  # lm_head output
    mask: int  # LoRA dropout mask element
    adapter: int = FP32  # LoRA weights and the casts PEFT makes for them (the compute dtype under DeepSpeed ZeRO)


def precision(plan: TrainingPlan) -> Precision:
    c = DTYPE_BYTES[plan.dtype]
    # torch's fused dropout (CUDA) keeps a bool mask; the CPU path multiplies by a mask in the input dtype (fp32)
    mask = BOOL if plan.device == "cuda" else FP32
    lora = adapter_dtype_bytes(plan)
    # QLoRA keeps prepare_model_for_kbit_training's fp32 embeddings, norms and lm_head, so an fp32 residual stream
    # and logits; under ZeRO-2 the engine casts them to the model dtype (below; zero.py `qlora_zero2_terms`), with
    # ZeRO-2's offload_optimizer too (cpu-matrix-zero-offload2) (not under FSDP1: `kbit_upcast`, the stream and
    # logits in the compute dtype, as LoRA's)
    zero = plan.sharding in ("zero2", "zero3") and plan.gpus > 1 and not (plan.offload and plan.sharding == "zero3")
    if kbit_upcast(plan) and not zero:
        return Precision(c, FP32, FP32, FP32, mask, lora)  # compute, residual, act, logits, mask, adapter
    if plan.autocast_over_fp32:  # the embedding is not autocast (fp32 stream); matmuls and their outputs are 16-bit
        return Precision(c, FP32, c, c, mask, lora)
    if plan.fsdp_mixed_precision and plan.device == "cpu":  # adapters gathered in `c`: dropout reads a 16-bit input
        return Precision(c, c, c, c, FP32 if fsdp1_adapter_casts(plan) else c, lora)  # (PEFT's fp32 cast under FSDP1)
    if plan.sharding in ("zero2", "zero3") and plan.gpus > 1 and not (plan.offload and plan.sharding == "zero3"):
        # DeepSpeed casts every parameter to the model dtype (engine.py `_cast_module_mixed_precision`), the LoRA
        # weights too: PEFT's cast of the input to lora_A's dtype is then a no-op (measured on CPU ranks; under
        # ZeRO-2's offload too, the cast being the engine's, before its optimizer: cpu-matrix-zero-offload)
        return Precision(c, c, c, c, mask if plan.device == "cuda" else c, adapter=c)
    return Precision(c, c, c, c, mask, lora)


def fsdp1_adapter_casts(plan: TrainingPlan) -> bool:
    """LoRA under FSDP1's MixedPrecision with accelerate's autocast: PEFT casts each adapted input to
    `lora_A.weight.dtype`, read in lora.Linear's forward, outside lora_A's own unit (PEFT's fsdp_auto_wrap_policy),
    where it is the fp32 shard; the dropout runs on that fp32 cast, and autocast casts its output to the param dtype
    for lora_A's gathered weight: the LoRA branch of `autocast_projection`. Under FSDP2 the adapters share their
    decoder layer's unit and are gathered in the param dtype when PEFT reads it (`gathered_lora_branch`). Source:
    peft tuners/lora/layer.py Linear.forward, tuners_utils.py `_cast_input_dtype`; torch distributed/fsdp
    (use_orig_params: the original parameters are views of the sharded fp32 FlatParameter outside their unit's
    forward); tracker dumps on CPU ranks (calibration/cpu-matrix-multi-mp-autocast.toml)."""
    return plan.fsdp_mixed_precision and plan.autocast and plan.fsdp_version == 1 and plan.uses_lora


def fsdp1_adapter_recompute_fails(plan: TrainingPlan) -> bool:
    """`fsdp1_adapter_casts` with SHARD_GRAD_OP, checkpointing and dropout: the real stack fails in the first backward
    (torch.utils.checkpoint's CheckpointError): SHARD_GRAD_OP keeps lora_A's unit gathered to its backward, so the
    recompute reads the bf16 gathered weight, casts nothing and makes dropout's mask in bf16 where the forward made it
    in fp32. FULL_SHARD reshards the unit after forward (both read fp32); without dropout the saved tensors are
    autocast's bf16 casts either way. Measured on CPU ranks (mixtral, LoRA on the attention, x2)."""
    return (
        fsdp1_adapter_casts(plan)
        and plan.sharding == "fsdp_grad_op"
        and plan.gradient_checkpointing
        and plan.dropout > 0
    )


def kbit_upcast(plan: TrainingPlan) -> bool:
    """QLoRA with prepare_model_for_kbit_training's fp32 upcast of every non-quantized parameter (embeddings, norms,
    lm_head): every QLoRA plan but those under FSDP1, which the frameworks build as sharded QLoRA without it, since
    FSDP1 flattens one dtype per unit (torch/distributed/fsdp/_flat_param.py `_validate_tensors_to_flatten`) and
    the 4-bit weights are stored in the compute dtype (`bnb_4bit_quant_storage`): trl 1.16.0
    trl/experimental/utils.py `prepare_peft_model` (`is_sharded_qlora`: no prepare_model_for_kbit_training, no
    cast), trl/trainer/sft_trainer.py `SFTTrainer.__init__` (never calls it); axolotl loaders/model.py
    (`is_qlora_and_fsdp_enabled` skips the embedding dtype conversion); the adapters stay fp32 (PEFT's
    autocast_adapter_dtype; accelerate 1.16 `Accelerator.prepare_model` upcasts a trainable FlatParameter to fp32
    under mixed precision). Measured on CPU ranks (calibration/cpu-matrix-multi-fsdp1-qlora.toml)."""
    if plan.method != "qlora":
        return False
    return not (plan.fsdp_version == 1 and plan.sharding in ("fsdp", "fsdp_grad_op"))


def adapter_dtype_bytes(plan: TrainingPlan) -> int:
    """LoRA A/B's dtype: fp32 (PEFT's autocast_adapter_dtype), but bf16 under SFTTrainer with a quantized base, which
    casts every trainable parameter except DoRA's magnitudes to bfloat16 after wrapping (trl 1.16.0
    trl/trainer/sft_trainer.py l. 907-911, the QLoRA paper's recipe); their gradients and AdamW states follow."""
    return BF16 if plan.loop == "sft" and plan.quantized and plan.uses_lora else FP32


class LayerKind(NamedTuple):
    """Decoder layers that share one shape: how many, whether their MLP is routed experts, its width, and the index
    of the first such layer."""

    layers: int
    moe: bool
    intermediate: int
    first: int = 0


def layer_kinds(arch: ArchSummary) -> tuple[LayerKind, ...]:
    """The decoder layers by kind, layer 0's kind first: an MoE model's dense layers (DeepSeek's first_k_dense_replace,
    Llama 4's interleaved dense layers) are a kind of their own, the rest share the config's width."""
    if arch.num_experts and arch.dense_layers:
        dense = LayerKind(arch.dense_layers, False, arch.dense_intermediate_size)
        moe = LayerKind(arch.num_layers - arch.dense_layers, True, arch.intermediate_size, arch.first_moe_layer)
        return dense, moe
    return (LayerKind(arch.num_layers, bool(arch.num_experts), arch.intermediate_size),)


class Step(NamedTuple):
    """One micro-batch through one decoder layer: the shapes, the precision and the adapted projections.

    The activation functions take it as `x` and read the README's notation off it: `x.t`, `x.h`, `x.i`, ...
    """

    arch: ArchSummary
    plan: TrainingPlan
    p: Precision
    by_leaf: Mapping[str, Adapted]  # adapted module groups in the decoder layers, by leaf name
    t: int  # tokens, batch x sequence
    h: int  # hidden
    q: int  # heads x head_dim
    kv: int  # kv_heads x head_dim
    i: int  # intermediate (of this layer kind)
    k: int  # experts per token (1 without experts)
    full: bool  # full fine-tuning: every weight trained
    g: int  # bytes of the MLP intermediate's gradient (`mlp_grad_bytes`)
    moe: bool = False  # this layer kind's MLP is routed experts
    linear_saves_input: bool = False  # every nn.Linear keeps its input, frozen or not (`zero3_linear_saves_input`)


def step(model: ModelSpec, plan: TrainingPlan, by_leaf: Mapping[str, Adapted], kind: LayerKind | None = None) -> Step:
    a, p, full = model.arch, precision(plan), plan.method == "full"
    kind = kind or layer_kinds(a)[-1]
    t, q, kv = plan.batch_size * plan.seq_len, a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    k, g = max(1, a.experts_per_token), mlp_grad_bytes(p, full or plan.fsdp_mixed_precision, by_leaf)
    saves = full or zero3_linear_saves_input(plan)
    return Step(a, plan, p, by_leaf, t, a.hidden_size, q, kv, kind.intermediate, k, full, g, kind.moe, saves)


def zero3_linear_saves_input(plan: TrainingPlan) -> bool:
    """DeepSpeed ZeRO-3 replaces `torch.nn.functional.linear` with `LinearFunctionForZeroStage3` (its
    `memory_efficient_linear`, on by default; `zero.Init(module=...)`, which `deepspeed.initialize` runs for stage 3,
    installs it for the whole process), whose `setup_context` saves the input and the weight for every call: a
    frozen base projection then keeps its input as a trained one does. bitsandbytes' 4-bit layers do not call
    `F.linear` for their base. Source: deepspeed 0.19.8 runtime/zero/linear.py, partition_parameters.py
    (`_enable_mem_efficient_linear`). Measured on CPU ranks (ZeRO-3 LoRA without checkpointing at transformers'
    `auto` bucket sizes, where the layers' weights are partitioned: -6.8 % to -7.0 % before)."""
    return plan.sharding == "zero3" and plan.gpus > 1 and plan.quant == "none"


def mlp_grad_bytes(p: Precision, full: bool, by_leaf: Mapping[str, Adapted]) -> int:
    """`g`: the MLP intermediate's gradient dtype, fp32 when an adapted down projection's LoRA branch carries it (a
    fully trained down's is in the activation dtype: the tracker's full fine-tuning dumps; so is a branch whose
    adapters FSDP2's MixedPrecisionPolicy gathers in the 16-bit param dtype, passed here as `full`)."""
    down_adapted = not full and any(leaf in by_leaf for leaf in DOWN_LEAVES)
    return max(p.act, p.adapter if down_adapted else 0)


def adapted_by_leaf(adapted: Iterable[Adapted]) -> dict[str, Adapted]:
    """The adapted module groups inside the decoder layers, by leaf name (what the activation rules look up)."""
    return {ad.group.leaf: ad for ad in adapted if ad.group.in_layers}


# --- norms -------------------------------------------------------------------------------------------------


def norm_bytes(x: Step, width: int, input_bytes: int, rows: int | None = None, weighted: bool = True) -> int:
    """A norm keeps rsqrt `T·4` and an fp32 copy of a 16-bit input `T·width·4` (an fp32 input is kept itself, by
    the caller); LayerNorm keeps mean and rstd `2·T·4` beside its input; a trained weight (full fine-tuning) also
    keeps the normalized activation its gradient needs. `rows`: the norm's rows (`T`, or `T·heads` for a per-head
    norm of `width = head_dim`). Source: torch RMSNorm/LayerNorm autograd, tracker dumps.
    """
    t, kind = x.t, x.arch.norm_kind
    rows = t if rows is None else rows
    if kind == "layer":
        return 2 * rows * FP32  # mean and rstd; the input itself is kept (caller's tensor)
    saved = rows * FP32  # rsqrt, one per row
    if input_bytes != FP32:
        saved += rows * width * FP32  # the fp32 copy pow/mul keep
    if x.full and weighted:  # a trained weight keeps the normalized activation its gradient needs (stream dtype)
        saved += rows * width * (FP32 if kind == "gemma" else x.p.residual)
    return saved


def norm_keeps_input(x: Step, input_bytes: int) -> bool:
    return x.arch.norm_kind == "layer" or input_bytes == FP32


def residual_norm_bytes(x: Step) -> int:
    """A norm of the residual stream: its own bytes, plus the stream `T·h·a_res` when the norm keeps it."""
    a_res = x.p.residual
    kept_input = x.t * x.h * a_res if norm_keeps_input(x, a_res) else 0
    return norm_bytes(x, x.h, a_res) + kept_input


def branch_norm_bytes(x: Step) -> int:
    """Gemma 2/3's sandwich norms: post_attention_layernorm and post_feedforward_layernorm normalise the attention
    and MLP outputs `T·h·a` before the residual add, each keeping what a norm keeps (`norm_bytes`) and, for an fp32
    output (QLoRA), that output itself. Source: Gemma3DecoderLayer.forward, tracker dumps.
    """
    if not x.arch.sandwich_norms:
        return 0
    a = x.p.act
    one = norm_bytes(x, x.h, a) + (x.t * x.h * a if norm_keeps_input(x, a) else 0)
    return 2 * one


def normed_input_bytes(x: Step, attention_keeps: bool, mlp_keeps: bool) -> int:
    """A norm output feeding projections `T·h·a`, kept if any consumer keeps it (one output for a parallel block)."""
    one = x.t * x.h * x.p.act
    if x.arch.parallel_block:
        return one if attention_keeps or mlp_keeps else 0
    return (one if attention_keeps else 0) + (one if mlp_keeps else 0)


def head_saved_bytes(x: Step, final_norm: int) -> int:
    """The final norm (`residual_norm_bytes`), and lm_head's input `T·h·a` when lm_head is trained (full
    fine-tuning), every linear keeps its input (`zero3_linear_saves_input`) or lm_head alone does
    (`zero3_head_saves_input`)."""
    kept = x.linear_saves_input or zero3_head_saves_input(x.plan)
    return final_norm + (x.t * x.h * x.p.act if kept else 0)


def zero3_head_saves_input(plan: TrainingPlan) -> bool:
    """Under ZeRO-3 over a quantized base lm_head is still an nn.Linear (bitsandbytes leaves it unquantized), so
    `LinearFunctionForZeroStage3` keeps its input, the final norm's output, while the 4-bit projections keep none
    (`zero3_linear_saves_input`). Measured on CPU ranks (QLoRA, llama, 2 ranks: the forward's loss moment one
    `T·h·d` above the estimate without it). Source: deepspeed 0.19.8 runtime/zero/linear.py."""
    return plan.sharding == "zero3" and plan.gpus > 1 and not plan.offload


# --- projections and their LoRA branches ---------------------------------------------------------------------


class Projection(NamedTuple):
    """What one projection keeps of the tensor it reads."""

    saved: int  # bytes beyond the input tensor itself
    keeps_input: bool  # whether it keeps that input (then the caller counts it)


def lora_branch(x: Step, leaf: str, in_features: int, normed: bool = False) -> Projection:
    """A frozen projection keeps nothing of its input, a trained one keeps it; a LoRA branch keeps its dropout output
    and mask `T·in·(4+m)` (`m` = 1 for CUDA's bool mask, 4 for the CPU path) or, without dropout, the fp32 cast
    of its input (an fp32 input is kept itself), plus lora_A's output `T·r·4`; DoRA also the base output. With bf16
    LoRA weights (loop sft over a quantized base, `adapter_dtype_bytes`) the casts, the CPU mask and lora_A's output
    are bf16 (tracker-measured through SFTTrainer).
    Under autocast (`autocast_projection`) `normed`: the projection reads the fp32 norm output.
    Source: PEFT lora.Linear.forward (autocast_adapter_dtype), torch dropout, tracker dumps.
    """
    t, p, plan, ad = x.t, x.p, x.plan, x.by_leaf.get(leaf)
    if plan.autocast_over_fp32:
        return autocast_projection(x, leaf, in_features, normed)
    if ad is None:
        return Projection(0, x.linear_saves_input)
    if fsdp1_adapter_casts(plan):
        return autocast_projection(x, leaf, in_features, normed)
    if plan.fsdp_mixed_precision:
        return gathered_lora_branch(x, in_features)
    saved = 0
    keeps_input = x.linear_saves_input
    lora = p.adapter  # PEFT casts the input to lora_A's dtype (`_cast_input_dtype`)
    if plan.dropout > 0:  # dropout output and mask (the cast is freed); the CPU mask is in the input's dtype
        saved += t * in_features * (lora + (min(p.mask, lora) if lora != FP32 else p.mask))
    elif p.act != lora:
        saved += t * in_features * lora  # lora_A keeps the cast of the input
    else:
        keeps_input = True  # lora_A keeps the input itself
    saved += t * plan.rank * lora  # lora_A's output, kept by lora_B
    if plan.dora:
        saved += t * ad.group.out_features * p.adapter  # DoRA keeps the base output to rescale it
    return Projection(saved, keeps_input)


def gathered_lora_branch(x: Step, in_features: int) -> Projection:
    """Under FSDP2's MixedPrecisionPolicy the adapters are gathered in the param dtype `c`, so PEFT's cast of the
    input to lora_A's dtype is a no-op: with dropout its output and mask `T·in·(c+m)` are kept (`m` = 1 on CUDA,
    `c` on the CPU path), without it lora_A keeps the input itself (counted once by the caller), and lora_A's output
    `T·r·c`. Source: PEFT lora.Linear.forward (`_cast_input_dtype` to `lora_A.weight.dtype`), torch dropout,
    CPU-rank runs (calibration/cpu-matrix-multi-mp.toml)."""
    t, c, plan = x.t, x.p.compute, x.plan
    saved = t * in_features * (c + x.p.mask) if plan.dropout > 0 else 0
    return Projection(saved + t * plan.rank * c, x.full or plan.dropout == 0)


def autocast_projection(x: Step, leaf: str, in_features: int, normed: bool) -> Projection:
    """Under torch.autocast every matmul saves the 16-bit cast of its input, made per op (autocast caches only leaf
    tensors): a trained projection reading the fp32 norm output keeps its own cast `T·in·c` (q, k and v one each),
    one reading a 16-bit input keeps that input; a LoRA branch keeps its dropout mask `T·in·m` (PEFT casts the input
    to fp32 first) and lora_A's cast of its input `T·in·c`, and lora_A's output `T·r·c`. Source: torch
    autocast_mode.cpp cached_cast, PEFT lora.Linear.forward, tracker dumps (saved-tensor hooks).
    """
    t, c, plan, ad = x.t, x.p.compute, x.plan, x.by_leaf.get(leaf)
    if ad is None:
        return Projection(t * in_features * c, False) if x.full and normed else Projection(0, x.full)
    mask = t * in_features * x.p.mask if plan.dropout > 0 else 0
    saved = mask + t * in_features * c + t * plan.rank * c
    if plan.dora:
        saved += t * ad.group.out_features * FP32  # DoRA keeps the base output to rescale it (not measured)
    return Projection(saved, False)
