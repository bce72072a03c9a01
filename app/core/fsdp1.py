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
  `FlatParamHandle._get_shard` / `_get_reduce_scatter_tensors`, a few elements) — the same bytes as FSDP2's;
- before that concatenation each projection's weight gradient is its own tensor, made as autograd reaches it: at a
  layer's backward peak only those made by then are alive (`layer_grad_pieces`), and the concatenation itself runs
  with the layer still gathered, the last layer's and layer 0's as their own moments (`last_done_gathered`,
  `first_cat_bytes`).
"""

from __future__ import annotations

import math

from app.core.fsdp1_mp import mp_layer_reduce, mp_reduce_bytes, unsharded_bytes
from app.core.plan import TrainingPlan
from app.core.quant import ceil_div
from app.core.sharding import FSDP, ShardedMoments, reduce_scatter_bytes
from app.core.spec import ModelSpec
from app.core.tensors import Inventory

# the down projections: a gated MLP's (and a shared expert's) `down_proj`, fused experts' `down_proj` parameter
DOWN_PROJ = "down_proj"


def fsdp1_unit_bytes(inv: Inventory, plan: TrainingPlan) -> tuple[int, int]:
    """`(R, W_l)` as FSDP1 gathers them: the root's and the largest decoder layer's frozen or trained weights, the
    LoRA adapters left out. Under LoRA every adapter is its own unit (PEFT's `fsdp_auto_wrap_policy`; one dtype per
    FlatParameter), gathered only while its own forward or backward runs, so a layer's gather is its weights alone.
    Without adapters these are `sharding.root_param_bytes` / `layer_param_bytes`; in the param dtype under
    MixedPrecision (`fsdp1_mp.unsharded_bytes`); under QLoRA without the layer's quant states
    (`fsdp1_layer_flat_bytes`)."""
    return unsharded_bytes(plan, inv.base.other), unsharded_bytes(plan, fsdp1_layer_flat_bytes(inv))


def fsdp1_layer_flat_bytes(inv: Inventory) -> int:
    """The largest decoder layer's FlatParameter: its parameters only, so under QLoRA the packed 4-bit weights (stored
    in the compute dtype) and the norms, not bitsandbytes' quant states (absmax, nested states, code maps: attributes
    of each Params4bit, kept whole on every rank: `estimate.fsdp_quant_state_bytes`). Measured on CPU ranks (llama,
    QLoRA, FULL_SHARD x2: the gathered layer is one tensor of the packed weights and norms, 396,288 B, where the
    inventory's layer, 427,520 B, holds its 31,232 B of quant states). Source: torch/distributed/fsdp/_flat_param.py
    (`FlatParamHandle._init_flat_param_and_metadata` flattens `module.named_parameters()`), bitsandbytes/nn/
    modules.py (`Params4bit.quant_state`)."""
    return inv.largest_layer_weights - inv.layer_quant_states


def fsdp1_gathered_bytes(
    inv: Inventory, plan: TrainingPlan, num_layers: int, pieces: tuple[int, int] = (1, 1)
) -> ShardedMoments:
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
    root, layer = fsdp1_unit_bytes(inv, plan)
    prefetched = layer if prefetches_next_layer(plan) else 0
    before_last = layer + prefetched if num_layers > 2 else layer  # with 2 layers the one before the last is layer 0
    if plan.sharding == "fsdp_grad_op":  # every unit stays gathered from its forward to its backward
        # the adapters' own units too (LoRA): each layer's adapters unsharded beside its weights
        adapters = unsharded_bytes(plan, -(-inv.adapters.layers // max(1, num_layers)))
        kept = root + num_layers * (layer + adapters)
        forward = (kept, kept, kept)  # (a layer running, the logits, the last layer's gather)
        # (loss, last layer, layer 0, the layer before the last: the last one resharded once its backward is done)
        backward = (kept, kept, root + layer + adapters, kept - layer - adapters)
    else:
        forward = (root + layer, root, root + layer)
        backward = (root + loss_prefetch(inv, plan), root + layer + prefetched, root + layer, root + before_last)
    # gathered at the last layer's reduce-scatter under MixedPrecision (`fsdp1_mp.mp_layer_reduce`): it is resharded
    mp_last = backward[3] if plan.sharding == "fsdp_grad_op" else root + reduce_scatter_gathered(inv, plan)
    root_grads = unsharded_bytes(plan, inv.grads.other)
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
        reduce_scatter_layer=made_pieces_bytes(inv, plan, num_layers, pieces),
        reduce_scatter_peak=unsharded_bytes(plan, reduce_scatter_bytes(inv, num_layers)),
        # the root's concatenation (pieces and flat gradient, the root still gathered) or, under MixedPrecision, its
        # reduce-scatter (`fsdp1_mp.mp_reduce_bytes` beside its flat gradient), whichever is larger
        reduce_scatter_root=max(2 * root_grads, mp_reduce_bytes(plan, inv.grads.other) - root_grads),
        root_grads=root_grads,
        end_grads=-(-inv.grads.layers // plan.gpus) + root_grads,
        root_regather=0,  # the root stays unsharded through forward: nothing to re-gather
        flat_grad_cat=flat_grad_cat_bytes(inv, plan, num_layers),
        reduce_scatter_next=reduce_scatter_next_bytes(inv, plan, num_layers),
        late_prefetch=lora_late_prefetch_bytes(inv, plan, num_layers),
        backward_last_done=last_done_gathered(inv, plan),
        first_cat=first_cat_bytes(inv, plan, num_layers),
        mp_reduce=mp_layer_reduce(inv, plan, num_layers, (mp_last, root)),
    )


def layer_grad_pieces(model: ModelSpec, plan: TrainingPlan) -> tuple[int, int]:
    """Full fine-tuning: `(made, all)`, the parameters of one decoder layer whose gradients are made by its backward's
    transient peak, and all its parameters. FSDP1's original parameters are views into the gathered FlatParameter
    (`_use_unsharded_views`), so each projection's weight gradient is its own tensor until the layer's backward ends
    and autograd's view backward concatenates them (`flat_grad_cat_bytes`). The largest transient of a layer's
    backward is the MLP's past its down projection (the gated product's gradients, `activations:
    gated_product_backward_bytes`), where only the down projections' gradients are made; with eager attention the
    scores' gradients come after the whole MLP's, and a model without `down_proj` is not known: all of it there (the
    whole gradient, an over-estimate). `(1, 1)` (all) otherwise, and outside FSDP1. Measured on CPU ranks (mistral, full, FULL_SHARD x4,
    checkpointing: the peak at the gated product's MulBackward with down_proj's gradient alone made, +7.85 % when the
    whole gradient was counted). Source: torch/distributed/fsdp/_flat_param.py (`_use_unsharded_views`,
    `_get_unflat_views`: `torch.split` then `view`)."""
    if plan.method != "full" or plan.attn == "eager" or plan.fsdp_version != 1 or plan.sharding not in FSDP:
        return (1, 1)
    layer = [g for g in model.groups if g.in_layers]
    total = sum(p.numel for g in layer for p in g.params)
    down = sum(p.numel for g in layer for p in g.params if DOWN_PROJ in (g.leaf, p.name))
    return (down, total) if down and total else (1, 1)


def made_pieces_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int, pieces: tuple[int, int]) -> int:
    """The gradient pieces of one layer made by its backward's transient peak: `⌈G_l·made/all⌉`
    (`layer_grad_pieces`)."""
    layer = unsharded_bytes(plan, reduce_scatter_bytes(inv, num_layers) // 2)
    made, total = pieces
    return ceil_div(layer * made, max(1, total))


def last_done_gathered(inv: Inventory, plan: TrainingPlan) -> int | None:
    """FULL_SHARD, once the last layer's backward is done: full fine-tuning concatenates its flat gradient (`2·G_l`)
    before `_post_backward_hook` reshards it, so the layer is still gathered there (None: `backward_last`); under
    LoRA the frozen weights' unit is resharded by its own hook before the adapters' tiny gradients are reduced: the
    root and what a backward prefetch gathered (`reduce_scatter_gathered`). BACKWARD_PRE and SHARD_GRAD_OP keep
    `backward_last`. Measured on CPU ranks (llama, full, x4, no prefetch: the peak at `aten.cat` with the last layer
    gathered). Source: torch/distributed/fsdp/_runtime_utils.py (`_post_backward_hook`,
    `_register_post_backward_reshard_only_hook`)."""
    if plan.sharding == "fsdp_grad_op" or plan.fsdp_backward_prefetch == "pre" or not plan.uses_lora:
        return None
    return fsdp1_unit_bytes(inv, plan)[0] + reduce_scatter_gathered(inv, plan)


def first_cat_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> int:
    """Full fine-tuning, layer 0 at the end of its backward: its gradient pieces and their concatenation into the flat
    gradient, `2·G_l`, the layer still gathered, every later layer's shard made. 0 under LoRA and with one layer (the
    last layer's moment). Measured on CPU ranks (llama, full, FULL_SHARD x4, checkpointing: the peak at `aten.cat`
    in layer 0). Source: torch/distributed/fsdp/_runtime_utils.py (`_post_backward_hook`)."""
    if plan.uses_lora or num_layers < 2:
        return 0
    return unsharded_bytes(plan, reduce_scatter_bytes(inv, num_layers))


def loss_prefetch(inv: Inventory, plan: TrainingPlan) -> int:
    """FULL_SHARD at the loss's backward: BACKWARD_PRE has gathered the last layer (the root's pre-backward hook
    prefetches the next handle in backward order), BACKWARD_POST and no prefetch nothing yet (the last layer is
    gathered by its own pre-backward hook; the root's post-backward runs at the end of backward). Measured on CPU
    ranks (mistral, fsdp_backward_prefetch none and post: the peak at the loss). Source:
    torch/distributed/fsdp/_runtime_utils.py (`_pre_backward_hook`, `_get_handle_to_prefetch`)."""
    return fsdp1_unit_bytes(inv, plan)[1] if plan.fsdp_backward_prefetch == "pre" else 0


def reduce_scatter_gathered(inv: Inventory, plan: TrainingPlan) -> int:
    """FULL_SHARD, the last layer's reduce-scatter: `_post_backward_hook` reshards the layer first
    (`_post_backward_reshard`), then reduce-scatters its flat gradient (`_reduce_grad`); the layer before it is
    gathered by then under BACKWARD_PRE (prefetched in the last layer's pre-backward) and BACKWARD_POST (prefetched
    in `_post_backward_reshard`, right after the reshard), not without prefetch. Source:
    torch/distributed/fsdp/_runtime_utils.py."""
    return 0 if plan.fsdp_backward_prefetch == "none" else fsdp1_unit_bytes(inv, plan)[1]


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
    _exec_order_utils.py (`get_handle_to_backward_prefetch`). QLoRA without prefetch and under BACKWARD_PRE too
    (`qlora_late_gather`)."""
    late = plan.fsdp_backward_prefetch == "post" or qlora_late_gather(plan) or mp_lora_late_gather(plan)
    if not (plan.uses_lora and late and plan.sharding == "fsdp") or num_layers < 2:
        return 0
    root, layer = fsdp1_unit_bytes(inv, plan)
    return root + 2 * layer + (mp_shard_bytes(inv, plan) if mp_lora_late_gather(plan) else 0)


def mp_lora_late_gather(plan: TrainingPlan) -> bool:
    """LoRA under FSDP1's MixedPrecision (it runs under accelerate's autocast: `step.fsdp1_adapter_casts`), without
    or with BACKWARD_PRE: the layer before gathered late in a layer's backward, as for QLoRA (`qlora_late_gather`:
    the same hooks of a frozen unit). Measured on CPU ranks (mixtral, LoRA on the attention, BACKWARD_PRE x2: the peak
    with two gathered layers, the root and the gathering layer's low-precision shard, -10.35 % with one layer)."""
    return plan.uses_lora and plan.method != "qlora" and plan.fsdp_mixed_precision and plan.fsdp_version == 1


def mp_shard_bytes(inv: Inventory, plan: TrainingPlan) -> int:
    """The low-precision shard FSDP1's MixedPrecision gathers from, `⌈W_l/n⌉` in the param dtype: the fp32 shard's
    cast (`_use_low_precision_shard`: `_mp_shard`), alive through the all-gather. Source:
    torch/distributed/fsdp/_flat_param.py (`FlatParamHandle.pre_unshard`, `_use_low_precision_shard`,
    `_free_low_precision_sharded_param`)."""
    return -(-fsdp1_unit_bytes(inv, plan)[1] // plan.gpus)


def qlora_late_gather(plan: TrainingPlan) -> bool:
    """QLoRA under FULL_SHARD without or with BACKWARD_PRE: the layer before is gathered late in a layer's backward,
    as under BACKWARD_POST (`lora_late_prefetch_bytes`). BACKWARD_PRE: q_proj's lora_A unit's pre-backward prefetches
    it (its predecessor in the post-forward order), so the layer's attention input gradient and input norm's backward
    run with both layers gathered. No prefetch: the layer before unshards in its own pre-backward hook (registered on
    its output in its post-forward) before the layer's reshard-only hook (a multi-grad hook on that same tensor as
    the layer's input, registered later: a frozen unit has no post-backward AccumulateGrad hook) frees it. Measured
    on CPU ranks (mixtral, QLoRA on the attention, x2: BACKWARD_PRE with checkpointing, the peak at the norm's
    `aten::mul` with two gathered layers and the root, -4.87 % with one; no prefetch nor checkpointing, the peak in
    `_pre_backward_hook` → `_unshard` with the layer after still gathered, -9.30 % in this matrix's first run). LoRA's
    points, measured before, keep their terms: the same hooks, not re-measured. Source:
    torch/distributed/fsdp/_runtime_utils.py (`_pre_backward_hook` → `_prefetch_handle`, `_register_pre_backward_hooks`,
    `_register_post_backward_reshard_only_hook`)."""
    return plan.method == "qlora" and plan.fsdp_backward_prefetch in ("none", "pre")


def reduce_scatter_next_bytes(inv: Inventory, plan: TrainingPlan, num_layers: int) -> tuple[int, int]:
    """FULL_SHARD, the layer before the last at its reduce-scatter: `(R + prefetched, 2·G_l + 2·⌈G_l/n⌉)`. The layer
    is resharded first (`_post_backward_reshard`), the one before it gathered under BACKWARD_PRE (prefetched in the
    layer's pre-backward) and BACKWARD_POST (right after the reshard), not without prefetch; its flat gradient `G_l`
    beside the reduce-scatter's working copy of it (`reduce_scatter_bytes`), the new shard and the last layer's
    (`_saved_grad_shard`, kept to the end of backward); under MixedPrecision `fsdp1_mp.mp_reduce_bytes` + the last
    layer's shard. Under BACKWARD_PRE the concatenation before it holds more
    (`flat_grad_cat_bytes`, the layer itself still gathered). (0, 0) with fewer than 3 layers (that layer is layer 0,
    nothing to prefetch: the estimate's layer-0 moment), under SHARD_GRAD_OP and without trained layer weights.
    Measured on CPU ranks (llama, full, BACKWARD_POST: the peak at `_reduce_grad`). Source:
    torch/distributed/fsdp/_runtime_utils.py (`_post_backward_hook`, `_reduce_grad`)."""
    if num_layers < 3 or plan.uses_lora or plan.sharding != "fsdp":
        return (0, 0)
    root, _ = fsdp1_unit_bytes(inv, plan)
    layer = math.ceil(inv.grads.layers / num_layers)
    shard = math.ceil(layer / plan.gpus)
    reduce = reduce_scatter_bytes(inv, num_layers) + 2 * shard
    if plan.fsdp_mixed_precision:  # the reduce-scatter's own bytes `fsdp1_mp.mp_reduce_bytes`, its new shard in them
        reduce = mp_reduce_bytes(plan, layer) + shard
    return (root + reduce_scatter_gathered(inv, plan), reduce)


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
    return 2 * unsharded_bytes(plan, layer_grads) + -(-layer_grads // plan.gpus)
