"""axolotl training YAML (`axolotl train x.yml`) as plan fields."""

from __future__ import annotations

from typing import Any

from app.core.plan import ALL_LINEAR
from app.recipes import bnb
from app.recipes import transformers_args as hf
from app.recipes.common import (
    attention,
    deepspeed,
    fsdp_key,
    fsdp_options,
    fsdp_version,
    fsdp_version_of,
    lora_targets,
    optimizer,
)
from app.recipes.rules import (
    MODEL,
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
    as_float,
    as_int,
    gt_one,
    is_set,
    names,
    table,
    truthy_flag,
)

# Sources: axolotl-ai-cloud/axolotl src/axolotl/utils/schemas/{config,peft,training,model,fsdp}.py (the config
# schema its docs/config reference is generated from: fields and defaults), src/axolotl/utils/config/__init__.py
# normalize_config (torch_dtype from bf16 / fp16 / load_in_8bit; use_reentrant=True when checkpointing without
# kwargs), src/axolotl/loaders/model.py (the BitsAndBytesConfig of qlora: nf4, double quant, + bnb_config_kwargs).


def _adapter(value: Any, _ctx: Ctx) -> Outcome:
    if value is None:
        return {"method": "full"}  # no adapter: every weight is trained
    if value in ("lora", "qlora"):
        return {"method": value}
    raise NotModelledValue(f"adapter {value}: gpuplan plans lora and qlora adapters")


def _lora_on(root: Doc) -> bool:
    return root.get("adapter") in ("lora", "qlora")


def _lora(target: str, convert: Any) -> Maps:
    """A LoRA field: it shapes the adapter only when `adapter` is lora or qlora."""
    return Maps((target,), lambda v, ctx: {target: convert(v)} if _lora_on(ctx.root) and v is not None else {})


def _target_linear(value: Any, ctx: Ctx) -> Outcome:
    return {"targets": ALL_LINEAR} if as_bool(value) and _lora_on(ctx.root) else {}


def _target_modules(value: Any, ctx: Ctx) -> Outcome:
    if value is None or not _lora_on(ctx.root):
        return {}
    if as_bool(ctx.root.get("lora_target_linear")):
        return {"targets": ALL_LINEAR}  # axolotl adds every linear layer to the listed ones
    return {"targets": lora_targets(value)}


def _kwargs(ctx: Ctx) -> dict[str, Any]:
    kwargs = ctx.root.get("bnb_config_kwargs")
    return kwargs if isinstance(kwargs, dict) else {}


def _load_4bit(value: Any, ctx: Ctx) -> Outcome:
    if not as_bool(value):
        return {}
    kwargs = _kwargs(ctx)  # loaders/model.py: nf4 + double quant, updated by bnb_config_kwargs
    quant = bnb.quant_type(kwargs.get("bnb_4bit_quant_type", "nf4"))
    return {"quant": quant, "double_quant": as_bool(kwargs.get("bnb_4bit_use_double_quant", True))}


def _load_8bit(value: Any, ctx: Ctx) -> Outcome:
    return {"quant": "int8"} if as_bool(value) and not as_bool(ctx.root.get("load_in_4bit")) else {}


def _torch_dtype(doc: Doc) -> str:
    """normalize_config: bf16 (or bf16: auto on a GPU that has it) > fp16 (or load_in_8bit) > fp32."""
    bf16, fp16 = doc.get("bf16", "auto"), truthy_flag(doc.get("fp16"))
    if bf16 == "auto" and fp16:
        bf16 = False
    if bf16 in (True, "auto", "full") or truthy_flag(doc.get("bfloat16")):
        return "bf16"
    if fp16 or truthy_flag(doc.get("float16")) or truthy_flag(doc.get("load_in_8bit")):
        return "fp16"
    return "fp32"


def _dtype(row: str) -> Maps:
    """One of the precision flags; each checks its own value, all give the one dtype normalize_config derives."""

    def convert(value: Any, ctx: Ctx) -> Outcome:
        if (row == "bf16" and value not in ("auto", "full", None)) or row != "bf16":
            as_bool(value)
        dtype = _torch_dtype(ctx.root)
        if row == "bf16" and value == "auto" and dtype == "bf16":
            return Approx({"dtype": dtype}, "bf16: auto is bf16 on GPUs that have it (Ampere and newer), else fp16")
        return {"dtype": dtype}

    return Maps(("dtype",), convert)


def _fsdp2_mixed_precision(value: Any, ctx: Ctx) -> Outcome:
    """fsdp_version 2 with bf16/fp16 and no adapter (full fine-tuning): accelerate's fsdp2_prepare_model upcasts the
    trainable parameters (all of them) to fp32 and passes a 16-bit MixedPrecisionPolicy to fully_shard. With an
    adapter the frozen base stays in its loaded dtype (not fsdp_mixed_precision's fp32 weights): left unmapped."""
    sharded = ctx.root.get("fsdp") not in (None, False, "", []) or isinstance(ctx.root.get("fsdp_config"), dict)
    full = ctx.root.get("adapter") in (None, "")
    if fsdp_version_of(ctx.root) != 2 or not sharded or not full or _torch_dtype(ctx.root) == "fp32":
        return {}
    return {"fsdp_mixed_precision": True}  # no autocast under FSDP2 (accelerate 1.16: common.py's comment)


def _fsdp_version_and_precision(value: Any, ctx: Ctx) -> Outcome:
    """axolotl's `fsdp_version`: FSDP1 or FSDP2 (`fsdp_version`) and, for FSDP2 full fine-tuning in 16 bits, its
    MixedPrecisionPolicy (`_fsdp2_mixed_precision`)."""
    version, mixed = fsdp_version(value, ctx), _fsdp2_mixed_precision(value, ctx)
    values = {**(version.values if isinstance(version, Approx) else version)}
    values.update(mixed.values if isinstance(mixed, Approx) else mixed)
    return Approx(values, mixed.why) if isinstance(mixed, Approx) else values


def _checkpointing(value: Any, _ctx: Ctx) -> Outcome:
    """`offload`: axolotl's CPU_Offloaded_Gradient_Checkpointer (Unsloth's) moves each checkpointed layer input to
    host memory, as checkpoint_offload plans it; `offload_disk` (its Disco checkpointer) to disk, off the GPU
    either way (src/axolotl/monkeypatch/gradient_checkpointing/)."""
    if value == "offload":
        return {"gradient_checkpointing": True, "checkpoint_offload": True}
    if value == "offload_disk":
        return Approx(
            {"gradient_checkpointing": True, "checkpoint_offload": True},
            "offload_disk: the checkpointed layer inputs go to disk, not host RAM (off the GPU either way)",
        )
    return {"gradient_checkpointing": as_bool(value)}


def _liger_fused(value: Any, ctx: Ctx) -> Outcome:
    """The Liger plugin's fused linear cross-entropy (axolotl.integrations.liger); without the plugin listed in
    `plugins` the flag does nothing."""
    plugins = ctx.root.get("plugins")
    listed = isinstance(plugins, list) and any("liger" in str(p).lower() for p in plugins)
    return {"fused_cross_entropy": True} if as_bool(value) and listed else {}


def _attention_flag(attn: str) -> Maps:
    return Maps(("attn",), lambda v, _ctx: {"attn": attn} if as_bool(v) else {})


def _unmodelled(*names: str, why: str, matters: Any = None) -> dict[str, Unmodelled]:
    rule = Unmodelled(why) if matters is None else Unmodelled(why, matters)
    return dict.fromkeys(names, rule)


_MODEL_CONFIG: dict[str, Rule] = {"output_router_logits": hf.ROUTER_LOGITS}
MAPS: dict[str, Rule] = {
    "base_model": MODEL,
    "adapter": Maps(("method",), _adapter),
    "load_in_4bit": Maps(("quant", "double_quant"), _load_4bit),
    "load_in_8bit": Maps(("quant",), _load_8bit),
    "bnb_config_kwargs": Nested(bnb.BNB_FIELDS),
    "lora_r": _lora("rank", as_int),
    "lora_alpha": _lora("alpha", as_float),
    "lora_dropout": _lora("dropout", as_float),
    "lora_target_linear": Maps(("targets",), _target_linear),
    "lora_target_modules": Maps(("targets",), _target_modules),
    "peft_use_dora": _lora("dora", as_bool),
    "peft_use_rslora": _lora("rslora", as_bool),
    "sequence_len": Maps(("seq_len",), lambda v, _ctx: {"seq_len": as_int(v)}),
    "micro_batch_size": Maps(("batch_size",), lambda v, _ctx: {} if v is None else {"batch_size": as_int(v)}),
    "gradient_checkpointing": Maps(("gradient_checkpointing", "checkpoint_offload"), _checkpointing),
    "liger_fused_linear_cross_entropy": Maps(("fused_cross_entropy",), _liger_fused),
    # multipack fills each row to sequence_len with several samples, told apart by position_ids
    "sample_packing": Maps(("packing",), lambda v, _ctx: {"packing": True} if as_bool(v) else {}),
    "gradient_checkpointing_kwargs": Nested(hf.CHECKPOINT_KWARGS),
    # set on the loaded config attribute by attribute (axolotl loaders/model.py load_model_config; `model_config` is
    # its alias, utils/schemas/config.py RemappedParameters); output_router_logits turns the MoE aux loss on
    **dict.fromkeys(("overrides_of_model_config", "model_config"), Nested(_MODEL_CONFIG, unlisted_silent=False)),
    "gradient_accumulation_steps": hf.GRAD_ACCUMULATION,
    "optimizer": Maps(("optimizer",), optimizer),
    **{row: _dtype(row) for row in ("bf16", "fp16", "bfloat16", "float16", "float32")},
    "attn_implementation": Maps(("attn",), attention),
    "flash_attention": _attention_flag("flash_attention_2"),
    "sdp_attention": _attention_flag("sdpa"),
    "eager_attention": _attention_flag("eager"),
    "deepspeed": Maps(("sharding", "offload", "zero_buckets"), deepspeed),
    "fsdp": Maps(("sharding", "offload"), fsdp_options),
    "fsdp_config": Nested(
        {**hf.FSDP_CONFIG, "version": Maps(("fsdp_version", "fsdp_mixed_precision"), _fsdp_version_and_precision)},
        key=fsdp_key,
        implies={"sharding": "fsdp"},
    ),
    # axolotl schemas/fsdp.py: int | None, default None
    "fsdp_version": Maps(("fsdp_version", "fsdp_mixed_precision"), _fsdp_version_and_precision),
}
NOT_MODELLED: dict[str, Unmodelled] = {
    **_unmodelled(
        "liger_rope",
        "liger_rms_norm",
        "liger_glu_activation",
        "liger_layer_norm",
        "liger_cross_entropy",
        why="Liger's fused kernels keep less than gpuplan counts",
    ),
    **_unmodelled("cut_cross_entropy", "chunked_cross_entropy", why="the loss never holds the full logits"),
    **_unmodelled(
        "plugins", why="plugins change the model or the loss (Liger, Cut Cross-Entropy, ...)", matters=is_set
    ),
    **_unmodelled(
        "lora_mlp_kernel",
        "lora_qkv_kernel",
        "lora_o_kernel",
        "lora_embedding_kernel",
        why="axolotl's fused LoRA autograd kernels save fewer activations",
    ),
    **_unmodelled("activation_offloading", "layer_offloading", why="activations or layers offloaded to the CPU"),
    "selective_checkpointing": Unmodelled("attention outputs are saved inside checkpointed layers"),
    **_unmodelled("xformers_attention", "flex_attention", "sage_attention", why="attention kernel not modelled"),
    **_unmodelled(
        "flash_attn_cross_entropy",
        "flash_attn_rms_norm",
        "flash_attn_fuse_qkv",
        "flash_attn_fuse_mlp",
        why="flash-attn fused kernels",
    ),
    **_unmodelled(
        "unsloth_cross_entropy_loss",
        "unsloth_lora_mlp",
        "unsloth_lora_qkv",
        "unsloth_lora_o",
        "unsloth_rms_norm",
        "unsloth_rope",
        why="Unsloth kernels",
    ),
    "unfrozen_parameters": Unmodelled("only these parameters are trained", is_set),
    "lora_modules_to_save": Unmodelled("full trainable copies of these modules (weights, gradients, states)", is_set),
    "lora_target_parameters": Unmodelled("adapts parameters (MoE experts) directly", is_set),
    "peft_layers_to_transform": Unmodelled("only these layers are adapted; gpuplan adapts every layer", is_set),
    "lora_rank_pattern": Unmodelled("per-module ranks; gpuplan uses lora_r everywhere", is_set),
    "peft_layer_replication": Unmodelled("replicated layers (each with its own adapter)", is_set),
    "peft_trainable_token_indices": Unmodelled("trainable rows of the embedding", is_set),
    "peft_autocast_adapter_dtype": Unmodelled(
        "adapters stay in the model dtype instead of fp32", lambda v, _c: v is False
    ),
    "rl": Unmodelled("preference training (dpo, kto, orpo, grpo...) keeps a reference model and pairs", is_set),
    **_unmodelled("reward_model", "process_reward_model", why="reward-model training (a value head, pairs)"),
    **_unmodelled("gptq", "fp8", "use_kernels", "quantize_moe_experts", "fp32_norms", why="not modelled"),
    **_unmodelled("model_quantization_config", "qat", "quantization", why="quantization not modelled", matters=is_set),
    "torch_compile": Unmodelled("torch.compile fuses kernels and changes which activations autograd keeps"),
    "tiled_mlp": Unmodelled("the MLP runs in sequence tiles"),
    **_unmodelled(
        "sequence_parallel_degree",
        "context_parallel_size",
        "tensor_parallel_size",
        why="sequence / context / tensor parallelism",
        matters=gt_one,
    ),
    "auto_find_batch_size": Unmodelled("the batch size is found at run time, halving it after each OOM"),
    "relora": Unmodelled("ReLoRA restarts", is_set),
}
SILENT = names(
    """
    base_model_config revision_of_model model_type tokenizer_type tokenizer_config tokenizer_use_fast
    tokenizer_legacy tokenizer_use_mistral_common processor_type trust_remote_code datasets test_datasets
    dataset_prepared_path dataset_processes dataset_num_proc dataset_exact_deduplication shuffle_merged_datasets
    val_set_size output_dir hub_model_id hub_strategy hub_revision hf_use_auth_token lora_model_dir
    lora_fan_in_fan_out wandb_project wandb_entity wandb_watch wandb_name wandb_log_model wandb_run_id wandb_mode
    mlflow_tracking_uri mlflow_experiment_name mlflow_run_name hf_mlflow_log_artifacts use_mlflow comet_api_key
    use_comet comet_workspace comet_project_name use_tensorboard num_epochs max_steps lr_scheduler
    lr_scheduler_kwargs learning_rate warmup_ratio warmup_steps cosine_min_lr_ratio lr_quadratic_warmup
    weight_decay adam_beta1 adam_beta2 adam_epsilon max_grad_norm optim_args evals_per_epoch eval_steps
    eval_strategy saves_per_epoch save_steps save_strategy save_total_limit save_first_step save_only_model
    save_safetensors logging_steps special_tokens tokens added_tokens_overrides train_on_inputs group_by_length
    resume_from_checkpoint auto_resume_from_checkpoints early_stopping_patience load_best_model_at_end
    metric_for_best_model greater_is_better seed strict chat_template chat_template_jinja default_system_message
    eot_tokens eval_sample_packing eval_sequence_len eval_batch_size eval_table_size eval_max_new_tokens
    do_causal_lm_eval eval_causal_lm_metrics loss_watchdog_threshold loss_watchdog_patience tf32
    dataloader_pin_memory dataloader_num_workers dataloader_prefetch_factor dataloader_drop_last ddp_timeout
    ddp_bucket_cap_mb ddp_broadcast_buffers ddp_find_unused_parameters local_rank world_size device device_map
    debug include_tokens_per_second profiler_steps torch_empty_cache_steps gc_steps pad_to_sequence_len
    sample_packing_group_size sample_packing_bin_size sample_packing_sequentially multipack_real_batches
    pretraining_dataset streaming excess_length_strategy min_sample_len neftune_noise_alpha loraplus_lr_ratio
    loraplus_lr_embedding lora_on_cpu qlora_sharded_model_loading low_cpu_mem_usage max_memory
    is_llama_derived_model is_mistral_derived_model is_falcon_derived_model is_qwen_derived_model
    embeddings_skip_upcast resize_token_embeddings_to_32x mean_resizing_embeddings shrink_embeddings
    torch_compile_backend torch_compile_mode merge_lora peft_init_lora_weights gpu_memory_limit
    """
)


def defaults(doc: Doc) -> dict[str, Any]:
    """axolotl's schema defaults for the memory-relevant fields, and normalize_config's checkpointing kwargs."""
    out: dict[str, Any] = {
        "adapter": None,
        "sequence_len": 512,
        "micro_batch_size": 1,
        "gradient_checkpointing": False,
        "optimizer": "adamw_torch_fused",
        "bf16": "auto",
    }
    if doc.get("adapter") is not None:
        out["lora_dropout"] = 0.0  # validate_lora_dropout
    plain = doc.get("unfrozen_parameters") is None and doc.get("rl") is None
    if truthy_flag(doc.get("gradient_checkpointing")) and plain:
        out["gradient_checkpointing_kwargs"] = {"use_reentrant": True}
    return out


FIELDS = table(MAPS, NOT_MODELLED, SILENT)
ALIASES: dict[str, tuple[str, ...]] = {"bf16": ("bfloat16", "fp16", "float16", "float32")}
DISTINCTIVE = names(
    """
    base_model base_model_config adapter sequence_len micro_batch_size lora_target_linear lora_model_dir num_epochs
    lr_scheduler optimizer val_set_size dataset_prepared_path special_tokens sample_packing peft_use_dora
    peft_use_rslora wandb_project flash_attention sdp_attention xformers_attention evals_per_epoch saves_per_epoch
    lora_modules_to_save bnb_config_kwargs
    """
)
