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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.core.adapters import Adapted
from app.core.plan import TrainingPlan
from app.core.quant import DTYPE_BYTES
from app.core.spec import ModelSpec


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the tensors a step creates."""

    compute: int  # bitsandbytes compute dtype / model dtype
    residual: int  # residual stream (embedding output dtype)
    act: int  # norm outputs, projection outputs, attention, MLP intermediates
    logits: int  # lm_head output
    mask: int  # LoRA dropout mask element


def precision(plan: TrainingPlan) -> Precision:
    c = DTYPE_BYTES[plan.dtype]
    # torch's fused dropout (CUDA) keeps a bool mask; the CPU path multiplies by a mask in the input dtype (fp32)
    mask = 1 if plan.device == "cuda" else 4
    if plan.method == "qlora":
        return Precision(compute=c, residual=4, act=4, logits=4, mask=mask)
    return Precision(compute=c, residual=c, act=c, logits=c, mask=mask)


@dataclass(frozen=True)
class LayerActivations:
    saved: int  # bytes autograd keeps for one decoder layer with no checkpointing
    forward_transient: int  # extra bytes while one layer runs forward without saving (checkpointed)
    backward_transient: int  # gradient buffers while one layer is backpropagated
    recompute_transient: int  # checkpointing: what is alive besides the saved tensors as a layer's recompute ends
    layer_input: int  # bytes of one layer's input hidden state (what checkpointing keeps)
    head_saved: int  # final norm (and lm_head input when trained) kept for backward
    first_layer_discount: int = 0  # what layer 0 does not keep when its input needs no gradient
    input_in_saved: int = 0  # the layer input, when its first norm keeps it (checkpointing already keeps it)


class _Ledger:
    """Counts bytes of tensors autograd keeps, with the plan's rules for each consumer."""

    def __init__(self, model: ModelSpec, plan: TrainingPlan, adapted: dict[str, Adapted]) -> None:
        self.plan, self.p = plan, precision(plan)
        self.t = plan.batch_size * plan.seq_len
        self.full = plan.method == "full"
        self.by_leaf = {ad.group.leaf: ad for ad in adapted.values() if ad.group.in_layers}
        self.norm_kind = model.arch.norm_kind
        self.saved = 0

    def norm(self, width: int, input_dtype: int) -> None:
        """A normalization of a tensor whose own storage is accounted by the caller."""
        t = self.t
        if self.norm_kind == "layer":
            self.saved += 2 * t * 4  # mean and rstd; the input itself is kept (caller's tensor)
            return
        self.saved += t * 4  # rsqrt, one per token
        if input_dtype != 4:
            self.saved += t * width * 4  # the fp32 copy pow/mul keep
        if self.full:  # a trained weight keeps the normalized activation its gradient needs
            self.saved += t * width * (4 if self.norm_kind == "gemma" else self.p.act)

    def norm_keeps_input(self, input_dtype: int) -> bool:
        return self.norm_kind == "layer" or input_dtype == 4

    def consume(self, leaf: str, in_f: int) -> bool:
        """Bytes one projection saves beyond its input; returns whether it keeps the input itself."""
        t, p, ad = self.t, self.p, self.by_leaf.get(leaf)
        keeps_input = self.full
        if ad is not None:
            if self.plan.dropout > 0:
                self.saved += t * in_f * (4 + p.mask)  # dropout output and mask (the fp32 cast is freed)
            elif p.act != 4:
                self.saved += t * in_f * 4  # lora_A keeps the fp32 cast of the input
            else:
                keeps_input = True  # lora_A keeps the fp32 input itself
            self.saved += t * self.plan.rank * 4  # lora_A's output, kept by lora_B
            if self.plan.dora:
                self.saved += t * ad.group.out_features * 4  # DoRA keeps the base output to rescale it
        return keeps_input


def layer_activations(
    model: ModelSpec, plan: TrainingPlan, adapted: dict[str, Adapted], quantized: frozenset[str]
) -> LayerActivations:
    """Per-layer activation bytes for a micro-batch of plan.batch_size x plan.seq_len tokens."""
    a = model.arch
    led = _Ledger(model, plan, adapted)
    p, t, b, s = led.p, led.t, plan.batch_size, plan.seq_len
    h, q, kv, i = a.hidden_size, a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.intermediate_size
    r, act = p.residual, p.act

    def normed_input(width: int) -> None:
        """A norm output feeding projections: kept if any consumer keeps it."""
        led.saved += t * width * act

    # --- attention half -------------------------------------------------------------------------------
    led.norm(h, r)
    input_in_saved = 0
    if led.norm_keeps_input(r):
        input_in_saved = t * h * r
        led.saved += input_in_saved  # the layer input, kept by the norm
    first_norm = led.saved
    attn_leaves = ("qkv_proj",) if a.qkv_fused else ("q_proj", "k_proj", "v_proj")
    keeps = [led.consume(leaf, h) for leaf in attn_leaves]
    # PEFT/Trainer call enable_input_require_grads only with checkpointing: otherwise layer 0's input needs no
    # gradient, so its first norm keeps nothing and dropout on its adapted projections keeps no mask
    discount = 0
    if not led.full and not plan.gradient_checkpointing:
        masked = sum(1 for leaf in attn_leaves if leaf in led.by_leaf) if plan.dropout > 0 else 0
        discount = first_norm + masked * t * h * p.mask
    mlp_in_same = a.parallel_block
    if a.qkv_fused:
        led.saved += t * (q + 2 * kv) * act  # the fused output stays alive through the v view
    else:
        led.saved += t * kv * act  # v as projected
    led.saved += t * (q + kv) * act  # q and k after rotary
    if plan.attn == "eager":
        rep = a.num_heads // a.num_kv_heads
        if rep > 1:
            led.saved += 2 * t * (q - kv) * act  # repeat_kv materialises K and V for every head
        # softmax output in fp32 and its cast back, b x heads x s x s each
        led.saved += b * a.num_heads * s * s * (4 + (act if act != 4 else 0))
        score_transient = b * a.num_heads * s * s * (2 * act + 4)
    else:
        led.saved += b * a.num_heads * s * 4  # flash/efficient kernels keep the fp32 logsumexp
        score_transient = 0
    led.saved += t * q * act  # attention output (kept by the kernel's backward)
    led.consume("o_proj", q)  # its input is the attention output above (the kernel returns it heads-last)
    # --- MLP half ---------------------------------------------------------------------------------------
    if not mlp_in_same:
        if led.norm_keeps_input(r):
            led.saved += t * h * r  # residual after attention, kept by the second norm
        led.norm(h, r)
    mlp_keeps = False
    tail = 0
    down_saved = -1  # bytes freed before the gated product's backward; -1: no gated product
    silu_out = 0
    if a.num_experts:
        k = max(1, a.experts_per_token)
        routed = t * k
        experts = led.by_leaf.get("experts")
        router = led.by_leaf.get("gate")
        led.saved += t * a.num_experts * 4  # fp32 routing softmax
        led.saved += routed * (2 * i + i + h) * act  # gate/up output, act(gate), expert output (kept by the weighting)
        if led.full or experts is not None:
            led.saved += routed * (h + i) * act  # experts whose weights need gradients keep their inputs
        if experts is not None:  # ParamWrapper materialises W + BA for every wrapped parameter, kept by the matmul
            wrapped = [math.prod(p.shape) for p in experts.group.params if p.name in experts.wrapped_params]
            led.saved += sum(wrapped) * act
            if act != 4:  # the fold's baddbmm keeps the fp32 LoRA factors cast to the 16-bit weight dtype
                led.saved += sum(math.prod(shape) for shape in experts.shapes) * act
        mlp_keeps = led.full or router is not None  # a trained router keeps the normed input
        mlp_transient = routed * (h + 2 * i) * act
        # freed before the experts' gated-product backward: the product the down grouped_mm keeps when its
        # weights need gradients, and the expert output the routing weighting kept
        down_saved = (routed * i * act if (led.full or experts is not None) else 0) + routed * h * act
    elif a.mlp_gated:
        if a.gate_up_fused:
            mlp_keeps = led.consume("gate_up_proj", h)
        else:
            mlp_keeps = any([led.consume("gate_proj", h), led.consume("up_proj", h)])
        led.saved += 3 * t * i * act  # gate, up and act(gate)
        before_down = led.saved
        down_keeps = led.consume("down_proj", i)
        if down_keeps:
            led.saved += t * i * act  # the product, kept by a trained/adapted down projection
        down_saved = led.saved - before_down
        mlp_transient = 4 * t * i * act
        # recompute ends inside the down projection: still referenced by the running forward are the block's
        # residual (unless the norm keeps it: then it is saved), the MLP's input (unless kept), the product
        # (unless down keeps it), the base output, and the fp32 cast of the input that dropout reads (without
        # dropout lora_A saves that cast, already counted; an fp32 input is not copied)
        tail = (0 if led.norm_keeps_input(r) else t * h * r) + t * h * act + (0 if mlp_keeps else t * h * act)
        tail += 0 if down_keeps else t * i * act
        if "down_proj" in led.by_leaf and plan.dropout > 0 and act != 4:
            tail += t * i * 4
        silu_out = t * i * act
    else:
        mlp_keeps = led.consume("fc1", h) or led.consume("dense_h_to_4h", h)
        led.saved += t * i * act  # fc1 output, kept by the activation
        if led.consume("fc2", i) or led.consume("dense_4h_to_h", i):
            led.saved += t * i * act
        mlp_transient = 2 * t * i * act
    if a.parallel_block:
        if any(keeps) or mlp_keeps:
            normed_input(h)  # one norm output feeds attention and MLP
    else:
        if any(keeps):
            normed_input(h)  # the first norm's output, kept by q/k/v
        if mlp_keeps:
            normed_input(h)  # the second norm's output, kept by the MLP's input projections
    saved = led.saved
    # --- final norm and head -----------------------------------------------------------------------------
    led.saved = 0
    led.norm(h, r)
    if led.norm_keeps_input(r):
        led.saved += t * h * r
    if led.full:
        led.saved += t * h * act  # lm_head input, kept for its weight gradient
    head_saved = led.saved
    # backward through one layer (measured with the tracker): the incoming and outgoing residual gradients,
    # an fp32 gradient of the normed input, and the gradient of the widest MLP intermediate (fp32 when an
    # adapted down projection's LoRA branch carries it); for a fused gate_up that intermediate is 2i wide
    down_adapted = led.full or any(leaf in led.by_leaf for leaf in ("down_proj", "fc2", "dense_4h_to_h"))
    widest = (2 * i if a.gate_up_fused else i) * (max(1, a.experts_per_token) if a.num_experts else 1)
    incoming = 2 * t * h * r + t * h * 4  # the residual gradients in and out, and the fp32 gradient of a norm
    grad = max(act, 4 if down_adapted else 0)
    if down_saved >= 0 and a.gate_up_fused and not a.num_experts:
        # a fused gate_up: down's backward holds the product's gradient; then the chunk's backward concatenates
        # the gate and up gradients (2i) while both halves live, after down's and act's saved tensors are freed
        backward = max(incoming + t * i * grad, t * h * r + 4 * t * i * grad - down_saved - silu_out)
    else:
        backward = incoming + t * widest * grad
    if down_saved >= 0:
        # inside the gated product's backward (MulBackward): the product's gradient and those of both factors
        # live at once, with one residual gradient; the down projection's saved tensors are already freed.
        # MoE experts adapt weights, not activations, so their gradients stay in the activation dtype
        rows, dtype = (t * max(1, a.experts_per_token), act) if a.num_experts else (t, grad)
        backward = max(backward, t * h * r + 3 * rows * i * dtype - down_saved)
    backward += score_transient
    if a.num_experts:
        # the MoE's own backward begins with the fp32 routing-weighted combine (the weights are fp32): the
        # incoming residual gradient, the expanded gradient of the k outputs per token, and the zeros and
        # index_put that undo the sort by expert, each routed tokens x hidden in fp32
        backward = max(backward, t * h * r + 3 * t * max(1, a.experts_per_token) * h * 4)
    return LayerActivations(
        saved=saved,
        forward_transient=max(mlp_transient, score_transient),
        backward_transient=backward,
        # as recompute ends: the residual gradient, the norm's fp32 gradient and (16-bit stream) its cast back
        recompute_transient=t * h * 4 + t * h * r + (t * h * r if r != 4 else 0) + tail,
        layer_input=t * h * r,
        head_saved=head_saved,
        first_layer_discount=discount,
        input_in_saved=input_in_saved,
    )


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
