"""shard_fsdp1: wrap a model in FSDP1 (`FullyShardedDataParallel`) on a CPU rank as accelerate wraps it.

accelerate's `Accelerator.prepare_model` (accelerate 1.15, accelerate/accelerator.py) builds
`FSDP(model, sharding_strategy, cpu_offload, auto_wrap_policy, mixed_precision, sync_module_states,
backward_prefetch, forward_prefetch, use_orig_params, param_init_fn, ignored_modules, limit_all_gathers,
device_id)` with `auto_wrap_policy` = `transformer_auto_wrap_policy` on the model's `_no_split_modules` classes
(`FullyShardedDataParallelPlugin.set_auto_wrap_policy`, accelerate/utils/dataclasses.py: TRANSFORMER_BASED_WRAP,
the first of `FSDP_AUTO_WRAP_POLICY`). The flags are those transformers' TrainingArguments passes for
`fsdp_config.version = 1` (transformers/training_args.py `_process_fsdp_args`): use_orig_params true,
sync_module_states true, forward_prefetch false, limit_all_gathers accelerate's default True; backward_prefetch
the plan's `fsdp_backward_prefetch`: TrainingArguments passes `fsdp_config.get("backward_prefetch",
"NOprefetch")` (transformers 5.24), which accelerate 1.15's plugin turns into None (no prefetch); BACKWARD_PRE
is torch's own FSDP default and accelerate's `accelerate config` answer. sync_module_states is off here: torch refuses it for CPU parameters; its broadcast of rank
0's states runs at wrap time, before the tracker starts, so it changes no tracked moment. No CPU offload. With
plan.fsdp_mixed_precision the model is built in fp32 (as for FSDP2's policy) and wrapped with the
`MixedPrecision` accelerate builds for mixed_precision bf16/fp16 (`fsdp1_mixed_precision`); without it the model
is built in the plan dtype and wrapped with none. Under LoRA transformers' Trainer swaps
the policy for PEFT's `fsdp_auto_wrap_policy` (transformers/distributed/fsdp.py `update_fsdp_plugin_peft`,
peft/utils/other.py): the decoder layers and every leaf module with a trainable weight (each lora_A / lora_B)
are units, so a FlatParameter never mixes the frozen 16-bit weights with the fp32 adapters (FSDP1 flattens one
dtype per unit: torch/distributed/fsdp/_flat_param.py `_validate_tensors_to_flatten`).
"""

from __future__ import annotations

from typing import Any

from app.core.plan import TrainingPlan


def shard_fsdp1(model: Any, plan: TrainingPlan, layer_classes: set[type]) -> Any:
    """FSDP1 around the model, one FSDP unit per decoder layer (`layer_classes`) and the root for the rest
    (embeddings, final norm, lm_head); FULL_SHARD for fsdp, SHARD_GRAD_OP for fsdp_grad_op."""
    import functools

    import torch
    from torch.distributed.fsdp import BackwardPrefetch, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy: Any = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes)
    if plan.uses_lora:  # transformers' update_fsdp_plugin_peft: PEFT's policy, every trainable leaf its own unit
        from peft.utils.other import fsdp_auto_wrap_policy

        policy = fsdp_auto_wrap_policy(model)  # type: ignore[no-untyped-call]
    # accelerate 1.15 FullyShardedDataParallelPlugin.__post_init__: "NOprefetch" becomes None
    prefetch = {"none": None, "pre": BackwardPrefetch.BACKWARD_PRE, "post": BackwardPrefetch.BACKWARD_POST}
    strategy = ShardingStrategy.FULL_SHARD if plan.sharding == "fsdp" else ShardingStrategy.SHARD_GRAD_OP
    return FSDP(
        model,
        sharding_strategy=strategy,
        auto_wrap_policy=policy,
        # torch refuses sync_module_states on CPU parameters (_init_utils._check_module_states_for_sync_module_states)
        sync_module_states=False,
        backward_prefetch=prefetch[plan.fsdp_backward_prefetch],
        forward_prefetch=False,
        use_orig_params=True,
        limit_all_gathers=True,
        mixed_precision=fsdp1_mixed_precision(plan),
        device_id=torch.device("cpu"),
    )


def fsdp1_mixed_precision(plan: TrainingPlan) -> Any:
    """The `mixed_precision` accelerate passes to FSDP1 with plan.fsdp_mixed_precision: `MixedPrecision(param_dtype,
    reduce_dtype, buffer_dtype)` all in the plan dtype (buffer_autocast False), reduce_dtype fp32 when the plan says so
    (a `mixed_precision_policy` dict of the three, as the plugin takes it); `cast_forward_inputs` left False,
    `cast_root_forward_inputs` True, torch's defaults. None without it (FSDP1's own default: no mixed precision).
    Source: accelerate 1.16 utils/dataclasses.py (`FullyShardedDataParallelPlugin.set_mixed_precision`: fsdp_version
    1 adds `buffer_dtype`), accelerator.py (`Accelerator.prepare_model`: `"mixed_precision":
    fsdp_plugin.mixed_precision_policy`; its upcast of a 16-bit trainable FlatParameter to fp32 is a no-op here, the
    model being built in fp32)."""
    import torch
    from torch.distributed.fsdp import MixedPrecision

    from app.calibration.build import torch_dtype

    if not plan.fsdp_mixed_precision:
        return None
    dtype = torch_dtype(plan)
    reduce = torch.float32 if plan.fsdp_reduce_dtype == "fp32" else dtype
    return MixedPrecision(param_dtype=dtype, reduce_dtype=reduce, buffer_dtype=dtype)
