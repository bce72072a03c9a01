"""bitsandbytes BitsAndBytesConfig (its to_dict / to_json_string, or nested as `quantization_config`) as plan fields."""

from __future__ import annotations

from typing import Any

from app.recipes.common import dtype_name
from app.recipes.rules import (
    BadValue,
    Ctx,
    Maps,
    Nested,
    NotModelledValue,
    Outcome,
    Rule,
    Unmodelled,
    as_bool,
    as_str,
    is_set,
    table,
)

# Source: huggingface/transformers src/transformers/utils/quantization_config.py, class BitsAndBytesConfig
# (v5.24): fields, defaults, and to_dict() (which also writes `_load_in_4bit`, `_load_in_8bit`, `quant_method`).


def four_bit(ctx: Ctx) -> bool:
    """Whether this BitsAndBytesConfig (or, for axolotl's bnb_config_kwargs, the config around it) loads in 4 bits."""
    for doc in (ctx.doc, ctx.root):
        for key in ("load_in_4bit", "_load_in_4bit"):
            if key in doc:
                return as_bool(doc[key])
    return False


def _load_4bit(value: Any, ctx: Ctx) -> Outcome:
    """A 4-bit base trains only adapters ("8 and 4-bit training is only supported for training extra parameters");
    which 4-bit type comes from bnb_4bit_quant_type (default fp4)."""
    if not as_bool(value):
        return {}
    if as_bool(ctx.doc.get("load_in_8bit")) or as_bool(ctx.doc.get("_load_in_8bit")):
        raise BadValue("load_in_4bit and load_in_8bit are both true; bitsandbytes refuses that")
    return {"method": "qlora"}


def _load_8bit(value: Any, ctx: Ctx) -> Outcome:
    return {"method": "qlora", "quant": "int8"} if as_bool(value) and not four_bit(ctx) else {}


def quant_type(value: Any) -> str:
    name = as_str(value)
    if name not in ("nf4", "fp4"):
        raise NotModelledValue(f"bnb_4bit_quant_type {name!r}: bitsandbytes 4-bit types are nf4 and fp4")
    return name


def _quant_type_field(value: Any, ctx: Ctx) -> Outcome:
    return {"quant": quant_type(value)} if four_bit(ctx) and value is not None else {}


def _double_quant(value: Any, ctx: Ctx) -> Outcome:
    return {"double_quant": as_bool(value)} if four_bit(ctx) else {}


def _compute_dtype(value: Any, ctx: Ctx) -> Outcome:
    if not four_bit(ctx) or value is None:
        return {}
    dtype = dtype_name(value)
    if dtype == "fp32":
        raise NotModelledValue(
            "4-bit matmuls compute in fp32 (the bitsandbytes default): the dequantized weight transient is fp32; "
            "gpuplan plans it in the training dtype (bf16 or fp16 flags)"
        )
    return {} if dtype is None else {"dtype": dtype}


def _quant_method(value: Any, ctx: Ctx) -> Outcome:
    """bitsandbytes, or an MXFP4 checkpoint's Mxfp4Config (gpt-oss): `dequantize` (default False: the experts stay
    MXFP4, transformers 5.24 utils/quantization_config.py Mxfp4Config.__init__) is the plan's mxfp4."""
    if value == "mxfp4":
        return {"mxfp4": "dequantize" if as_bool(ctx.doc.get("dequantize", False)) else "keep"}
    if value not in (None, "bitsandbytes"):
        raise NotModelledValue(f"a base pre-quantized with {value} is not modelled (gpuplan: bitsandbytes, mxfp4)")
    return {}


MAPS: dict[str, Rule] = {
    "load_in_4bit": Maps(("method",), _load_4bit),
    "_load_in_4bit": Maps(("method",), _load_4bit),
    "load_in_8bit": Maps(("method", "quant"), _load_8bit),
    "_load_in_8bit": Maps(("method", "quant"), _load_8bit),
    "bnb_4bit_quant_type": Maps(("quant",), _quant_type_field),
    "bnb_4bit_use_double_quant": Maps(("double_quant",), _double_quant),
    "bnb_4bit_compute_dtype": Maps(("dtype",), _compute_dtype),
    "quant_method": Maps(("mxfp4",), _quant_method),
}
NOT_MODELLED: dict[str, Unmodelled] = {
    "llm_int8_skip_modules": Unmodelled("these modules stay unquantized in 16 bits", is_set),
    "llm_int8_enable_fp32_cpu_offload": Unmodelled("modules dispatched to the CPU stay in fp32 there"),
    "llm_int8_has_fp16_weight": Unmodelled("int8 layers keep an fp16 copy of their weights (int8 training)"),
    # Mxfp4Config's (attention, router, embeddings, lm_head: 16-bit, as planned); any other config's: not modelled
    "modules_to_not_convert": Unmodelled(
        "these modules stay unquantized in 16 bits",
        lambda v, ctx: is_set(v, ctx) and ctx.doc.get("quant_method") != "mxfp4",
    ),
}
SILENT = frozenset(
    {
        "llm_int8_threshold",  # outlier threshold: compute only
        "bnb_4bit_quant_storage",  # the same packed 4-bit bytes in a wider storage dtype (for FSDP)
        "dequantize",  # Mxfp4Config's, read with its quant_method
    }
)
# What BitsAndBytesConfig() does when a field is absent: fp4 (not nf4) and no double quantization.
DEFAULTS = {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float32"}

BNB_FIELDS = table(MAPS, NOT_MODELLED, SILENT)
QUANTIZATION_CONFIG = Nested(BNB_FIELDS, unlisted_silent=False, defaults=DEFAULTS)
# A whole BitsAndBytesConfig file, or any config with a `quantization_config` (a model's config.json).
FIELDS: dict[str, Rule] = {**BNB_FIELDS, "quantization_config": QUANTIZATION_CONFIG}
DISTINCTIVE = frozenset({*MAPS, *NOT_MODELLED, *SILENT, "quantization_config"})
