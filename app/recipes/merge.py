"""Several files' readings merged into one set of plan fields, explicit settings over the frameworks' defaults.

Two files (or two fields of one file) that set one plan field to different values are a conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.core.plan import TrainingPlan
from app.recipes.read import Entry

QUANTIZED = ("nf4", "fp4", "int8")
# Why an autocast one file derives (bf16 / fp16 over weights a framework loads in fp32, e.g. transformers 4's
# from_pretrained without torch_dtype) is not planned when the merged plan is QLoRA or leaves the method to
# TrainingPlan's default (qlora).
AUTOCAST_NEEDS_16BIT_BASE = (
    "bf16/fp16 autocast over fp32 weights is planned for lora and full fine-tuning only: this plan is QLoRA (or leaves "
    "the method to the default, qlora), whose base transformers loads quantized (bitsandbytes' quantizer loads the "
    "rest in fp16 when no torch_dtype is given: quantizer_bnb_4bit.py update_dtype) and PEFT's "
    "prepare_model_for_kbit_training upcasts to fp32, as gpuplan's qlora plan has it; with method lora or full, "
    "add autocast"
)


@dataclass(frozen=True)
class Source:
    file: str
    entry: Entry


@dataclass(frozen=True)
class Merged:
    values: dict[str, Any]  # plan fields (and "model") -> value
    used: list[Source]  # the mapped entries whose value was used
    conflicts: list[tuple[Source, Source]]
    dropped: list[Source] = field(
        default_factory=list
    )  # mapped entries left out of the plan (AUTOCAST_NEEDS_16BIT_BASE)


def _same(target: str, a: Any, b: Any) -> bool:
    """Whether two settings agree: LoRA and QLoRA agree on training an adapter (the quantization says which)."""
    if target == "method":
        return bool(a == "full") == bool(b == "full")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return sorted(map(str, a)) == sorted(map(str, b))
    equal: bool = a == b
    return equal


def merge(sources: Sequence[Source], method: str | None = None) -> Merged:
    """Per plan field: the explicit settings (which must agree), else the first framework default. `method`: the one
    the caller's own plan fields set over the files' (a flag, the API's plan), if any."""
    by_target: dict[str, list[Source]] = {}
    for source in sources:
        if source.entry.kind == "mapped" and source.entry.target is not None:
            by_target.setdefault(source.entry.target, []).append(source)
    values: dict[str, Any] = {}
    used: list[Source] = []
    conflicts: list[tuple[Source, Source]] = []
    for target, found in by_target.items():
        explicit = [s for s in found if not s.entry.default]
        chosen = explicit or [s for s in found if _same(target, s.entry.plan_value, found[0].entry.plan_value)][:1]
        first = chosen[0]
        for other in chosen[1:]:
            if not _same(target, first.entry.plan_value, other.entry.plan_value):
                conflicts.append((first, other))
                break
        values[target] = _resolve(target, [s.entry.plan_value for s in chosen])
        used.extend(chosen)
    _quantized_lora_is_qlora(values)
    return Merged(values, used, conflicts, _no_autocast_over_a_quantized_base(values, used, method))


def _resolve(target: str, candidates: list[Any]) -> Any:
    if target == "method" and "qlora" in candidates:
        return "qlora"
    return candidates[0]


def _quantized_lora_is_qlora(values: dict[str, Any]) -> None:
    """gpuplan calls LoRA on a quantized base qlora: a PEFT file (lora) with a BitsAndBytesConfig (nf4) is qlora."""
    if values.get("method") == "lora" and values.get("quant") in QUANTIZED:
        values["method"] = "qlora"


def ordered(values: dict[str, Any]) -> dict[str, Any]:
    """Plan fields in TrainingPlan's order, without `model`."""
    return {name: values[name] for name in TrainingPlan.model_fields if name in values}


def _no_autocast_over_a_quantized_base(values: dict[str, Any], used: list[Source], method: str | None) -> list[Source]:
    """An autocast over fp32 weights meets a QLoRA plan (another file's quantization config, or the default method):
    left out, with its entries moved from `used` to the returned list (AUTOCAST_NEEDS_16BIT_BASE)."""
    if not values.get("autocast") or (method or values.get("method")) not in (None, "qlora"):
        return []
    del values["autocast"]
    dropped = [s for s in used if s.entry.target == "autocast"]
    used[:] = [s for s in used if s.entry.target != "autocast"]
    return dropped
