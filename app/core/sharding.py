"""What data parallelism adds to a GPU's moments: DDP's buckets and start-up broadcast, FSDP2's gathered layers.

Each formula was measured on torch.distributed CPU ranks over gloo (app/calibration/distributed.py, every rank
tracked by its own LiveTensorTracker; calibration/cpu-matrix-multi.toml, docs/accuracy-multi.md) with torch 2.13;
the sources are torch's own files, named per function. DeepSpeed ZeRO-2/3 are app/core/zero.py's (measured);
`zero3_gathered_bytes` is the first-principles remainder. Notation: `R` the root's parameters (embeddings, final norm, lm_head: everything outside
the decoder layers), `W_l` one decoder layer's parameters (weights and adapters), both unsharded; `G_l`, `G_r` the
gradients of one layer's and of the root's trainable parameters, unsharded; `L` decoder layers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from app.core.plan import TrainingPlan
from app.core.quant import rounded
from app.core.spec import ModelSpec
from app.core.tensors import Inventory
from app.core.units import DTYPE_BYTES, FP32, MIB

if TYPE_CHECKING:
    from app.core.fsdp2_units import Units

# torch/nn/parallel/distributed.py: `_sync_module_states(..., broadcast_bucket_size=int(250 * 1024 * 1024))`
DDP_BROADCAST_BUCKET = 250 * MIB
FSDP = ("fsdp", "fsdp_grad_op")


class ShardedMoments(NamedTuple):
    """Bytes FSDP2 (or DDP) adds at each moment of the step, beyond the single-GPU terms."""

    ddp_buckets: int  # from DDP's construction on, every moment
    ddp_broadcast: int  # load only
    first_gather: int  # forward: the root's and layer 0's gathers, before any activation
    layer_gather: int  # forward: a later layer's gather, the previous layer's flat output still alive
    forward_layer: int
    forward_logits: int
    backward_loss: int
    backward_last: int  # the last decoder layer's backward
    backward_first: int  # layer 0's backward
    backward_next: int  # the backward of the layer before the last (estimate:next_layer_moment)
    reduce_scatter_layer: int  # a layer's unsharded gradients while its backward runs
    reduce_scatter_peak: int  # the same gradients and the reduce-scatter input, once the layer's backward is done
    reduce_scatter_root: int  # the root's, at the end of backward
    root_grads: int  # the root's gradients, unsharded from lm_head's backward to the end of backward
    end_grads: int  # FSDP2's gradients at the root's reduce-scatter: every layer's shard and the root's unsharded
    root_regather: int  # backward's start: the root re-gathered (reshard after forward on), flat output beside copy
    # FSDP1 (fsdp1.py): the flat gradient of the layer before the last concatenated, the last layer's shard alive
    flat_grad_cat: int = 0
    # gathered once the last layer's backward is done, at its reduce-scatter (FSDP2: that layer resharded first;
    # FSDP1: fsdp1.py); None: backward_last
    backward_last_done: int | None = None
    # FSDP1 FULL_SHARD (fsdp1.py): the layer before the last at its reduce-scatter, `(gathered, reduce-scatter)`; 0: none
    reduce_scatter_next: tuple[int, int] = (0, 0)
    # FSDP1 LoRA under BACKWARD_POST (fsdp1.py): gathered late in the last layer's backward; 0: no such moment
    late_prefetch: int = 0
    # FSDP1 full fine-tuning (fsdp1.py): layer 0's gradient pieces and their concatenation; 0: no such moment
    first_cat: int = 0
    # FSDP1 MixedPrecision, full fine-tuning (fsdp1_mp.py): a layer's reduce-scatter, gathered at the last layer's
    # and at layer 0's; zeros: no such moments
    mp_reduce: tuple[int, int, int] = (0, 0, 0)
    # FSDP2 under accelerate's units (fsdp2_units.py): the tail's copy-out at the forward's end; 0: no such moment
    tail_gather: int = 0
    # FSDP2 under accelerate's units: the tail's reduce-scatter at backward's start, `(gathered, reduce-scatter)`
    tail_reduce_scatter: tuple[int, int] = (0, 0)
    # FSDP2 under accelerate's units: the tail's reduce-scatter input, kept through the last layer's backward
    tail_kept: int = 0


def no_sharding() -> ShardedMoments:
    """Nothing gathered, bucketed or reduce-scattered at any moment (one GPU, DDP before its own terms)."""
    # the FSDP1 fields after flat_grad_cat: their "none"
    return ShardedMoments._make([0] * 17 + [None, (0, 0), 0, 0, (0, 0, 0), 0, (0, 0), 0])


def sharded_moments(
    inv: Inventory,
    plan: TrainingPlan,
    num_layers: int,
    grads: int,
    pieces: tuple[int, int] = (1, 1),
    units: Units | None = None,
    embed_grads: int = 0,
) -> ShardedMoments:
    """DDP's terms (`ddp_bucket_bytes`, `ddp_broadcast_bytes`), FSDP2's (`fsdp_gathered_bytes`; under accelerate's
    units, `units` given, `fsdp2_units.units_gathered_bytes` with the input embedding's gradient `embed_grads`) or FSDP1's (`fsdp1.fsdp1_gathered_bytes`,
    plan.fsdp_version 1, `pieces` its `layer_grad_pieces`); zero for others."""
    if plan.sharding in FSDP and plan.fsdp_version == 1 and plan.gpus > 1:
        from app.core.fsdp1 import fsdp1_gathered_bytes  # imports this module

        return fsdp1_gathered_bytes(inv, plan, num_layers, pieces)
    if units is not None:  # fsdp2_units.fsdp2_units: FSDP2 on several GPUs under accelerate's units
        from app.core.fsdp2_units import units_gathered_bytes  # imports this module

        return units_gathered_bytes(inv, plan, num_layers, units, embed_grads)
    if plan.sharding in FSDP:
        return fsdp_gathered_bytes(inv, plan, num_layers)
    none = no_sharding()
    return none._replace(ddp_buckets=ddp_bucket_bytes(plan, grads), ddp_broadcast=ddp_broadcast_bytes(inv, plan))


def fsdp_backward_gradient_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int, embed: int) -> tuple[int, int]:
    """gradient_bytes in FSDP2's backward: the root's gradients stay unsharded until the root's post-backward at
    the very end, the layers' are sharded as each layer's reduce-scatter ends; the input embeddings' gradient
    (`embed`, `input_embedding_gradient_bytes`) is made only after layer 0's backward:
    (`G_r − embed` at the last layer; that + every other layer's shard at layer 0). With offload the layers' shards
    are host RAM (`fsdp_offload_host_bytes`): `G_r − embed` at both."""
    shard = 0 if plan.offload else math.ceil(inv.grads.layers / plan.gpus)
    head = in_param_dtype(plan, inv.grads.other - embed)
    return head, head + shard - math.ceil(shard / max(1, num_layers))


def fsdp_layer_shard_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """One decoder layer's gradient shard on the device, `⌈G_l/n⌉` once its reduce-scatter is done: 0 without FSDP,
    and with offload (the shard is copied to host RAM)."""
    if plan.sharding not in FSDP or plan.gpus < 2 or plan.offload:
        return 0
    return math.ceil(math.ceil(inv.grads.layers / plan.gpus) / max(1, num_layers))


def input_embedding_gradient_bytes(model: ModelSpec, inv: Inventory, plan: TrainingPlan) -> int:
    """The input embeddings' gradient, trained only by full fine-tuning and untied (a tied one is lm_head's,
    made at the loss's backward): `V·h` in the trained dtype."""
    if plan.method != "full" or any(g.tied for g in model.groups):
        return 0
    embeds = [g for g in model.groups if g.kind == "embedding" and not g.in_layers]
    return sum(g.count * rounded(p.numel * inv.trainable_dtype) for g in embeds for p in g.params)


def ddp_bucket_bytes(plan: TrainingPlan, grads: int) -> int:
    """DDP's gradient buckets: one flat tensor per bucket of the trainable parameters (gradient_as_bucket_view
    False, torch's default), allocated when DDP is constructed (Reducer::initialize_buckets), so from load on.
    Measured: load = weights + buckets; every later moment + buckets. Source: torch/csrc/distributed/c10d/reducer.cpp.
    """
    return grads if plan.sharding == "ddp" and plan.gpus > 1 else 0


def ddp_broadcast_bytes(inv: Inventory, plan: TrainingPlan) -> int:
    """At construction DDP broadcasts rank 0's parameters (`_sync_module_states` → `_broadcast_coalesced`): they are
    flattened into buckets of up to 250 MiB per dtype, each bucket a flat copy, two buckets in flight at once.
    Measured at load (a 16-bit base with fp32 adapters): weights + adapters + a flat copy of both, so
    `min(weights + adapters, 2 × 250 MiB)`. Source: torch/csrc/distributed/c10d/comm.cpp (broadcast_coalesced,
    BroadcastWork, the in-flight deque), torch/nn/parallel/distributed.py (broadcast_bucket_size)."""
    if plan.sharding != "ddp" or plan.gpus < 2:
        return 0
    return min(inv.base.total + inv.adapters.total, 2 * DDP_BROADCAST_BUCKET)


def no_sync_gradient_bytes(inv: Inventory, plan: TrainingPlan) -> int:
    """FSDP with gradient accumulation, as transformers' Trainer runs it: every micro-batch before the last skips the
    gradient sync (accelerate's `no_sync`: FSDP2's `set_requires_gradient_sync(False)`, FSDP1's `no_sync()`), so
    each rank keeps every unit's gradient unsharded from the first micro-batch's backward to the last one's
    reduce-scatter: `G_layers + G_root`, in the reduce dtype under FSDP2's MixedPrecisionPolicy (`in_reduce_dtype`:
    FSDP2 casts the accumulated gradient to it), on the device with CPU offload too. 0 otherwise. Measured on CPU
    ranks (calibration/cpu-matrix-multi-accum.toml). Source: transformers 5.24 trainer.py (`sync_context`),
    accelerate 1.15 accelerator.py (`no_sync`), torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py
    (`post_backward`: `to_accumulated_grad_if_needed` when not reducing), fsdp/_flat_param.py
    (`prepare_gradient_for_backward`: an unsharded gradient is kept to accumulate into)."""
    if plan.sharding not in FSDP or plan.gpus < 2 or plan.grad_accum_steps < 2:
        return 0
    return in_reduce_dtype(plan, inv.grads.layers + inv.grads.other)


def no_sync_reduce_scatter_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """FSDP2's reduce-scatter of a layer's accumulated gradient in the window's last micro-batch: its input copy
    `G_l` and the new shard `⌈G_l/n⌉` beside the accumulated gradient (in the accumulated gradient already), both in
    the reduce dtype. Measured on CPU ranks (llama, full, 2 ranks: the peak at the last layer's `foreach_reduce`
    with both buffers and the next layer's all-gather alive). Source: torch/distributed/fsdp/_fully_shard/
    _fsdp_collectives.py (`foreach_reduce`)."""
    layer = in_reduce_dtype(plan, math.ceil(inv.grads.layers / max(1, num_layers)))
    return layer + math.ceil(layer / plan.gpus)


def in_param_dtype(plan: TrainingPlan, nbytes: int) -> int:
    """Bytes of fp32 tensors once cast to FSDP2's `param_dtype` (`plan.dtype`) under fsdp_mixed_precision: the
    all-gather input, its output and the unsharded parameters and gradients are all in that dtype (`c/4` of the
    fp32 shards); `nbytes` unchanged without the policy. Source: torch/distributed/fsdp/_fully_shard/_fsdp_param.py
    (`init_dtype_attrs`, `init_all_gather_outputs`, `init_unsharded_param`: dtype `param_dtype`), _fsdp_collectives.py
    (`_get_param_all_gather_inputs`: the shard copied into a `param_dtype` buffer before the all-gather)."""
    if not plan.fsdp_mixed_precision:
        return nbytes
    return math.ceil(nbytes * DTYPE_BYTES[plan.dtype] / FP32)


def in_reduce_dtype(plan: TrainingPlan, nbytes: int) -> int:
    """Bytes of fp32 gradients in FSDP2's `reduce_dtype` under fsdp_mixed_precision: the reduce-scatter input and
    output (fp32, or the param dtype as accelerate's policy); `nbytes` unchanged without the policy. Source:
    torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (`foreach_reduce`: `reduce_dtype or grad_dtype`),
    _fsdp_param.py (`init_dtype_attrs`: a reduce dtype equal to the param dtype is None, the gradients' own)."""
    if plan.fsdp_reduce_dtype == "fp32":
        return nbytes
    return in_param_dtype(plan, nbytes)


def root_param_bytes(inv: Inventory, plan: TrainingPlan | None = None) -> int:
    """`R`: the root's parameters, gathered unsharded: embeddings, final norm and lm_head (and their adapters), in
    the param dtype under fsdp_mixed_precision (`in_param_dtype`)."""
    root = inv.base.other + inv.adapters.other
    return root if plan is None else in_param_dtype(plan, root)


def layer_param_bytes(inv: Inventory, num_layers: int, plan: TrainingPlan | None = None) -> int:
    """`W_l`: one decoder layer's parameters, gathered unsharded (the largest layer's weights + its adapters), in the
    param dtype under fsdp_mixed_precision (`in_param_dtype`)."""
    layer = inv.largest_layer_weights + math.ceil(inv.adapters.layers / max(1, num_layers))
    return layer if plan is None else in_param_dtype(plan, layer)


def fsdp_gathered_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> ShardedMoments:
    """FSDP2 `fully_shard` per decoder layer and on the root (as accelerate's fsdp2_prepare_model wraps), reshard
    after forward on (fsdp) or off (fsdp_grad_op). A gather allocates a flat all-gather output `W` and copies it out
    into the per-parameter tensors `W`; the flat output stays alive until the next gather's copy-out (FSDP2's
    AllGatherState). Forward: `2R + 2W_l` at layer 0's gather, `R + 3W_l` at a later layer's copy-out (the previous
    flat output, the new one and its copy), `R + 2W_l` while a layer runs, `R + W_l` at the logits. Backward: the root is gathered first and kept to the end, the next layer prefetched
    (`_backward_prefetch`): `R + W_l` at the loss, `R + 2W_l` in a layer's backward. With reshard off every layer
    stays gathered from its forward to its backward: `R + L·W_l + 2W_l` at the last layer's copy-out,
    `R + L·W_l + W_l` in the last layer's forward and at the logits,
    `R + L·W_l` at the loss and the last layer's backward (no gather, so no flat output), `R + W_l` at layer 0's.
    A layer's post-backward reshards it before its reduce-scatter: `R + W_l` (the prefetched one) there, `R + L·W_l -
    W_l` with reshard off. Layer 0 prefetches nothing (the root is gathered already): on 2 layers, where it is the
    layer before the last, `R + W_l` through its backward (measured: a tied embedding, full, offload, +16.79 % with
    `R + 2W_l`). On 3 or more `R + 2W_l` stays counted there: it stands for layer 1's backward, which holds layer 0's
    flat all-gather output beside its own gathered layer, with layer 0's gradient shards, and without it the matrix's
    3-layer full fine-tuning points read -2 % to -7 % (mistral full x2 -2.04 %, mixtral under the policy -6.91 %).
    The root's post-forward frees the last flat output (measured: the forward ends with none).
    Sources: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (foreach_all_gather, copy-out),
    _fsdp_param_group.py (pre_backward prefetch, post_backward reshard), _fsdp_state.py (the root's lazy init).
    """
    if plan.sharding not in FSDP or plan.gpus < 2:
        return no_sharding()
    root, layer = root_param_bytes(inv, plan), layer_param_bytes(inv, num_layers, plan)
    if plan.sharding == "fsdp_grad_op":  # every layer stays gathered from its forward to its backward
        kept = root + num_layers * layer
        forward = (
            kept + layer,
            kept + layer,
            kept + 2 * layer,
        )  # with the last gather's flat output, freed as the forward ends
        # no gather in backward: no flat output, no prefetch; each layer resharded once its backward is done
        backward = (kept, kept, root + layer, kept - layer)
    else:
        forward = (root + 2 * layer, root + layer, root + 3 * layer)
        # the loss's backward prefetches the last layer, every layer's backward but layer 0's the one before it
        backward = (root + layer, root + 2 * layer, root + (2 if num_layers > 2 else 1) * layer, root + 2 * layer)
    return ShardedMoments(
        ddp_buckets=0,
        ddp_broadcast=0,
        first_gather=2 * root + 2 * layer,
        layer_gather=forward[2],
        forward_layer=forward[0],
        forward_logits=forward[1],
        backward_loss=backward[0],
        backward_last=backward[1],
        backward_first=backward[2],
        backward_next=backward[2] if num_layers <= 2 else backward[3],
        reduce_scatter_layer=reduce_scatter_kept_bytes(inv, plan, num_layers),
        reduce_scatter_peak=offload_reduce_scatter_bytes(inv, plan, num_layers)
        if plan.offload
        else reduce_scatter_bytes(inv, num_layers, plan),
        reduce_scatter_root=root_reduce_scatter_bytes(inv, plan, num_layers),
        root_grads=in_param_dtype(plan, inv.grads.other),
        end_grads=(0 if plan.offload else math.ceil(inv.grads.layers / plan.gpus))
        + in_param_dtype(plan, inv.grads.other),
        root_regather=root_regather_bytes(inv, plan),
        backward_last_done=backward[3] - layer if plan.sharding == "fsdp" else kept - layer,
    )


def root_regather_bytes(inv: Inventory, plan: TrainingPlan) -> int:
    """FSDP2 with reshard_after_forward passed explicitly (True, as accelerate's fsdp2_prepare_model and this
    harness pass it) reshards the root after forward too: fully_shard leaves the root gathered only when the
    argument is left None (`_auto_reshard_after_forward`). So backward's first hook, the root's pre-backward on
    the loss, re-gathers it, and its flat all-gather output `R` sits beside the copy-out `R` until the copy-out is
    done (in backward the result is freed right after the copy-out, not kept for overlap): `2R`, before the
    last layer is prefetched. It outweighs the loss's moment (`R + W_l` beside the logits' backward) when `R` is
    large against a layer, as under QLoRA (fp32 embeddings and lm_head, 4-bit layers). 0 for fsdp_grad_op (the
    root stays gathered) and one GPU. Measured on CPU ranks (calibration/cpu-matrix-multi-qlora.toml; LoRA with a
    large vocabulary too: docs/accuracy-multi.md).
    Source: torch/distributed/fsdp/_fully_shard/_fsdp_state.py (`_lazy_init`: post_forward_mesh_info = None only
    when `_auto_reshard_after_forward`; `_pre_backward`), _fsdp_param_group.py (`pre_backward`,
    `wait_for_unshard`: `_all_gather_result = None` after the copy-out outside forward)."""
    if plan.sharding != "fsdp" or plan.gpus < 2:
        return 0
    return 2 * root_param_bytes(inv, plan)


def reduce_scatter_bytes(inv: Inventory, num_layers: int, plan: TrainingPlan | None = None) -> int:
    """A layer's unsharded gradients `G_l` grow while its backward runs; once it is done, `foreach_reduce` copies
    them into a reduce-scatter input of `G_l` before freeing them: `2·G_l` then (the layer's transients gone).
    Under fsdp_mixed_precision the gradients are in the param dtype and the input in the reduce dtype:
    `G_l·c/4 + G_l·r/4` (`in_param_dtype`, `in_reduce_dtype`).
    Source: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (foreach_reduce)."""
    layer = math.ceil(inv.grads.layers / max(1, num_layers))
    if plan is None or not plan.fsdp_mixed_precision:
        return 2 * layer
    return in_param_dtype(plan, layer) + in_reduce_dtype(plan, layer)


def reduce_scatter_kept_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """The reduce-scatter input FSDP2 keeps from one layer's post-backward to the next layer's reduce-scatter
    (`reduce_scatter_max_input_buffers` = 1): `G_l`, in the reduce dtype under fsdp_mixed_precision
    (`in_reduce_dtype`). Source: torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py (post_backward,
    `reduce_scatter_states`), _fsdp_collectives.py (foreach_reduce returns its input)."""
    return in_reduce_dtype(plan, math.ceil(inv.grads.layers / max(1, num_layers)))


def root_reduce_scatter_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """The root's reduce-scatter at the end of backward, beside its unsharded gradients `G_r` (`end_grads`): `2·G_r`.
    Under fsdp_mixed_precision the root's input `G_r·r/4` and output `⌈G_r·r/4/n⌉` in the reduce dtype, beside the
    last layer's input kept (`reduce_scatter_kept_bytes`). Measured on CPU ranks
    (calibration/cpu-matrix-multi-mp.toml). Source: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py
    (foreach_reduce)."""
    if not plan.fsdp_mixed_precision:
        return 2 * inv.grads.other
    root = in_reduce_dtype(plan, inv.grads.other)
    return root + math.ceil(root / plan.gpus) + reduce_scatter_kept_bytes(inv, plan, num_layers)


def offload_reduce_scatter_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """With CPU offload the worst moment of a layer's reduce-scatter is the collective itself: the reduce-scatter
    input `G_l` and its output `⌈G_l/n⌉` (allocated before the call, copied to the host after it), the unsharded
    gradients already freed by the copy-in. Measured on CPU ranks counted by placement (app/calibration/offload.py):
    the copy-in's `2·G_l` (`reduce_scatter_bytes`) is not reached there, the call's `G_l + G_l/n` is (x2 and x4
    alike). Source: torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py (foreach_reduce)."""
    layer = in_reduce_dtype(plan, math.ceil(inv.grads.layers / max(1, num_layers)))
    return layer + math.ceil(layer / plan.gpus)


def zero3_gathered_bytes(inv: Inventory, plan: TrainingPlan) -> int:
    """ZeRO-3 (DeepSpeed) under ZeRO-Offload or QLoRA: two decoder layers gathered unsharded (current + prefetch).
    First-principles: the plans the CPU ranks ran are modelled by app/core/zero.py (measured), these are not."""
    return 2 * inv.largest_layer_weights if plan.sharding == "zero3" else 0
