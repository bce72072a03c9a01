"""Several files' readings merged into one set of plan fields, explicit settings over the frameworks' defaults.

Two files (or two fields of one file) that set one plan field to different values are a conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core.plan import TrainingPlan
from app.recipes.read import Entry

QUANTIZED = ("nf4", "fp4", "int8")


@dataclass(frozen=True)
class Source:
    file: str
    entry: Entry


@dataclass(frozen=True)
class Merged:
    values: dict[str, Any]  # plan fields (and "model") -> value
    used: list[Source]  # the mapped entries whose value was used
    conflicts: list[tuple[Source, Source]]


def _same(target: str, a: Any, b: Any) -> bool:
    """Whether two settings agree: LoRA and QLoRA agree on training an adapter (the quantization says which)."""
    if target == "method":
        return bool(a == "full") == bool(b == "full")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return sorted(map(str, a)) == sorted(map(str, b))
    equal: bool = a == b
    return equal


def merge(sources: Sequence[Source]) -> Merged:
    """Per plan field: the explicit settings (which must agree), else the first framework default."""
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
    return Merged(values, used, conflicts)


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
