"""FSDP2's units as accelerate 1.14+ cuts them (plan.fsdp_units accelerate): what is gathered at each moment.

accelerate's `fsdp2_prepare_model` (1.14 on; the calibration stack's 1.16) fully_shards every decoder layer, then
the input embedding as a unit of its own (reshard_after_forward as the plugin says), then a tail unit of [final norm,
lm_head] with reshard_after_forward False, then the root without the argument (torch's default: the root stays
gathered). So, unlike the layers-then-model layout (`sharding:fsdp_gathered_bytes`), the embedding `E` is gathered
only around its own forward and backward, and the tail `T` only from its forward, at the end of the model's, to its
backward, at the start of the step's: neither is held through the layers. A tied embedding is in the tail unit, so
the tail is the whole root, gathered from the forward's start to the backward's end.

Notation as app/core/sharding.py: `W` one decoder layer's parameters gathered, `L` decoder layers, `n` GPUs; `E`, `T`
the embedding's and the tail's parameters gathered (the root's `R` = `E + T`; whatever else the root holds is
counted in `T`), `G_E`, `G_T` their gradients unsharded (full fine-tuning). Measured on CPU ranks with the harness
wrapping as accelerate 1.16 does (app/calibration/distributed.py `shard_accelerate_units`;
calibration/cpu-matrix-multi-units.toml, docs/accuracy-multi.md).
Sources: accelerate 1.16 utils/fsdp_utils.py (fsdp2_prepare_model, `_find_final_norm`); torch 2.13
torch/distributed/fsdp/_fully_shard/_fsdp_state.py (`_lazy_init`: the root's reshard_after_forward None -> False),
_fsdp_param_group.py (pre_backward prefetch, post_backward reshard then reduce-scatter), _fsdp_collectives.py.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

from app.core.plan import TrainingPlan
from app.core.sharding import (
    ShardedMoments,
    fsdp_gathered_bytes,
    in_param_dtype,
    in_reduce_dtype,
    layer_param_bytes,
    no_sync_gradient_bytes,
    root_param_bytes,
)
from app.core.spec import ModelSpec
from app.core.tensors import Inventory


class Units(NamedTuple):
    """How the root's parameters split between accelerate's units: the input embedding's share of the root's
    elements, and whether lm_head is tied to it (then there is no embedding unit)."""

    embed_fraction: float
    tied: bool


def fsdp2_units(model: ModelSpec, plan: TrainingPlan) -> Units | None:
    """The plan's units when FSDP2 shards it as accelerate cuts them (plan.fsdp_units accelerate), else None."""
    if plan.sharding not in ("fsdp", "fsdp_grad_op") or plan.fsdp_version != 2 or plan.gpus < 2:
        return None
    return accelerate_units(model) if plan.fsdp_units == "accelerate" else None


@lru_cache(maxsize=256)
def accelerate_units(model: ModelSpec) -> Units:
    """The input embedding's share of every parameter outside the decoder layers (elements), and the tie."""
    outside = [g for g in model.groups if not g.in_layers]
    total = sum(g.count * p.numel for g in outside for p in g.params)
    embeds = [g for g in outside if g.kind == "embedding" and g.params]
    embed = embeds[0].count * sum(p.numel for p in embeds[0].params) if embeds else 0
    return Units(embed / total if total else 0.0, any(g.tied for g in model.groups))


def embed_param_bytes(inv: Inventory, plan: TrainingPlan, units: Units) -> int:
    """`E`: the input embedding gathered, in the param dtype under fsdp_mixed_precision; 0 when tied (it is the
    tail's)."""
    return 0 if units.tied else math.ceil(root_param_bytes(inv, plan) * units.embed_fraction)


def tail_gradient_bytes(inv: Inventory, embed_grads: int) -> int:
    """`G_T`: the tail's gradients unsharded (lm_head's and the final norm's under full fine-tuning), the root's
    gradients less the input embedding's (`embed_grads`, `sharding:input_embedding_gradient_bytes`)."""
    return inv.grads.other - embed_grads


def unit_reduce_scatter_bytes(plan: TrainingPlan, grads: int) -> int:
    """A root-side unit's reduce-scatter after its backward (`grads` its gradients unsharded): the copy into the
    input beside the gradients (`G·c/4 + G·r/4`, `sharding:reduce_scatter_bytes`), or the collective, its input
    `G·r/4` beside the output shard; with offload the collective (`sharding:offload_reduce_scatter_bytes`). Under
    accumulation the unsharded gradients are the accumulated ones, counted apart (`no_sync_unit_reduce_scatter`).
    Source: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (foreach_reduce)."""
    reduce = in_reduce_dtype(plan, grads)
    collective = reduce + math.ceil(reduce / plan.gpus)
    return collective if plan.offload else max(in_param_dtype(plan, grads) + reduce, collective)


def no_sync_unit_reduce_scatter(plan: TrainingPlan, grads: int) -> int:
    """The same reduce-scatter at an accumulation window's last micro-batch: the input and the output shard beside
    the accumulated gradients (`sharding:no_sync_gradient_bytes`, which hold the unit's unsharded ones)."""
    reduce = in_reduce_dtype(plan, grads)
    return reduce + math.ceil(reduce / plan.gpus)


def units_gradient_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int, embed: int) -> tuple[int, int]:
    """gradient_bytes in backward under accelerate's units: the tail's gradients are reduce-scattered as the
    tail's backward ends, so only their shard `⌈G_T/n⌉` stays (host RAM with offload), from the last layer's
    backward on; with it every other layer's shard at layer 0 (`sharding:fsdp_backward_gradient_bytes`'s
    pattern). A tied tail's are unsharded to the end of backward, as the layers-then-model root's."""
    shard = 0 if plan.offload else math.ceil(inv.grads.layers / plan.gpus)
    tail = tail_gradient_bytes(inv, embed)
    head = 0 if plan.offload else math.ceil(tail / plan.gpus)
    return head, head + shard - math.ceil(shard / max(1, num_layers))


def units_gathered_bytes(
    inv: Inventory, plan: TrainingPlan, num_layers: int, units: Units, embed_grads: int
) -> ShardedMoments:
    """FSDP2 under accelerate's units. Tied: the layers-then-model moments, the root never re-gathered (the tail
    unit is never resharded before its backward) and the last layer prefetched only after the loss's backward
    (`R` there). Untied, reshard after forward on: `E + max(E, 2W)` at layer 0's
    gather (the embedding's flat output beside layer 0's, the embedding resharded), `3W` at a later layer's
    copy-out, `2W` while a layer runs, `W + 2T` at the tail's copy-out (the last layer's flat output alive), `2T`
    at the logits (the tail's flat output freed by the root's post-forward); backward: `T` at the loss, `2W` in a
    layer's backward (the next one prefetched), `W + E` at layer 0's (the embedding prefetched). Off: each unit
    stays gathered from its forward to its backward (`K = E + L·W`). A layer is resharded before its reduce-scatter
    (`W`, or `K - W`, once the last layer's backward is done). The tail's reduce-scatter, at the start of backward,
    is a moment of its own (`tail_reduce_scatter`), its input kept through the last layer's backward (`tail_kept`:
    FSDP2 frees a reduce-scatter input only at the next unit's; measured, mistral full x2 without checkpointing, the
    peak at the last layer's backward end beside it); the embedding's is the root's at the end. On 2 layers layer 0
    is the layer before the last (`backward_next` = `backward_first`)."""
    old = fsdp_gathered_bytes(inv, plan, num_layers)
    if units.tied and plan.sharding == "fsdp_grad_op":
        return old
    if units.tied:  # the tail's pre-backward hook, which prefetches the last layer, runs after the loss's backward
        return old._replace(root_regather=0, backward_loss=root_param_bytes(inv, plan))
    embed, layer = embed_param_bytes(inv, plan, units), layer_param_bytes(inv, num_layers, plan)
    tail = root_param_bytes(inv, plan) - embed
    tail_grads = tail_gradient_bytes(inv, embed_grads)
    if plan.sharding == "fsdp_grad_op":
        kept = embed + num_layers * layer
        forward = (kept + layer, kept + 2 * tail, kept + 2 * layer, 2 * embed + 2 * layer, kept + layer + 2 * tail)
        backward = (kept + tail, kept, embed + layer, kept - layer, kept)
    else:
        forward = (2 * layer, 2 * tail, 3 * layer, embed + max(embed, 2 * layer), layer + 2 * tail)
        backward = (tail, 2 * layer, layer + embed, 2 * layer, 2 * layer)
    shards = 0 if plan.offload else math.ceil(inv.grads.layers / plan.gpus)
    head = 0 if plan.offload else math.ceil(tail_grads / plan.gpus)
    rs = no_sync_unit_reduce_scatter if no_sync_gradient_bytes(inv, plan) else unit_reduce_scatter_bytes
    return old._replace(
        first_gather=forward[3],
        layer_gather=forward[2],
        forward_layer=forward[0],
        forward_logits=forward[1],
        tail_gather=forward[4],
        backward_loss=backward[0],
        backward_last=backward[1],
        backward_first=backward[2],
        backward_next=backward[2] if num_layers <= 2 else backward[3],
        backward_last_done=backward[1] - layer,
        tail_reduce_scatter=(backward[4], rs(plan, tail_grads) if tail_grads else 0),
        tail_kept=in_reduce_dtype(plan, tail_grads),
        reduce_scatter_root=rs(plan, embed_grads) if embed_grads else 0,
        root_grads=head,
        end_grads=shards + head + in_param_dtype(plan, embed_grads),
        root_regather=0,
    )
