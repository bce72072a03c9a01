"""What data parallelism adds to a GPU's moments: DDP's buckets and start-up broadcast, FSDP2's gathered layers.

Each formula was measured on torch.distributed CPU ranks over gloo (app/calibration/distributed.py, every rank
tracked by its own LiveTensorTracker; calibration/cpu-matrix-multi.toml, docs/accuracy-multi.md) with torch 2.13;
the sources are torch's own files, named per function. ZeRO-2/3 (DeepSpeed) are not measured here (see
`zero3_gathered_bytes`). Notation: `R` the root's parameters (embeddings, final norm, lm_head: everything outside
the decoder layers), `W_l` one decoder layer's parameters (weights and adapters), both unsharded; `G_l`, `G_r` the
gradients of one layer's and of the root's trainable parameters, unsharded; `L` decoder layers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from app.core.plan import TrainingPlan
from app.core.tensors import Inventory
from app.core.units import MIB

# torch/nn/parallel/distributed.py: `_sync_module_states(..., broadcast_bucket_size=int(250 * 1024 * 1024))`
DDP_BROADCAST_BUCKET = 250 * MIB
FSDP = ("fsdp", "fsdp_grad_op")


class ShardedMoments(NamedTuple):
    """Bytes FSDP2 (or DDP) adds at each moment of the step, beyond the single-GPU terms."""

    ddp_buckets: int  # from DDP's construction on, every moment
    ddp_broadcast: int  # load only
    first_gather: int  # forward: the root's and layer 0's gathers, before any activation
    forward_layer: int
    forward_logits: int
    backward_loss: int
    backward_last: int  # the last decoder layer's backward
    backward_first: int  # layer 0's backward
    reduce_scatter_layer: int  # a layer's unsharded gradients while its backward runs
    reduce_scatter_peak: int  # the same gradients and the reduce-scatter input, once the layer's backward is done
    reduce_scatter_root: int  # the root's, at the end of backward
    root_grads: int  # the root's gradients, unsharded from lm_head's backward to the end of backward
    end_grads: int  # FSDP2's gradients at the root's reduce-scatter: every layer's shard and the root's unsharded


def sharded_moments(inv: Inventory, plan: TrainingPlan, num_layers: int, grads: int) -> ShardedMoments:
    """DDP's terms (`ddp_bucket_bytes`, `ddp_broadcast_bytes`) or FSDP2's (`fsdp_gathered_bytes`); zero for others."""
    if plan.sharding in FSDP:
        return fsdp_gathered_bytes(inv, plan, num_layers)
    none = ShardedMoments(*([0] * 13))
    return none._replace(ddp_buckets=ddp_bucket_bytes(plan, grads), ddp_broadcast=ddp_broadcast_bytes(inv, plan))


def fsdp_backward_gradient_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> tuple[int, int]:
    """gradient_bytes in FSDP2's backward: the root's gradients stay unsharded until the root's post-backward at
    the very end (lm_head's from the start), the layers' are sharded as each layer's reduce-scatter ends:
    (`G_r` at the last layer; `G_r` + every other layer's shard at layer 0)."""
    shard = math.ceil(inv.grads.layers / plan.gpus)
    return inv.grads.other, inv.grads.other + shard - math.ceil(shard / max(1, num_layers))


def ddp_bucket_bytes(plan: TrainingPlan, grads: int) -> int:
    """DDP's gradient buckets: one flat tensor per bucket of the trainable parameters (gradient_as_bucket_view
    False, torch's default), allocated when DDP is constructed (Reducer::initialize_buckets), so from load on.
    Measured: load = weights + buckets; every later moment + buckets. Source: torch/csrc/distributed/c10d/reducer.cpp.
    """
    return grads if plan.sharding == "ddp" and plan.gpus > 1 else 0


def ddp_broadcast_bytes(inv: Inventory, plan: TrainingPlan) -> int:
    """At construction DDP broadcasts rank 0's parameters (`_sync_module_states` → `_broadcast_coalesced`), which
    flattens them per dtype in buckets of 250 MiB: the largest dtype's parameters, up to 250 MiB, are copied once.
    Measured at load: weights + adapters + that flat copy. Source: torch/csrc/distributed/c10d/comm.cpp
    (broadcast_coalesced, take_tensors by type)."""
    if plan.sharding != "ddp" or plan.gpus < 2:
        return 0
    if plan.method == "qlora":  # uint8 packed weights, and the fp32 rest with the adapters
        largest = max(inv.base_quantized, inv.base.total - inv.base_quantized + inv.adapters.total)
    elif plan.method == "lora":  # the 16-bit base, and the fp32 adapters
        largest = max(inv.base.total, inv.adapters.total)
    else:
        largest = inv.base.total
    return min(largest, DDP_BROADCAST_BUCKET)


def root_param_bytes(inv: Inventory) -> int:
    """`R`: the root's parameters, gathered unsharded: embeddings, final norm and lm_head (and their adapters)."""
    return inv.base.other + inv.adapters.other


def layer_param_bytes(inv: Inventory, num_layers: int) -> int:
    """`W_l`: one decoder layer's parameters, gathered unsharded (the largest layer's weights + its adapters)."""
    return inv.largest_layer_weights + math.ceil(inv.adapters.layers / max(1, num_layers))


def fsdp_gathered_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> ShardedMoments:
    """FSDP2 `fully_shard` per decoder layer and on the root (as accelerate's fsdp2_prepare_model wraps), reshard
    after forward on (fsdp) or off (fsdp_grad_op). A gather allocates a flat all-gather output `W` and copies it out
    into the per-parameter tensors `W`; the flat output stays alive until the next gather (FSDP2's AllGatherState)
    and the copy-out frees nothing before. Forward: `2R + 2W_l` at layer 0's gather, `R + 2W_l` while a layer runs,
    `R + W_l` at the logits. Backward: the root is gathered first and kept to the end, the next layer prefetched
    (`_backward_prefetch`): `R + W_l` at the loss, `R + 2W_l` in a layer's backward. With reshard off every layer
    stays gathered from its forward to its backward: `R + L·W_l + W_l` in the last layer's forward and at the logits,
    `R + L·W_l` at the loss and the last layer's backward (no gather, so no flat output), `R + W_l` at layer 0's.
    The root's post-forward frees the last flat output (measured: the forward ends with none).
    Sources: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (foreach_all_gather, copy-out),
    _fsdp_param_group.py (pre_backward prefetch, post_backward reshard), _fsdp_state.py (the root's lazy init).
    """
    if plan.sharding not in FSDP or plan.gpus < 2:
        return ShardedMoments(*([0] * 13))
    root, layer = root_param_bytes(inv), layer_param_bytes(inv, num_layers)
    if plan.sharding == "fsdp_grad_op":  # every layer stays gathered from its forward to its backward
        kept = root + num_layers * layer
        forward = (kept + layer, kept + layer)  # with the last gather's flat output, freed as the forward ends
        backward = (kept, kept, root + layer)  # no gather in backward: no flat output, no prefetch
    else:
        forward = (root + 2 * layer, root + layer)
        backward = (root + layer, root + 2 * layer, root + 2 * layer)  # the loss's backward prefetches the last
    return ShardedMoments(
        ddp_buckets=0,
        ddp_broadcast=0,
        first_gather=2 * root + 2 * layer,
        forward_layer=forward[0],
        forward_logits=forward[1],
        backward_loss=backward[0],
        backward_last=backward[1],
        backward_first=backward[2],
        reduce_scatter_layer=reduce_scatter_bytes(inv, num_layers) // 2,
        reduce_scatter_peak=reduce_scatter_bytes(inv, num_layers),
        reduce_scatter_root=2 * inv.grads.other,
        root_grads=inv.grads.other,
        end_grads=math.ceil(inv.grads.layers / plan.gpus) + inv.grads.other,
    )


def reduce_scatter_bytes(inv: Inventory, num_layers: int) -> int:
    """A layer's unsharded gradients `G_l` grow while its backward runs; once it is done, `foreach_reduce` copies
    them into a reduce-scatter input of `G_l` before freeing them: `2·G_l` then (the layer's transients gone).
    Source: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (foreach_reduce)."""
    return 2 * math.ceil(inv.grads.layers / max(1, num_layers))


def zero3_gathered_bytes(inv: Inventory, plan: TrainingPlan) -> int:
    """ZeRO-3 (DeepSpeed): two decoder layers gathered unsharded (current + prefetch). First-principles: DeepSpeed
    does not run on this CPU-only machine (docs/accuracy-multi.md), so no run has measured it."""
    return 2 * inv.largest_layer_weights if plan.sharding == "zero3" else 0
