"""PEFT adapter_config.json (LoraConfig.to_dict) or a LoraConfig dict as plan fields."""

from __future__ import annotations

from typing import Any

from app.recipes.common import lora_targets
from app.recipes.rules import (
    MODEL,
    BadValue,
    Ctx,
    Maps,
    NotModelledValue,
    Outcome,
    Rule,
    Unmodelled,
    as_float,
    as_int,
    as_str,
    flag,
    is_set,
    names,
    table,
    to,
)

# Source: huggingface/peft src/peft/tuners/lora/config.py, class LoraConfig (v0.21.2: fields, defaults and the
# target_modules semantics: a list is matched by name suffix, a string is a regex, 'all-linear' every linear
# layer but the output layer, None the architecture's defaults).


def _peft_type(value: Any, _ctx: Ctx) -> Outcome:
    name = as_str(value)
    if name.upper() != "LORA":
        raise BadValue(f"peft_type {name}: gpuplan plans LoRA adapters (peft_type LORA) only")
    return {"method": "lora"}


def _targets(value: Any, _ctx: Ctx) -> Outcome:
    if value is None:
        raise NotModelledValue("null: PEFT picks the architecture's default targets (q_proj, v_proj for Llama)")
    return {"targets": lora_targets(value)}


def _variant(name: str) -> Unmodelled:
    return Unmodelled(f"the {name} LoRA variant is not modelled", is_set)


MAPS: dict[str, Rule] = {
    "peft_type": Maps(("method",), _peft_type),
    "r": to("rank", as_int),
    "lora_alpha": to("alpha", as_float),
    "lora_dropout": to("dropout", as_float),
    "target_modules": Maps(("targets",), _targets),
    "use_dora": flag("dora"),
    "use_rslora": flag("rslora"),
    "base_model_name_or_path": MODEL,
}
NOT_MODELLED: dict[str, Unmodelled] = {
    "bias": Unmodelled("biases are trained too (their gradients and optimizer states)", lambda v, _c: v != "none"),
    "modules_to_save": Unmodelled("full trainable copies of these modules (weights, gradients, states)", is_set),
    "layers_to_transform": Unmodelled("only these layers are adapted; gpuplan adapts every layer", is_set),
    "rank_pattern": Unmodelled("per-module ranks; gpuplan uses r everywhere", is_set),
    "exclude_modules": Unmodelled("modules excluded from the targets", is_set),
    "target_parameters": Unmodelled("adapts parameters (MoE experts) directly", is_set),
    "lora_bias": Unmodelled("a trainable bias on lora_B"),
    "use_qalora": Unmodelled("QA-LoRA pools the adapter input"),
    "layer_replication": Unmodelled("replicated layers (each with its own adapter)", is_set),
    "trainable_token_indices": Unmodelled("trainable rows of the embedding", is_set),
    "megatron_config": Unmodelled("Megatron tensor-parallel LoRA layers", is_set),
    "use_bdlora": _variant("BD-LoRA"),
    "kasa_config": _variant("KaSA"),
    "velora_config": _variant("VeLoRA"),
    "monteclora_config": _variant("MonteCLoRA"),
    "arrow_config": _variant("Arrow"),
    "alora_invocation_tokens": _variant("aLoRA"),
}
SILENT = names(
    """
    task_type auto_mapping revision inference_mode init_lora_weights layers_pattern alpha_pattern megatron_core
    loftq_config eva_config corda_config lora_ga_config qalora_group_size peft_version ensure_weight_tying
    fan_in_fan_out
    """
)
# LoraConfig() defaults, for a LoraConfig dict that leaves fields out (adapter_config.json writes them all)
DEFAULTS: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "target_modules": None,
    "use_dora": False,
    "use_rslora": False,
}
FIELDS = table(MAPS, NOT_MODELLED, SILENT)
DISTINCTIVE = names(
    """
    peft_type r target_modules task_type base_model_name_or_path inference_mode fan_in_fan_out init_lora_weights
    modules_to_save layers_to_transform layers_pattern rank_pattern alpha_pattern lora_bias exclude_modules
    auto_mapping peft_version
    """
)
