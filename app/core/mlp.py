"""The dense and gated MLPs' saved tensors, and what their forward and backward add (notation: app/core/step.py)."""

from __future__ import annotations

from typing import NamedTuple

from app.core.step import Step, lora_branch, norm_keeps_input


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
    shared: Mlp | None = None  # MoE: the shared expert beside the routed ones (its saved bytes are in `saved`)


def dense_mlp(x: Step) -> Mlp:
    """A dense MLP keeps fc1's output `T·i·a` (kept by the activation), and the activation's output `T·i·a` when fc2
    keeps its input; transient `2·T·i·a`. Source: torch GELU/Linear autograd, tracker dumps.
    """
    t, i, a = x.t, x.i, x.p.act
    up = [lora_branch(x, leaf, x.h, normed=True) for leaf in ("fc1", "dense_h_to_4h")]
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
    up = [lora_branch(x, leaf, x.h, normed=True) for leaf in leaves]
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


def recompute_tail_in_down(x: Step, mlp_keeps: bool, down_keeps: bool) -> int:
    """A gated MLP's recompute ends inside the down projection: still referenced by the running forward are the
    block's residual (unless the norm keeps it: then it is saved), the MLP's input (unless kept), the product (unless
    down keeps it), the base output, and the fp32 cast of the input that dropout reads (without dropout lora_A saves
    that cast, already counted; an fp32 input is not copied; adapters gathered in the 16-bit param dtype under
    fsdp_mixed_precision cast nothing). Source: the tracker's recompute dumps.
    """
    t, h, i, a, a_res = x.t, x.h, x.i, x.p.act, x.p.residual
    tail = (0 if norm_keeps_input(x, a_res) else t * h * a_res) + t * h * a + (0 if mlp_keeps else t * h * a)
    tail += 0 if down_keeps else t * i * a
    if "down_proj" in x.by_leaf and x.plan.dropout > 0 and a != x.p.adapter and not x.plan.fsdp_mixed_precision:
        tail += t * i * x.p.adapter  # the cast to the adapters' dtype (none under FSDP2's MixedPrecisionPolicy)
    return tail
