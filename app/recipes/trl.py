"""TRL SFTConfig, and the `trl sft --config` YAML that adds TRL's ModelConfig (model, PEFT and quantization)."""

from __future__ import annotations

from typing import Any

from app.recipes import bnb
from app.recipes import transformers_args as hf
from app.recipes.common import attention, lora_targets
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
    flag,
    is_set,
    names,
    table,
)

# Sources: huggingface/trl trl/trainer/sft_config.py and trl/trainer/base_config.py (SFTConfig fields and the
# defaults it changes from TrainingArguments: gradient_checkpointing=True, bf16=True unless fp16; trl 1.16.0's
# loss_type defaults to nll, chunked_nll its deprecated alias), trl/trainer/model_config.py (ModelConfig) and
# trl/trainer/utils.py get_quantization_config / get_peft_config (how ModelConfig becomes a BitsAndBytesConfig and a
# LoraConfig); trl 1.16.0 trl/trainer/sft_trainer.py (the fused LM head that computes every loss_type, l. 1144 and
# 1560; use_liger_kernel with its fused linear cross-entropy turned off, l. 1127-1140).


def _seq_len(value: Any, _ctx: Ctx) -> Outcome:
    if value is None:
        raise NotModelledValue("max_length null: sequences are not truncated, so gpuplan has no length to plan")
    return {"seq_len": as_int(value)}


def _padding_free(value: Any, _ctx: Ctx) -> Outcome:
    """padding_free flattens each batch into one row with position_ids (DataCollatorForLanguageModeling): packed."""
    if not as_bool(value):
        return {}
    return Approx(
        {"packing": True},
        "padding-free batches are one flattened row of all the batch's tokens; planned as packed rows (the same "
        "tokens; with sdpa the one row's mask is larger)",
    )


def _use_peft(value: Any, _ctx: Ctx) -> Outcome:
    return {"method": "lora" if as_bool(value) else "full"}


def _peft_on(root: Doc) -> bool:
    return as_bool(root.get("use_peft"))


def _peft(target: str, convert: Any) -> Maps:
    """A ModelConfig LoRA field: used only with use_peft (get_peft_config returns None otherwise)."""
    return Maps((target,), lambda v, ctx: {target: convert(v)} if _peft_on(ctx.root) and v is not None else {})


def _targets(value: Any, ctx: Ctx) -> Outcome:
    if not _peft_on(ctx.root):
        return {}
    if value is None:
        raise NotModelledValue("null: PEFT picks the architecture's default targets (q_proj, v_proj for Llama)")
    return {"targets": lora_targets(value)}


def _load_4bit(value: Any, ctx: Ctx) -> Outcome:
    if not as_bool(value):
        return {}
    quant = bnb.quant_type(ctx.doc.get("bnb_4bit_quant_type", "nf4"))
    return {"quant": quant, "double_quant": as_bool(ctx.doc.get("use_bnb_nested_quant"))}


def _in_4bit(target: str, convert: Any) -> Maps:
    return Maps((target,), lambda v, ctx: {target: convert(v)} if as_bool(ctx.root.get("load_in_4bit")) else {})


def _load_8bit(value: Any, ctx: Ctx) -> Outcome:
    return {"quant": "int8"} if as_bool(value) and not as_bool(ctx.root.get("load_in_4bit")) else {}


def _loss_type(value: Any, ctx: Ctx) -> Outcome:
    """SFTTrainer's loss: nll (chunked_nll its alias) and dft run through its fused LM head, the plan's loop sft;
    label smoothing needs the full logits (sft_trainer.py l. 1601-1609: the Trainer's loss, plus a no-grad fused
    forward for the metrics)."""
    if value not in (None, "nll", "chunked_nll", "dft"):
        raise NotModelledValue(f"{value}: not a loss_type trl 1.16 has (nll, dft)")
    smoothing = ctx.root.get("label_smoothing_factor")
    if smoothing is not None and as_float(smoothing) > 0:
        return Approx(
            {"loop": "trainer"},
            "label smoothing: SFTTrainer computes the loss from the full logits; the no-grad fused forward it adds "
            "for its metrics is not counted",
        )
    return {"loop": "sft"}


def _router_coef(value: Any, _ctx: Ctx) -> Outcome:
    """router_aux_loss_coef: SFTTrainer keeps an MoE config's output_router_logits in step with it (0.0 turns the
    load-balancing loss off, any other value on; sft_trainer.py l. 1203-1211)."""
    return {} if value is None else {"router_aux_loss": as_float(value) != 0}


def _liger(value: Any, _ctx: Ctx) -> Outcome:
    """use_liger_kernel under SFTTrainer: Liger's layer kernels only (it turns the fused linear cross-entropy off,
    its own fused LM head computes the loss)."""
    if not as_bool(value):
        return {}
    return Approx(
        {"fused_cross_entropy": False},
        "Liger's RMSNorm, SwiGLU and RoPE kernels keep less than gpuplan counts; SFTTrainer turns Liger's fused "
        "linear cross-entropy off (its fused LM head computes the loss)",
    )


MODEL_INIT_KWARGS: dict[str, Rule] = {
    "dtype": Maps(("dtype",), hf.weights_dtype),
    "torch_dtype": Maps(("dtype",), hf.weights_dtype),
    "attn_implementation": Maps(("attn",), attention),
    "quantization_config": bnb.QUANTIZATION_CONFIG,
    "output_router_logits": hf.ROUTER_LOGITS,
}
MAPS: dict[str, Rule] = {
    **hf.MAPS,
    "max_length": Maps(("seq_len",), _seq_len),
    "loss_type": Maps(("loop",), _loss_type),
    "router_aux_loss_coef": Maps(("router_aux_loss",), _router_coef),
    "use_liger_kernel": Maps(("fused_cross_entropy",), _liger),
    "max_seq_length": Maps(("seq_len",), _seq_len),  # its name before TRL 0.20 (alignment-handbook recipes)
    "model_init_kwargs": Nested(MODEL_INIT_KWARGS),
    # ModelConfig
    "model_name_or_path": MODEL,
    "dtype": Maps(("dtype",), hf.weights_dtype),
    "torch_dtype": Maps(("dtype",), hf.weights_dtype),  # its name before TRL 0.20
    "attn_implementation": Maps(("attn",), attention),
    "use_peft": Maps(("method",), _use_peft),
    "lora_r": _peft("rank", as_int),
    "lora_alpha": _peft("alpha", as_float),
    "lora_dropout": _peft("dropout", as_float),
    "lora_target_modules": Maps(("targets",), _targets),
    "use_rslora": _peft("rslora", as_bool),
    "use_dora": _peft("dora", as_bool),
    "load_in_4bit": Maps(("quant", "double_quant"), _load_4bit),
    "load_in_8bit": Maps(("quant",), _load_8bit),
    "bnb_4bit_quant_type": _in_4bit("quant", bnb.quant_type),
    "use_bnb_nested_quant": _in_4bit("double_quant", as_bool),
    # packed rows are full max_length rows told apart by position_ids (first principles: app/core/attention.py)
    "packing": flag("packing"),
    "padding_free": Maps(("packing",), _padding_free),
}
NOT_MODELLED: dict[str, Unmodelled] = {
    **hf.NOT_MODELLED,
    "activation_offloading": Unmodelled("activations are offloaded to the CPU between forward and backward"),
    "lora_target_parameters": Unmodelled("adapts parameters (MoE experts) directly", is_set),
    "lora_modules_to_save": Unmodelled("full trainable copies of these modules (weights, gradients, states)", is_set),
}
SILENT = hf.SILENT | names(
    """
    dataset_text_field dataset_kwargs dataset_num_proc eos_token pad_token truncation_mode shuffle_dataset
    packing_strategy pad_to_multiple_of eval_packing completion_only_loss assistant_only_loss chat_template_path
    trust_remote_code model_revision lora_task_type bnb_4bit_quant_storage dataset_name
    dataset_config dataset_train_split dataset_test_split dataset_streaming chat_template dataset_mixture
    ignore_bias_buffers
    """
)
FIELDS = table(MAPS, NOT_MODELLED, SILENT)
DISTINCTIVE = names(
    """
    max_length max_seq_length packing dataset_text_field completion_only_loss assistant_only_loss padding_free
    model_init_kwargs use_peft use_bnb_nested_quant packing_strategy chat_template_path dataset_kwargs eval_packing
    dataset_mixture dataset_name lora_task_type
    """
)
ALIASES = {**hf.ALIASES, "max_length": ("max_seq_length",), "dtype": ("torch_dtype",)}


def defaults(doc: Doc) -> dict[str, Any]:
    """What SFTConfig (and, in a `trl sft` YAML, ModelConfig) does when a memory-relevant field is absent."""
    out: dict[str, Any] = {
        **hf.DEFAULTS,
        "gradient_checkpointing": True,
        "max_length": 1024,
        "loss_type": "nll",
    }
    if not as_bool(doc.get("fp16")):
        out["bf16"] = True
    if "model_name_or_path" in doc:  # a trl CLI config: ModelConfig's defaults apply
        out |= {
            "use_peft": False,
            "dtype": "float32",
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.05,
            "lora_target_modules": None,
            "bnb_4bit_quant_type": "nf4",
            "use_bnb_nested_quant": False,
        }
    return out
