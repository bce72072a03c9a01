"""FSDP1's `MixedPrecision` (plan.fsdp_version 1 with fsdp_mixed_precision): where its bytes differ from FSDP1's own.

The harness wraps FSDP1 as accelerate does with mixed_precision bf16/fp16 (app/calibration/fsdp1.py
`fsdp1_mixed_precision`: `MixedPrecision(param_dtype=c, reduce_dtype=c or fp32, buffer_dtype=c)` over a model built in
fp32). Each FlatParameter keeps its fp32 shard (`_local_shard`: the weights, their gradients and optimizer states stay
fp32, as under FSDP2's policy); notation as app/core/fsdp1.py, `c` the param dtype's bytes, `r` the reduce dtype's.
Every function here returns FSDP1's own bytes unchanged without the policy, so no other plan's estimate moves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from app.core.plan import TrainingPlan
from app.core.sharding import in_param_dtype, in_reduce_dtype
from app.core.tensors import Inventory

if TYPE_CHECKING:  # estimate imports this module
    from app.core.estimate import Moment, StepTerms


class MpReduce(NamedTuple):
    """A decoder layer's reduce-scatter under FSDP1's MixedPrecision (`mp_layer_reduce`); zeros: none."""

    reduce: int  # `mp_reduce_bytes` of one layer's gradient
    gathered_last: int  # gathered while the last layer reduce-scatters
    gathered_first: int  # gathered while layer 0 reduce-scatters


def unsharded_bytes(plan: TrainingPlan, nbytes: int) -> int:
    """A gathered unit and its unsharded gradient in the param dtype, `nbytes·c/4` of the fp32 shards: the all-gather
    writes into `_full_param_padded`, allocated in `_fwd_bwd_param_dtype`, the original parameters are views into it,
    so autograd makes their gradient pieces (and the view backward's flat gradient) in that dtype too. Source:
    torch/distributed/fsdp/_flat_param.py (`FlatParamHandle.shard`: `unsharded_param_dtype = self._fwd_bwd_param_dtype
    if self._uses_param_mixed_precision`, `_use_unsharded_views`)."""
    return in_param_dtype(plan, nbytes) if plan.fsdp_version == 1 else nbytes


def mp_reduce_bytes(plan: TrainingPlan, grads: int) -> int:
    """One unit's reduce-scatter under MixedPrecision, `grads` its unsharded gradient's fp32 bytes `G`: the flat
    gradient autograd made in the param dtype `G·c/4` (kept by the hook's `autograd_computed_grad`), its cast to the
    reduce dtype when that differs `G·r/4` (`flat_param.grad.to(handle._reduce_dtype)`), gloo's working copy of the
    reduce-scatter input `G·r/4` (FSDP1's measured `2·G_l` without the policy), the new shard `⌈G/n⌉·r/4` and, when
    the reduce dtype is not fp32, that shard's cast to the fp32 shard's dtype `⌈G/n⌉` beside it
    (`_cast_grad_to_param_dtype`, kept as `_saved_grad_shard`). The working copy is counted alive at the cast: gloo's
    worker drops its buffer with the finished work, sometimes after the cast (CPU ranks read the same point `G·c/4`
    apart from run to run). 0 without the policy. Source: torch/distributed/fsdp/_runtime_utils.py
    (`_post_backward_hook`, `_reduce_grad`, `_get_reduce_scatter_tensors`, `_accumulate_sharded_grad`,
    `_cast_grad_to_param_dtype`)."""
    if not (plan.fsdp_mixed_precision and plan.fsdp_version == 1):
        return 0
    fp32_reduce = plan.fsdp_reduce_dtype == "fp32"
    flat, reduced, shard = in_param_dtype(plan, grads), in_reduce_dtype(plan, grads), -(-grads // plan.gpus)
    cast, fp32_shard = (reduced, 0) if fp32_reduce else (0, shard)  # the flat gradient's cast, or the new shard's
    return flat + cast + reduced + in_reduce_dtype(plan, shard) + fp32_shard


def mp_layer_reduce(inv: Inventory, plan: TrainingPlan, num_layers: int, gathered: tuple[int, int]) -> MpReduce:
    """Full fine-tuning under MixedPrecision: a decoder layer's reduce-scatter (`mp_reduce_bytes` of `G_l`) and what
    is gathered while the last layer's and layer 0's run, `gathered` (FSDP1's own `R + prefetched`, `R`): the layer
    itself is resharded first (`_post_backward_reshard`, under SHARD_GRAD_OP too while gradients sync). Under LoRA
    every adapter is its own unit with a tiny gradient: none. Source: torch/distributed/fsdp/_runtime_utils.py
    (`_post_backward_hook`, `_should_free_in_backward`)."""
    if plan.uses_lora or not (plan.fsdp_mixed_precision and plan.fsdp_version == 1):
        return MpReduce(0, 0, 0)
    return MpReduce(mp_reduce_bytes(plan, -(-inv.grads.layers // max(1, num_layers))), *gathered)


def mp_reduce_moments(s: StepTerms, held: Moment) -> list[Moment]:
    """FSDP1 MixedPrecision, full fine-tuning: the last layer's reduce-scatter (its saved tensors freed, lm_head's
    gradient waiting) and layer 0's (what the step keeps to its end alive, every other layer's fp32 gradient shard
    made), each beside its `mp_layer_reduce` bytes; none otherwise. Measured on CPU ranks (llama, full, FULL_SHARD
    x2: the peak at layer 0's `_cast_grad_to_param_dtype`, gloo's working copy alive)."""
    reduce, last, first = s.sharded.mp_reduce
    if not reduce:
        return []
    return [
        {
            **held,
            "activation_bytes": s.activations - s.head_saved - s.layer_saved,
            "gradient_bytes": s.accumulated + s.head_grads,
            "allgather_buffer_bytes": last + s.zero3_gathered,
            "reduce_scatter_bytes": reduce,
        },
        {
            **held,
            "activation_bytes": s.activations_at_end,
            "gradient_bytes": s.accumulated + s.resident.grads - s.late_grads if s.accumulated else s.late_grads,
            "allgather_buffer_bytes": first + s.zero3_gathered,
            "reduce_scatter_bytes": reduce,
        },
    ]
