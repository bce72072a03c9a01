"""FSDP1 (`FullyShardedDataParallel`, one FlatParameter per wrapped unit): what it has gathered at each moment.

The plan's `fsdp_version: 1` under sharding fsdp (FULL_SHARD) or fsdp_grad_op (SHARD_GRAD_OP), wrapped as
accelerate wraps it (app/calibration/fsdp1.py: a unit per decoder layer and the root; the plan's backward prefetch,
limit_all_gathers, use_orig_params). Measured on torch.distributed CPU ranks over gloo (calibration/
cpu-matrix-multi-fsdp1.toml, docs/accuracy-multi.md). Notation as app/core/sharding.py: `R` the root's
parameters, `W_l` one decoder layer's, `L` layers. Where FSDP1 differs from FSDP2 (`sharding.fsdp_gathered_bytes`):
- a unit's all-gather writes straight into its padded unsharded FlatParameter and the original parameters are
  views into it (`FlatParamHandle.unshard` → `_all_gather_flat_param`, `_use_unsharded_views`), so a gathered unit
  is `W`, not FSDP2's flat output beside its copy-out `2W`;
- the root is left unsharded from its forward to the end of backward (`_runtime_utils._post_forward_reshard`:
  `free_unsharded_flat_param = not state._is_root and ...`), so there is no root re-gather at backward's start;
- no forward prefetch (forward_prefetch False): a layer's post-forward frees it before the next one gathers;
  in backward BACKWARD_PRE (`fsdp_backward_prefetch: pre`) gathers the next unit before the current one's
  gradients are computed (`_runtime_utils._pre_backward_hook` → `_prefetch_handle`): two layers at once, as
  FSDP2's backward prefetch; BACKWARD_POST and no prefetch (transformers' default) one (`prefetches_next_layer`);
- the unsharded flat gradient: autograd's view backward concatenates the layer's pieces into one flat gradient
  `G_l` (pieces and result both alive: `2·G_l`, FSDP2's copy-in), and `_reduce_grad` reduce-scatters it into a
  new shard `⌈G_l/n⌉` (padding: the FlatParameter is padded to a multiple of the world size,
  `FlatParamHandle._get_shard` / `_get_reduce_scatter_tensors`, a few elements) — the same bytes as FSDP2's.
"""

from __future__ import annotations

import math

from app.core.plan import TrainingPlan
from app.core.sharding import ShardedMoments, reduce_scatter_bytes
from app.core.tensors import Inventory


def fsdp1_unit_bytes(inv: Inventory) -> tuple[int, int]:
    """`(R, W_l)` as FSDP1 gathers them: the root's and the largest decoder layer's frozen or trained weights, the
    LoRA adapters left out. Under LoRA every adapter is its own unit (PEFT's `fsdp_auto_wrap_policy`; one dtype per
    FlatParameter), gathered only while its own forward or backward runs, so a layer's gather is its weights alone.
    Without adapters these are `sharding.root_param_bytes` / `layer_param_bytes`."""
    return inv.base.other, inv.largest_layer_weights


def fsdp1_gathered_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> ShardedMoments:
    """FSDP1's gathered parameters per moment: FULL_SHARD `R + W_l` at the first gather and while a layer runs
    forward, `R` at the logits (the last layer resharded, the root kept), `R + W_l` at the loss (the last layer
    prefetched), `R + 2W_l` in a layer's backward (BACKWARD_PRE; layer 0 has none to prefetch), `R + W_l` in layer 0's. SHARD_GRAD_OP keeps each
    layer from its forward to its backward, its adapters' units too (`A_l`, one layer's adapters, unsharded):
    `R + L·(W_l + A_l)` from the last layer's forward to its backward, `R + W_l + A_l` at layer 0's,
    `R + (L−1)·(W_l + A_l)` in the layer before the last. Under LoRA FULL_SHARD prefetches no layer: the handle after
    a layer in backward order is one of its adapters' units, gathered with its own backward (tiny). Gradients and reduce-scatter as FSDP2
    (module docstring). Sources: torch/distributed/fsdp/_flat_param.py (FlatParamHandle.unshard, reshard,
    `_use_unsharded_views`), _runtime_utils.py (`_post_forward_reshard`, `_pre_backward_hook`, `_prefetch_handle`,
    `_reduce_grad`), _limiter_utils.py (`_FreeEventQueue`: at most 2 in-flight all-gathers, a CUDA-event limit
    that changes nothing here with one gather in flight in forward)."""
    root, layer = fsdp1_unit_bytes(inv)
    prefetched = layer if prefetches_next_layer(plan) else 0
    before_last = layer + prefetched if num_layers > 2 else layer  # with 2 layers the one before the last is layer 0
    if plan.sharding == "fsdp_grad_op":  # every unit stays gathered from its forward to its backward
        # the adapters' own units too (LoRA): each layer's adapters unsharded beside its weights
        adapters = -(-inv.adapters.layers // max(1, num_layers))
        kept = root + num_layers * (layer + adapters)
        forward = (kept, kept, kept)  # (a layer running, the logits, the last layer's gather)
        # (loss, last layer, layer 0, the layer before the last: the last one resharded once its backward is done)
        backward = (kept, kept, root + layer + adapters, kept - layer - adapters)
    else:
        forward = (root + layer, root, root + layer)
        backward = (root + loss_prefetch(inv, plan), root + layer + prefetched, root + layer, root + before_last)
    return ShardedMoments(
        ddp_buckets=0,
        ddp_broadcast=0,
        first_gather=root + layer,
        layer_gather=forward[2],
        forward_layer=forward[0],
        forward_logits=forward[1],
        backward_loss=backward[0],
        backward_last=backward[1],
        backward_first=backward[2],
        backward_next=backward[3],
        reduce_scatter_layer=reduce_scatter_bytes(inv, num_layers) // 2,
        reduce_scatter_peak=reduce_scatter_bytes(inv, num_layers),
        reduce_scatter_root=2 * inv.grads.other,
        root_grads=inv.grads.other,
        end_grads=-(-inv.grads.layers // plan.gpus) + inv.grads.other,
        root_regather=0,  # the root stays unsharded through forward: nothing to re-gather
        flat_grad_cat=flat_grad_cat_bytes(inv, plan, num_layers),
        reduce_scatter_next=reduce_scatter_next_bytes(inv, plan, num_layers),
        late_prefetch=lora_late_prefetch_bytes(inv, plan, num_layers),
        # BACKWARD_PRE keeps backward_last (the shipped fit); without prefetch or BACKWARD_POST one layer at most
        backward_last_done=None
        if plan.sharding == "fsdp_grad_op" or plan.fsdp_backward_prefetch == "pre"
        else root + reduce_scatter_gathered(inv, plan),
    )


def loss_prefetch(inv: Inventory, plan: TrainingPlan) -> int:
    """FULL_SHARD at the loss's backward: BACKWARD_PRE has gathered the last layer (the root's pre-backward hook
    prefetches the next handle in backward order), BACKWARD_POST and no prefetch nothing yet (the last layer is
    gathered by its own pre-backward hook; the root's post-backward runs at the end of backward). Measured on CPU
    ranks (mistral, fsdp_backward_prefetch none and post: the peak at the loss). Source:
    torch/distributed/fsdp/_runtime_utils.py (`_pre_backward_hook`, `_get_handle_to_prefetch`)."""
    return fsdp1_unit_bytes(inv)[1] if plan.fsdp_backward_prefetch == "pre" else 0


def reduce_scatter_gathered(inv: Inventory, plan: TrainingPlan) -> int:
    """FULL_SHARD, the last layer's reduce-scatter: `_post_backward_hook` reshards the layer first
    (`_post_backward_reshard`), then reduce-scatters its flat gradient (`_reduce_grad`); the layer before it is
    gathered by then under BACKWARD_PRE (prefetched in the last layer's pre-backward) and BACKWARD_POST (prefetched
    in `_post_backward_reshard`, right after the reshard), not without prefetch. Source:
    torch/distributed/fsdp/_runtime_utils.py."""
    return 0 if plan.fsdp_backward_prefetch == "none" else fsdp1_unit_bytes(inv)[1]


def prefetches_next_layer(plan: TrainingPlan) -> bool:
    """FULL_SHARD backward holds the layer before the current one gathered beside it for the whole of the current
    one's backward only under BACKWARD_PRE and without LoRA. FSDP1 prefetches the handle before the current one in
    the forward's post-forward order (`_exec_order_utils.get_handle_to_backward_prefetch`); BACKWARD_PRE fetches it
    in the current handle's pre-backward: for full fine-tuning the layer before, under LoRA the layer's last adapter
    unit (each lora_A / lora_B is a unit, PEFT's `fsdp_auto_wrap_policy`, finished forward just before its layer),
    tiny. BACKWARD_POST fetches it in a handle's post-backward, after its reshard: for full fine-tuning once the
    layer is done (one layer at a time, as without prefetch); under LoRA late in the layer's backward
    (`lora_late_prefetch_bytes`). Source: torch/distributed/fsdp/_runtime_utils.py (`_get_handle_to_prefetch`,
    `_pre_backward_hook`, `_post_backward_reshard`)."""
    return plan.fsdp_backward_prefetch == "pre" and not plan.uses_lora


def lora_late_prefetch_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """LoRA under FULL_SHARD and BACKWARD_POST: gathered once the last layer's first adapter unit (q_proj's lora_A,
    whose predecessor in the post-forward order is the layer before) has its gradient, `R + 2·W_l`: the layer
    before prefetched while the layer's backward still runs (its attention input's gradient), most of its saved
    tensors freed. 0 otherwise, and with fewer than 2 layers. Measured on CPU ranks (mistral, LoRA, BACKWARD_POST, no
    checkpointing: two layers gathered, two layers' saved tensors alive). Source:
    torch/distributed/fsdp/_runtime_utils.py (`_post_backward_reshard` → `_prefetch_handle`),
    _exec_order_utils.py (`get_handle_to_backward_prefetch`)."""
    if not (plan.uses_lora and plan.fsdp_backward_prefetch == "post" and plan.sharding == "fsdp") or num_layers < 2:
        return 0
    root, layer = fsdp1_unit_bytes(inv)
    return root + 2 * layer


def reduce_scatter_next_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> tuple[int, int]:
    """FULL_SHARD, the layer before the last at its reduce-scatter: `(R + prefetched, 2·G_l + 2·⌈G_l/n⌉)`. The layer
    is resharded first (`_post_backward_reshard`), the one before it gathered under BACKWARD_PRE (prefetched in the
    layer's pre-backward) and BACKWARD_POST (right after the reshard), not without prefetch; its flat gradient `G_l`
    beside the reduce-scatter's working copy of it (`reduce_scatter_bytes`), the new shard and the last layer's
    (`_saved_grad_shard`, kept to the end of backward). Under BACKWARD_PRE the concatenation before it holds more
    (`flat_grad_cat_bytes`, the layer itself still gathered). (0, 0) with fewer than 3 layers (that layer is layer 0,
    nothing to prefetch: the estimate's layer-0 moment), under SHARD_GRAD_OP and without trained layer weights.
    Measured on CPU ranks (llama, full, BACKWARD_POST: the peak at `_reduce_grad`). Source:
    torch/distributed/fsdp/_runtime_utils.py (`_post_backward_hook`, `_reduce_grad`)."""
    if num_layers < 3 or plan.uses_lora or plan.sharding != "fsdp":
        return (0, 0)
    root, _ = fsdp1_unit_bytes(inv)
    shard = math.ceil(math.ceil(inv.grads.layers / num_layers) / plan.gpus)
    return (root + reduce_scatter_gathered(inv, plan), reduce_scatter_bytes(inv, num_layers) + 2 * shard)


def flat_grad_cat_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """FSDP1, the backward of the layer before the last, once its gradient pieces are concatenated into the flat
    gradient (autograd's view backward: pieces and result, `2·G_l`): the last layer's gradient shard `⌈G_l/n⌉`
    (`_saved_grad_shard`, kept to the end of backward) is alive beside it, and under FULL_SHARD the layer and the
    one before it gathered. 0 with fewer than 3 layers (that layer is layer 0: nothing prefetched, the estimate's
    layer-0 moment) and without trained layer weights. Measured on CPU ranks (llama, full, x4: the peak at
    `aten.cat`). Source: torch/distributed/fsdp/_runtime_utils.py (`_post_backward_hook`, `_reduce_grad`)."""
    if num_layers < 3 or plan.uses_lora:
        return 0
    layer_grads = -(-inv.grads.layers // num_layers)
    return 2 * layer_grads + -(-layer_grads // plan.gpus)
