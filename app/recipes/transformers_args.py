"""transformers TrainingArguments (its to_dict / to_json_string, or a YAML of its fields) as plan fields."""

from __future__ import annotations

from typing import Any

from app.recipes.common import (
    FSDP_DEFAULT_VERSION,
    deepspeed,
    dtype_name,
    first_of,
    fsdp_backward_prefetch,
    fsdp_key,
    fsdp_options,
    fsdp_sharding_strategy,
    fsdp_version,
    fsdp_version_of,
    optimizer,
)
from app.recipes.rules import (
    Approx,
    Ctx,
    Doc,
    Maps,
    Nested,
    NotModelledValue,
    Outcome,
    Rule,
    Unmodelled,
    as_bool,
    as_int,
    flag,
    is_set,
    names,
    table,
    to,
    truthy_flag,
)

# Source: huggingface/transformers src/transformers/training_args.py (v5.24: TrainingArguments fields, their
# defaults and OptimizerNames; `gradient_checkpointing*` are deprecated aliases of `activation_checkpointing*`)
# and src/transformers/modeling_utils.py `_activation_checkpointing_enable` (kwargs default {"use_reentrant": False}).

GRAD_ACCUMULATION = to("grad_accum_steps", as_int)
# A model config attribute a recipe overrides (axolotl overrides_of_model_config, TRL model_init_kwargs, which
# from_pretrained hands to the config): output_router_logits makes an MoE CausalLM add load_balancing_loss_func
# (transformers 5.24 modeling_mixtral.py MixtralForCausalLM.forward), kept router logits the plan's router_aux_loss.
ROUTER_LOGITS = Maps(("router_aux_loss",), lambda v, _ctx: {} if v is None else {"router_aux_loss": as_bool(v)})


def checkpointing_on(root: Doc) -> bool:
    return truthy_flag(first_of(root, "activation_checkpointing", "gradient_checkpointing"))


def reentrant(value: Any, ctx: Ctx) -> Outcome:
    """use_reentrant=True is torch's reentrant checkpoint; it means something only while checkpointing is on."""
    return {"reentrant": True} if as_bool(value) and checkpointing_on(ctx.root) else {}


def every_n_layers(value: Any, ctx: Ctx) -> Outcome:
    """Trainer pops every_n_layers from the kwargs (transformers 5): checkpoint only every n-th layer."""
    n = as_int(value)
    return {"checkpoint_every": n} if n > 1 and checkpointing_on(ctx.root) else {}


def offloaded(value: Any, ctx: Ctx) -> Outcome:
    """offload=True holds the checkpointed layer inputs in pinned host memory, while checkpointing is on."""
    return {"checkpoint_offload": True} if as_bool(value) and checkpointing_on(ctx.root) else {}


# gradient_checkpointing_kwargs / activation_checkpointing_kwargs; any other key goes to torch.utils.checkpoint
CHECKPOINT_KWARGS: dict[str, Rule] = {
    "use_reentrant": Maps(("reentrant",), reentrant),
    "every_n_layers": Maps(("checkpoint_every",), every_n_layers),
    # the Trainer pops it and passes activation_checkpointing_enable(offload=...): save_on_cpu around each checkpoint
    "offload": Maps(("checkpoint_offload",), offloaded),
}


def _weights_dtype(root: Doc) -> str | None:
    """The dtype the model is loaded in, where the file says (TRL ModelConfig dtype, model_init_kwargs)."""
    value = first_of(root, "dtype", "torch_dtype")
    init = root.get("model_init_kwargs")
    if value is None and isinstance(init, dict):
        value = first_of(init, "dtype", "torch_dtype")
    return None if value is None else dtype_name(value)


def weights_dtype(value: Any, ctx: Ctx) -> Outcome:
    """The dtype the model is loaded in (TRL ModelConfig `dtype`, from_pretrained kwargs); `auto` keeps the checkpoint's."""
    dtype = None if value is None else dtype_name(value)
    autocasting = as_bool(ctx.root.get("bf16")) or as_bool(ctx.root.get("fp16"))
    if dtype is None or (dtype == "fp32" and autocasting):
        return {}  # fp32 weights under autocast: reported by the bf16 / fp16 flag
    return {"dtype": dtype}


def _quantized(root: Doc) -> bool:
    """The same file loads the base quantized (TRL ModelConfig load_in_4bit/8bit, model_init_kwargs'
    quantization_config)."""
    init = root.get("model_init_kwargs")
    nested = isinstance(init, dict) and init.get("quantization_config") is not None
    return nested or truthy_flag(root.get("load_in_4bit")) or truthy_flag(root.get("load_in_8bit"))


def autocast(dtype: str) -> Maps:
    """bf16 / fp16 mixed precision: the plan dtype; over weights loaded in fp32 (dtype float32) the plan's autocast
    (accelerate wraps the forward in torch.autocast: fp32 weights, 16-bit matmuls); under FSDP the policy accelerate
    builds too (`fsdp_mixed_precision`, common.py's comment): FSDP1 (fsdp_config version 1) with autocast, FSDP2 (the
    version transformers 5 defaults to) without, accelerate 1.16's FSDP2 path adding no autocast region."""

    def convert(value: Any, ctx: Ctx) -> Outcome:
        if not as_bool(value):
            return {}
        if _weights_dtype(ctx.root) == "fp32":
            if _quantized(ctx.root):
                raise NotModelledValue(
                    f"{dtype} autocast over a quantized base (QLoRA under bf16/fp16 autocast): gpuplan models "
                    "autocast for lora and full fine-tuning only"
                )
            if _fsdp_on(ctx):
                fsdp1 = (fsdp_version_of(ctx.root) or FSDP_DEFAULT_VERSION) == 1
                return {"dtype": dtype, "fsdp_mixed_precision": True} | ({"autocast": True} if fsdp1 else {})
            return {"dtype": dtype, "autocast": True}
        return {"dtype": dtype}

    return Maps(("dtype", "autocast", "fsdp_mixed_precision"), convert)


def liger(value: Any, ctx: Ctx) -> Outcome:
    """use_liger_kernel: transformers applies Liger's kernels to the model (liger_kernel_config, each on by default):
    the fused linear cross-entropy is planned, its RMSNorm / SwiGLU / RoPE kernels are not (they keep less)."""
    if not as_bool(value):
        return {}
    config = ctx.root.get("liger_kernel_config")
    fused = not isinstance(config, dict) or as_bool(config.get("fused_linear_cross_entropy", True))
    return Approx(
        {"fused_cross_entropy": True} if fused else {},
        "Liger's RMSNorm, SwiGLU and RoPE kernels (applied with it) keep less than gpuplan counts; its fused "
        "linear cross-entropy is planned (first principles)",
    )


def _adafactor_flag(value: Any, _ctx: Ctx) -> Outcome:
    return {"optimizer": "adafactor"} if as_bool(value) else {}


def _fsdp_on(ctx: Ctx) -> bool:
    return truthy_flag(ctx.root.get("fsdp"))


def _true_sets(target: str, value: bool) -> Maps:
    return Maps((target,), lambda v, _ctx: {target: value} if as_bool(v) else {})


def _reshard(value: Any, _ctx: Ctx) -> Outcome:
    if value is None or as_bool(value):
        return {}
    return {"sharding": "fsdp_grad_op"}  # FSDP2 reshard_after_forward=False, as gpuplan's fsdp_grad_op models it


# fsdp_config keys, with or without the `fsdp_` prefix (transformers, accelerate, axolotl)
FSDP_CONFIG: dict[str, Rule] = {
    "offload_params": _true_sets("offload", True),
    "sharding_strategy": Maps(("sharding",), fsdp_sharding_strategy),
    "reshard_after_forward": Maps(("sharding",), _reshard),
    "activation_checkpointing": _true_sets("gradient_checkpointing", True),
    "version": Maps(("fsdp_version",), fsdp_version),  # `version`, or accelerate's / axolotl's `fsdp_version`
    "backward_prefetch": Maps(("fsdp_backward_prefetch",), fsdp_backward_prefetch),  # FSDP1 only
}

MAPS: dict[str, Rule] = {
    "per_device_train_batch_size": to("batch_size", as_int),
    "gradient_accumulation_steps": GRAD_ACCUMULATION,
    "per_gpu_train_batch_size": to("batch_size", as_int),  # deprecated name (transformers 4)
    "activation_checkpointing": flag("gradient_checkpointing"),
    "gradient_checkpointing": flag("gradient_checkpointing"),
    "activation_checkpointing_kwargs": Nested(CHECKPOINT_KWARGS),
    "gradient_checkpointing_kwargs": Nested(CHECKPOINT_KWARGS),
    "bf16": autocast("bf16"),
    "fp16": autocast("fp16"),
    # from_pretrained's dtype where the file also carries the script's model arguments (HfArgumentParser scripts'
    # ModelArguments torch_dtype); transformers 4 loads fp32 without one (read.TF4_DEFAULTS)
    "torch_dtype": Maps(("dtype",), weights_dtype),
    "dtype": Maps(("dtype",), weights_dtype),
    "optim": Maps(("optimizer",), optimizer),
    "use_liger_kernel": Maps(("fused_cross_entropy",), liger),
    "adafactor": Maps(("optimizer",), _adafactor_flag),  # transformers 4: deprecated flag for optim="adafactor"
    "deepspeed": Maps(("sharding", "offload", "zero_buckets"), deepspeed),
    "fsdp": Maps(("sharding", "offload"), fsdp_options),
    "fsdp_config": Nested(FSDP_CONFIG, key=fsdp_key, active=_fsdp_on),
}
NOT_MODELLED: dict[str, Unmodelled] = {
    "torch_compile": Unmodelled("torch.compile fuses kernels and changes which activations autograd keeps"),
    "label_smoothing_factor": Unmodelled(
        "label smoothing computes a second log-softmax over the logits", lambda v, _c: bool(v) and v != 0
    ),
    "auto_find_batch_size": Unmodelled("the batch size is found at run time, halving it after each OOM"),
    "accelerator_config": Unmodelled(
        "gradient_accumulation_kwargs.sync_each_batch: every micro-batch reduces its gradients; gpuplan models the "
        "Trainer's default, no sync before an accumulation window's last micro-batch (under FSDP every gradient "
        "unsharded through the window: an over-estimate here)",
        lambda value, _ctx: syncs_each_batch(value),
    ),
    "optim_target_modules": Unmodelled("GaLore/APOLLO-style low-rank projection of these modules' gradients", is_set),
    "parallelism_config": Unmodelled("tensor / context / sequence parallelism", is_set),
    "use_cpu": Unmodelled("training on the CPU: gpuplan plans GPU memory"),
    "no_cuda": Unmodelled("training on the CPU: gpuplan plans GPU memory"),
}
# Fields with no effect on a training step's memory: output, logging, evaluation, saving, hub, data loading, seeds.
SILENT = names(
    """
    output_dir overwrite_output_dir do_train do_eval do_predict eval_strategy evaluation_strategy prediction_loss_only
    per_device_eval_batch_size per_gpu_eval_batch_size eval_accumulation_steps eval_delay torch_empty_cache_steps
    learning_rate weight_decay adam_beta1 adam_beta2 adam_epsilon max_grad_norm num_train_epochs max_steps
    lr_scheduler_type lr_scheduler_kwargs warmup_ratio warmup_steps log_level log_level_replica log_on_each_node
    logging_dir logging_strategy logging_first_step logging_steps logging_nan_inf_filter save_strategy save_steps
    save_total_limit save_safetensors save_on_each_node save_only_model restore_callback_states_from_checkpoint
    use_mps_device seed data_seed jit_mode_eval use_ipex bf16_full_eval fp16_full_eval fp16_opt_level
    half_precision_backend fp16_backend tf32 local_rank ddp_backend tpu_num_cores tpu_metrics_debug debug
    dataloader_drop_last eval_steps dataloader_num_workers dataloader_prefetch_factor dataloader_persistent_workers
    dataloader_pin_memory dataloader_multiprocessing_context dataloader_in_order past_index run_name disable_tqdm
    remove_unused_columns label_names load_best_model_at_end metric_for_best_model greater_is_better
    ignore_data_skip fsdp_min_num_params fsdp_transformer_layer_cls_to_wrap
    length_column_name report_to project trackio_space_id trackio_bucket_id trackio_static_space_id
    ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_static_graph ddp_timeout
    skip_memory_metrics use_legacy_prediction_loop push_to_hub resume_from_checkpoint hub_model_id hub_strategy
    hub_token hub_private_repo hub_always_push hub_revision push_to_hub_model_id push_to_hub_organization
    push_to_hub_token mp_parameters full_determinism torchdynamo ray_scope torch_compile_backend torch_compile_mode
    dispatch_batches split_batches include_tokens_per_second include_num_input_tokens_seen include_inputs_for_metrics
    include_for_metrics eval_do_concat_batches neftune_noise_alpha optim_args batch_eval_metrics eval_on_start
    eval_use_gather_object average_tokens_across_devices liger_kernel_config use_cache train_sampling_strategy
    enable_jit_checkpoint group_by_length sharded_ddp xpu_backend _n_gpu
    """
)
DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "gradient_checkpointing": False,
    "optim": "adamw_torch_fused",
}
ALIASES = {
    "gradient_checkpointing": ("activation_checkpointing",),
    "gradient_checkpointing_kwargs": ("activation_checkpointing_kwargs",),
    "per_device_train_batch_size": ("per_gpu_train_batch_size",),
    "optim": ("adafactor",),
    "torch_dtype": ("dtype",),
}
FIELDS = table(MAPS, NOT_MODELLED, SILENT)
# keys a TrainingArguments file has and the other formats' files do not
DISTINCTIVE = names(
    """
    per_device_train_batch_size per_device_eval_batch_size optim lr_scheduler_type num_train_epochs
    logging_strategy overwrite_output_dir activation_checkpointing _n_gpu eval_accumulation_steps log_level
    push_to_hub do_train do_eval eval_strategy evaluation_strategy dataloader_num_workers report_to
    gradient_checkpointing_kwargs save_strategy half_precision_backend ddp_timeout
    """
)


def syncs_each_batch(value: Any) -> bool:
    """`accelerator_config` turns on accelerate's `sync_each_batch` (`{"gradient_accumulation_kwargs":
    {"sync_each_batch": true}}`). Source: transformers 5.24 trainer_pt_utils.py `AcceleratorConfig`, accelerate 1.15
    `GradientAccumulationPlugin.sync_each_batch`."""
    kwargs = value.get("gradient_accumulation_kwargs") if isinstance(value, dict) else None
    return isinstance(kwargs, dict) and kwargs.get("sync_each_batch") is True
