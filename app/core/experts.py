"""Mixture-of-experts layers: the router, the routed experts as transformers 5 runs them, and the shared expert.

Notation as in app/core/step.py; `E` experts, `k` experts per token, `T·k` the routed rows of grouped experts.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from app.core.adapters import Adapted
from app.core.mlp import GatedProduct, Mlp, gated_mlp
from app.core.plan import TrainingPlan
from app.core.spec import ModelSpec
from app.core.stack import TF4_EXPERTS
from app.core.step import Step, lora_branch, norm_keeps_input, precision
from app.core.units import FP32

INDEX = 8  # int64 indices (topk, torch.where)


class Router(NamedTuple):
    saved: int
    keeps_input: bool  # the router keeps the normed input itself


def router_bytes(x: Step) -> Router:
    """The routing weights: an fp32 softmax over all experts `T·E·4` (Mixtral, Qwen3-MoE); DeepSeek's fp32 router
    the sigmoid `T·E·4` and, trained, the fp32 copy of a 16-bit input `T·h·4`; a softmax over the k chosen
    `T·k·4` (gpt-oss, Granite MoE). A trained router otherwise keeps the normed input itself.
    Source: the routers' forward in modeling_{mixtral,qwen3_moe,deepseek_v3,gpt_oss,granitemoe}.py, tracker dumps.
    """
    arch, t, a = x.arch, x.t, x.p.act
    trained = x.full or x.by_leaf.get("gate") is not None or x.by_leaf.get("router") is not None
    if arch.router == "topk_softmax":
        return Router(t * x.k * FP32, trained)
    if arch.router == "sigmoid":
        copy = t * x.h * FP32 if trained and a != FP32 else 0  # F.linear(hidden.float(), weight.float())
        return Router(t * arch.num_experts * FP32 + copy, trained and a == FP32)
    return Router(t * arch.num_experts * FP32, trained)


def routed_rows(x: Step) -> int:
    """The rows the experts compute: `T·k` sorted by expert (grouped_mm), or every token for every expert `T·E`
    (Llama 4's bmm experts, which weight the input by the router's sigmoid and keep zeros for the unchosen)."""
    return x.t * (x.arch.num_experts if x.arch.experts == "dense" else x.k)


def moe_experts(x: Step) -> Mlp:
    """The routed experts as the stack runs them: transformers 4's per-expert loop (`linear_experts`), or as follows.

    MoE keeps the router's tensors (`router_bytes`) and, for the routed rows `R` (`routed_rows`), gate/up, act(gate)
    and the weighted rows (the expert output the weighting keeps, or Llama 4's repeated input) `R·(3i+h)·a`
    (gpt-oss's clamped SwiGLU keeps clamp(gate), its sigmoid, the GLU and up+1 instead of act(gate): `R·(6i+h)·a`);
    experts whose weights need gradients also their inputs `R·(h+i)·a`; ParamWrapper-adapted experts the folded
    weights `W + BA` and, for 16-bit weights, the LoRA factors cast to that dtype; a shared expert what its gated
    MLP keeps (`gated_mlp`, of the shared width). Source: transformers 5 grouped_mm experts
    (integrations/moe.py), GptOssExperts._apply_gate, Llama4TextMoe.forward, PEFT ParamWrapper, tracker dumps.
    """
    if x.arch.experts == "linear":
        return linear_experts(x)
    i, h, a = x.i, x.h, x.p.act
    rows = routed_rows(x)
    experts = x.by_leaf.get("experts")
    trained = x.full or experts is not None
    router = router_bytes(x)
    gate = 6 * i if x.arch.experts == "clamped" else 3 * i
    saved = router.saved + rows * (gate + h) * a  # gate/up output, the gating's tensors, the weighted rows
    if trained:
        saved += rows * (h + i) * a  # experts whose weights need gradients keep their inputs
    if experts is not None:
        saved += folded_expert_bytes(x, experts)
    shared = shared_expert(x)
    if shared is not None:
        saved += shared.saved
    # freed before the experts' gated-product backward: the product the down matmul keeps when its weights need
    # gradients, and the expert output the routing weighting kept
    down_saved = (rows * i * a if trained else 0) + (rows * h * a if x.arch.experts != "dense" else 0)
    # the recompute ends inside the shared expert's down projection (it runs last); Llama 4's forward still holds
    # the experts' output there and, unless the experts keep it, their weighted input: `T·E·h·a` each
    dense_locals = (1 if trained else 2) * rows * h * a if x.arch.experts == "dense" else 0
    tail = (shared.recompute_tail if shared is not None else 0) + dense_locals
    return Mlp(
        saved=saved,
        keeps_input=x.full or router.keeps_input or (shared is not None and shared.keeps_input),
        # Llama 4's bmm experts: the weighted input, gate/up, the product and the output of every expert at once
        forward_transient=rows * ((2 * h + 3 * i) if x.arch.experts == "dense" else (h + 2 * i)) * a,
        product=GatedProduct(down_saved=down_saved, act_saved=0),
        recompute_tail=tail,
        shared=shared,
    )


def linear_experts(x: Step) -> Mlp:
    """transformers 4's MoE loop over per-expert nn.Linear MLPs: each expert's rows `top_x` (of `R = T·k` routed
    rows in all) gathered from the normed input, run through a gated MLP of the expert's width and scaled by its
    routing weights, then `index_add_`-ed into the output. Kept: the router's tensors (`router_bytes`, a LoRA branch
    on an nn.Linear router, topk's indices and the renormalised fp32 weights `T·k·(8+4) + T·4`), what a gated MLP
    keeps over the `R` rows (`gated_mlp`, with the family's per-expert names), the gathered rows `R·h·a` when the
    experts' linears keep their input, each expert's output and routing slice kept by the scaling and the scaled
    output `index_add_` keeps (torch 2.13 IndexAddBackward0 saves its source) `R·(2h+1)·a`, and the gather/where
    indices `2·R·8`; a shared expert what its gated MLP keeps. Source: transformers 4.57.6
    MixtralSparseMoeBlock.forward / Qwen3MoeSparseMoeBlock.forward, tracker dumps on that stack.
    """
    split = TF4_EXPERTS[x.arch.model_type]
    h, a, rows = x.h, x.p.act, routed_rows(x)
    per_expert = gated_mlp(expert_step(x, rows))
    router = router_bytes(x)
    router_lora = lora_branch(x, "gate", h) if split.linear_router else None
    saved = router.saved + x.t * x.k * (INDEX + FP32) + x.t * FP32
    saved += router_lora.saved if router_lora is not None else 0
    saved += per_expert.saved + rows * (2 * h + 1) * a + 2 * rows * INDEX
    if per_expert.keeps_input:
        saved += rows * h * a  # the gathered rows, kept by the experts' linears
    shared = shared_expert(x)
    if shared is not None:
        saved += shared.saved
    keeps = x.full or router.keeps_input or (router_lora is not None and router_lora.keeps_input)
    return Mlp(
        saved=saved,
        keeps_input=keeps or (shared is not None and shared.keeps_input),
        # the loop runs an expert at a time: one expert's intermediates, beside the one_hot routing mask
        forward_transient=gated_mlp(expert_step(x, one_expert_rows(x))).forward_transient
        + x.t * x.k * x.arch.num_experts * INDEX,
        product=per_expert.product,
        recompute_tail=linear_recompute_tail(x) + (shared.recompute_tail if shared is not None else 0),
        shared=shared,
    )


def expert_step(x: Step, rows: int) -> Step:
    """transformers 4's experts as one gated MLP over `rows` tokens, its linears looked up by the family's names."""
    split = TF4_EXPERTS[x.arch.model_type]
    leaves = {"gate_proj": split.gate, "up_proj": split.up, "down_proj": split.down}
    by_leaf = {ours: x.by_leaf[theirs] for ours, theirs in leaves.items() if theirs in x.by_leaf}
    return x._replace(t=rows, by_leaf=by_leaf, moe=False)


def linear_recompute_tail(x: Step) -> int:
    """transformers 4's recompute ends inside the last expert's down projection: what a gated MLP's recompute still
    references there for that expert's rows (`recompute_tail_in_down` of `one_expert_rows`), the rest of the
    block's tokens of the residual (unless the norm keeps it) and the zero-initialised output it adds into `T·h·a`.
    Source: MixtralSparseMoeBlock.forward (4.57.6), tracker dumps on that stack.
    """
    one = one_expert_rows(x)
    rest = x.t - one
    residual = 0 if norm_keeps_input(x, x.p.residual) else rest * x.h * x.p.residual
    return gated_mlp(expert_step(x, one)).recompute_tail + residual + x.t * x.h * x.p.act


def one_expert_rows(x: Step) -> int:
    """The rows one expert of transformers 4's loop computes, on average `⌈T·k/E⌉` (its backward runs an expert at
    a time)."""
    return -(-x.t * x.k // max(1, x.arch.num_experts))


def shared_expert(x: Step) -> Mlp | None:
    """The shared expert every token goes through (DeepSeek, Llama 4, Qwen2-MoE): a gated MLP of its own width."""
    if not x.arch.shared_expert_size:
        return None
    return gated_mlp(x._replace(i=x.arch.shared_expert_size, moe=False))


def folded_expert_bytes(x: Step, experts: Adapted) -> int:
    """ParamWrapper materialises W + BA for every wrapped parameter, kept by the matmul; for 16-bit weights the
    fold's baddbmm also keeps the fp32 LoRA factors cast to the weight dtype."""
    a = x.p.act
    saved = sum(math.prod(p.shape) for p in experts.group.params if p.name in experts.wrapped_params) * a
    if a != FP32:
        saved += sum(math.prod(shape) for shape in experts.shapes) * a
    return saved


def moe_combine_backward_bytes(x: Step) -> int:
    """The MoE's backward begins with the routing-weighted combine: the incoming residual gradient and, each routed
    tokens × hidden in the routing weights' dtype `w` (fp32 for Mixtral and DeepSeek, the activation dtype where the
    router casts them), the expanded gradient of the k outputs and the zeros and index_put that undo the sort by
    expert: `T·h·a_res + 3·T·k·h·w`; Llama 4's bmm experts the expanded output gradient, the gate/up gradient and
    the weighted input of every expert over every token, `T·h·a_res + T·E·(2h+2i)·a`. Source: transformers 5
    grouped_mm_experts_forward, Llama4TextMoe.forward, tracker dumps.
    """
    if x.arch.experts == "dense":
        return x.t * x.h * x.p.residual + routed_rows(x) * (2 * x.h + 2 * x.i) * x.p.act
    w = FP32 if x.arch.routing_fp32 else x.p.act
    return x.t * x.h * x.p.residual + 3 * x.t * x.k * x.h * w


# transformers 5.24 models whose CausalLM adds `load_balancing_loss_func` when config.output_router_logits is set
# (grep "load_balancing_loss_func(" transformers/models/*/modeling_*.py); DeepSeek-V3 and Llama 4 record router
# logits but compute no auxiliary loss from them.
AUX_LOSS_MODEL_TYPES = frozenset(
    {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "granitemoeshared", "gpt_oss", "phimoe", "jetmoe"}
    | {"dbrx", "jamba", "minimax", "ernie4_5_moe", "flex_olmo", "qwen3_next", "granitemoehybrid", "switch_transformers"}
)


class RouterAux(NamedTuple):
    kept: int  # every MoE layer's share, alive from its forward to its backward
    per_layer: int  # one MoE layer's share: what the backward of the first layer still holds


def router_aux_loss_bytes(model: ModelSpec, plan: TrainingPlan, layers: int) -> RouterAux:
    """The router auxiliary (load-balancing) loss, `output_router_logits=True`: every MoE layer's router logits
    `T·E·a` are recorded (OutputRecorder) until the loss, whose per-layer `softmax(router_logits)` keeps its output
    `T·E·a` for backward (topk's indices die with its unused values; histc and the sums keep nothing). The recorded
    logits go with the model output once the loop drops it; the softmax outputs become, in the aux loss's backward
    (run first: its nodes are the newest), the logits' gradients waiting for each layer's backward. So each of the
    `L_moe` MoE layers (of the `layers` on this GPU) holds `T·E·a` from its forward to its backward:
    `L_moe·T·E·a`, and layer 0's backward still `T·E·a`. `a` the router's output dtype (fp32 under QLoRA, whose
    prepared router weights are fp32). Zero unless plan.router_aux_loss on a model whose CausalLM computes the loss.
    Source: transformers 5.24 load_balancing_loss_func and MixtralForCausalLM.forward (modeling_mixtral.py),
    tracker measurements (tests/calibration/test_router_aux_loss.py).
    """
    arch = model.arch
    if not plan.router_aux_loss or arch.num_experts == 0 or arch.model_type not in AUX_LOSS_MODEL_TYPES:
        return RouterAux(0, 0)
    one = plan.batch_size * plan.seq_len * arch.num_experts * precision(plan).act
    moe_layers = min(layers, arch.num_layers - arch.dense_layers)
    return RouterAux(moe_layers * one, one if arch.first_moe_layer == 0 else 0)
