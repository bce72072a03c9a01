"""LLaMA-Factory training YAML (`llamafactory-cli train x.yaml`) as plan fields."""

from __future__ import annotations

from typing import Any

from app.core.plan import ALL_LINEAR
from app.recipes import bnb
from app.recipes import transformers_args as hf
from app.recipes.common import deepspeed
from app.recipes.rules import (
    MODEL,
    Approx,
    BadValue,
    Ctx,
    Doc,
    Maps,
    NotModelledValue,
    Outcome,
    Rule,
    Unmodelled,
    as_bool,
    as_float,
    as_int,
    as_str,
    names,
    table,
    to,
)

# Sources: hiyouga/LLaMA-Factory src/llamafactory/hparams/{model_args,finetuning_args,data_args}.py (fields and
# defaults; its training args are transformers' Seq2SeqTrainingArguments), hparams/parser.py (compute dtype from
# bf16 / fp16 / pure_bf16), model/adapter.py (trainable weights upcast to fp32 unless pure_bf16 or ZeRO-3),
# model/model_utils/checkpointing.py (use_reentrant_gc), extras/constants.py (AttentionFunction).


def _finetuning_type(value: Any, _ctx: Ctx) -> Outcome:
    kind = as_str(value)
    if kind in ("lora", "full"):
        return {"method": kind}
    raise NotModelledValue(f"finetuning_type {kind}: gpuplan plans lora, qlora and full fine-tuning")


def _lora_target(value: Any) -> tuple[str, ...] | str:
    """lora_target: "all" or comma-separated module names (FinetuningArguments.__post_init__ splits them)."""
    modules = [n.strip() for n in as_str(value).split(",")]
    return ALL_LINEAR if modules == ["all"] else tuple(modules)


def _lora(target: str, convert: Any) -> Maps:
    """A LoRA field: it shapes the adapter only when finetuning_type is lora (the default)."""

    def maps(value: Any, ctx: Ctx) -> Outcome:
        if value is None or ctx.root.get("finetuning_type", "lora") != "lora":
            return {}
        return {target: convert(value)}

    return Maps((target,), maps)


def _bits(ctx: Ctx) -> int | None:
    bits = ctx.root.get("quantization_bit")
    return None if bits is None else as_int(bits)


def _quantization_bit(value: Any, ctx: Ctx) -> Outcome:
    if value is None:
        return {}
    bits = as_int(value)
    if ctx.root.get("quantization_method", "bnb") != "bnb":
        return {}  # reported by quantization_method
    if bits == 8:
        return {"quant": "int8"}
    if bits != 4:
        raise NotModelledValue(f"{bits}-bit bases are hqq-only in LLaMA-Factory; gpuplan models 4 and 8 bits")
    return {
        "quant": bnb.quant_type(ctx.root.get("quantization_type", "nf4")),
        "double_quant": as_bool(ctx.root.get("double_quantization", True)),
    }


def _in_4bit(target: str, convert: Any) -> Maps:
    return Maps((target,), lambda v, ctx: {target: convert(v)} if _bits(ctx) == 4 else {})


def _quantization_method(value: Any, ctx: Ctx) -> Outcome:
    if _bits(ctx) is None or value in (None, "bnb"):
        return {}
    raise NotModelledValue(f"on-the-fly {value} quantization is not modelled (gpuplan: bitsandbytes)")


def _checkpointing_disabled(value: Any, _ctx: Ctx) -> Outcome:
    return {"gradient_checkpointing": not as_bool(value)}


def _reentrant(value: Any, ctx: Ctx) -> Outcome:
    """use_reentrant_gc (default True) while checkpointing is on (it is unless disable_gradient_checkpointing)."""
    on = as_bool(value) and not as_bool(ctx.root.get("disable_gradient_checkpointing"))
    return {"reentrant": True} if on else {}


# AttentionFunction: auto leaves transformers' default (sdpa), disabled is eager
_ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "fa2": "flash_attention_2", "disabled": "eager"}


def _flash_attn(value: Any, _ctx: Ctx) -> Outcome:
    name = as_str(value)
    if name == "fa3":
        raise NotModelledValue("FlashAttention-3 is not modelled (gpuplan: sdpa, flash_attention_2, eager)")
    if name not in _ATTENTION:
        raise BadValue(f"{name!r} is not one of auto, disabled, sdpa, fa2, fa3")
    return {"attn": _ATTENTION[name]}


def _compute_dtype(dtype: str) -> Maps:
    return Maps(("dtype",), lambda v, _ctx: {"dtype": dtype} if as_bool(v) else {})


def _zero3(root: Doc) -> bool:
    try:
        outcome = deepspeed(root.get("deepspeed"), Ctx(root, root))
    except (NotModelledValue, BadValue):
        return False
    values = outcome.values if isinstance(outcome, Approx) else outcome
    return values.get("sharding") == "zero3"


def _pure_bf16(value: Any, ctx: Ctx) -> Outcome:
    """pure_bf16 false: model/adapter.py upcasts the trainable weights to fp32 (not with a quantized base or ZeRO-3)
    and the Trainer's bf16 / fp16 runs them under autocast; full fine-tuning trains every weight, so that is the
    plan's autocast. `freeze` trains some layers only: not modelled."""
    if as_bool(value):
        return {"dtype": "bf16"}
    kind = ctx.root.get("finetuning_type", "lora")
    if kind not in ("full", "freeze") or ctx.root.get("quantization_bit") is not None or _zero3(ctx.root):
        return {}
    if kind == "freeze":
        raise NotModelledValue(
            "LLaMA-Factory upcasts the trainable weights to fp32 (the unfrozen layers) and trains under autocast (pure_bf16 "
            "false); gpuplan's freeze tuning is not modelled"
        )
    mixed = as_bool(ctx.root.get("bf16", False)) or as_bool(ctx.root.get("fp16", False))
    return {"autocast": True} if mixed else {}


def _unmodelled(*names: str, why: str) -> dict[str, Unmodelled]:
    return dict.fromkeys(names, Unmodelled(why))


MAPS: dict[str, Rule] = {
    **{k: v for k, v in hf.MAPS.items() if k not in ("bf16", "fp16")},
    "bf16": _compute_dtype("bf16"),  # LLaMA-Factory loads the model in its compute dtype
    "fp16": _compute_dtype("fp16"),
    "pure_bf16": Maps(("dtype", "autocast"), _pure_bf16),
    # model/model_utils/liger_kernel.py applies Liger's kernels, the fused linear cross-entropy among them
    "enable_liger_kernel": Maps(("fused_cross_entropy",), hf.liger),
    # rows filled to cutoff_len with several samples (neat_packing: no attention across them, a block mask)
    "packing": Maps(("packing",), lambda v, _ctx: {"packing": True} if as_bool(v) else {}),
    "neat_packing": Maps(("packing",), lambda v, _ctx: {"packing": True} if as_bool(v) else {}),
    # model/model_utils/moe.py configure_moe: training with a non-zero moe_aux_loss_coef sets the config's
    # output_router_logits (Mixtral, Qwen2/3-MoE, OLMoE, Granite MoE, ...), so the CausalLM adds the aux loss
    "moe_aux_loss_coef": Maps(
        ("router_aux_loss",), lambda v, _ctx: {"router_aux_loss": True} if as_float(v or 0) else {}
    ),
    "model_name_or_path": MODEL,
    "finetuning_type": Maps(("method",), _finetuning_type),
    "lora_rank": _lora("rank", as_int),
    "lora_alpha": _lora("alpha", as_float),
    "lora_dropout": _lora("dropout", as_float),
    "lora_target": _lora("targets", _lora_target),
    "use_dora": _lora("dora", as_bool),
    "use_rslora": _lora("rslora", as_bool),
    "quantization_bit": Maps(("quant", "double_quant"), _quantization_bit),
    "quantization_method": Maps((), _quantization_method),
    "quantization_type": _in_4bit("quant", bnb.quant_type),
    "double_quantization": _in_4bit("double_quant", as_bool),
    "cutoff_len": to("seq_len", as_int),
    "disable_gradient_checkpointing": Maps(("gradient_checkpointing",), _checkpointing_disabled),
    "use_reentrant_gc": Maps(("reentrant",), _reentrant),
    "flash_attn": Maps(("attn",), _flash_attn),
}
NOT_MODELLED: dict[str, Unmodelled] = {
    **hf.NOT_MODELLED,
    "stage": Unmodelled(
        "rm / ppo / dpo / kto keep a reward or reference model and pairs of sequences",
        lambda v, _c: v not in (None, "sft", "pt"),
    ),
    "additional_target": Unmodelled("full trainable copies of these modules (weights, gradients, states)"),
    "mixture_of_depths": Unmodelled("mixture-of-depths layers"),
    **_unmodelled("use_unsloth", "use_unsloth_gc", why="Unsloth's kernels and offloaded checkpointing"),
    **_unmodelled("shift_attn", why="LongLoRA shifted sparse attention"),
    **_unmodelled("upcast_layernorm", "upcast_lmhead_output", why="fp32 copies of layer norms / lm_head output"),
    **_unmodelled("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon", why="optimizer not modelled"),
    **_unmodelled("use_llama_pro", why="LLaMA Pro expanded blocks"),
    **_unmodelled("use_kt", "use_mca", "use_megatron_bridge", "use_hyper_parallel", why="other training backend"),
}
SILENT = hf.SILENT | names(
    """
    template dataset eval_dataset dataset_dir media_dir max_samples preprocessing_num_workers preprocessing_batch_size
    overwrite_cache val_size plot_loss trust_remote_code mix_strategy interleave_probs streaming buffer_size
    train_on_prompt mask_history tokenized_path default_system enable_thinking preserve_thinking tool_format
    ignore_pad_token_for_loss eval_on_each_dataset eval_num_beams data_shared_file_system cache_dir model_revision
    use_fast_tokenizer resize_vocab split_special_tokens add_tokens add_special_tokens new_special_tokens_config
    init_special_tokens low_cpu_mem_usage rope_scaling adapter_name_or_path adapter_folder hf_hub_token ms_hub_token
    om_hub_token print_param_status infer_backend offload_folder use_kv_cache infer_dtype use_v1_kernels
    train_from_scratch quantization_device_map loraplus_lr_ratio loraplus_lr_embedding pissa_init
    pissa_iter pissa_convert create_new_adapter freeze_trainable_layers freeze_trainable_modules
    freeze_extra_modules freeze_vision_tower freeze_multi_modal_projector freeze_language_model compute_accuracy
    disable_shuffling early_stopping_steps include_effective_tokens_per_second use_swanlab swanlab_project
    swanlab_workspace swanlab_run_name swanlab_mode swanlab_api_key swanlab_logdir swanlab_lark_webhook_url
    swanlab_lark_secret pref_beta pref_ftx pref_loss dpo_label_smoothing kto_chosen_weight kto_rejected_weight
    simpo_gamma use_dft_loss use_asft_loss asft_alpha use_eaft_loss eaft_alpha ray_run_name ray_storage_path
    ray_storage_filesystem ray_num_workers ray_init_kwargs resources_per_worker placement_strategy
    master_addr master_port image_max_pixels image_min_pixels video_max_pixels video_min_pixels video_fps
    video_maxlen use_audio_in_video audio_sampling_rate enable_torch_profiler
    """
)
DEFAULTS: dict[str, Any] = {
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_dropout": 0.0,
    "lora_target": "all",
    "cutoff_len": 2048,
    "per_device_train_batch_size": 8,
    "disable_gradient_checkpointing": False,
    "use_reentrant_gc": True,
    "flash_attn": "auto",
    "pure_bf16": False,
    "optim": "adamw_torch_fused",
}


def defaults(doc: Doc) -> dict[str, Any]:
    """LLaMA-Factory's defaults; lora_alpha defaults to twice lora_rank (FinetuningArguments.__post_init__)."""
    rank = doc.get("lora_rank", DEFAULTS["lora_rank"])
    alpha = {"lora_alpha": rank * 2} if isinstance(rank, int) and not isinstance(rank, bool) else {}
    return {**DEFAULTS, **alpha}


FIELDS = table(MAPS, NOT_MODELLED, SILENT)
DISTINCTIVE = names(
    """
    stage finetuning_type lora_rank lora_target cutoff_len template quantization_bit quantization_method
    double_quantization flash_attn pure_bf16 use_reentrant_gc disable_gradient_checkpointing plot_loss max_samples
    dataset_dir enable_liger_kernel use_unsloth additional_target neat_packing val_size
    """
)
