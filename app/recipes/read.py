"""One recipe file read through its format's table: what each field honours, cannot honour, or ignores."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from app.recipes.formats import Format
from app.recipes.rules import (
    SILENT_RULE,
    Approx,
    BadValue,
    Ctx,
    Doc,
    Maps,
    Nested,
    NotModelledValue,
    Rule,
    Unmodelled,
)
from app.recipes.secrets import is_secret_key, shown

Kind = Literal["mapped", "not_modelled", "ignored", "unknown"]


@dataclass(frozen=True)
class Entry:
    """What one field did: a mapped entry per plan field it sets; `why` on mapped entries marks an approximation."""

    kind: Kind
    field: str
    value: Any = None
    target: str | None = None  # the plan field (or "model") of a mapped entry
    plan_value: Any = None
    why: str | None = None
    default: bool = False  # the field is absent and this is what the framework does then


@dataclass
class Reading:
    entries: list[Entry] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (field, message)


# What a framework does when a field is absent, where the software stack (TrainingPlan.stack) changes it, per
# format. transformers 4.57.6: `gradient_checkpointing_enable()` without kwargs uses {"use_reentrant": True}
# (modeling_utils.py, line 3691; transformers 5 `_activation_checkpointing_enable` defaults to False); axolotl and
# LLaMA-Factory set it themselves. A TrainingArguments file that gives no torch_dtype / dtype is loaded by a script
# that passes none (the examples' ModelArguments.torch_dtype defaults to None): 4.57.6 `from_pretrained` pops
# `dtype`/`torch_dtype` with default None (modeling_utils.py, lines 4628-4629) and `_get_dtype` then keeps
# torch.get_default_dtype(), fp32 "for BC" (lines 1287-1292), so bf16 / fp16 train under autocast over fp32 weights
# (transformers 5 loads the config's dtype instead: `dtype="auto"`). A bitsandbytes-quantized base is the exception:
# its quantizer loads fp16 (quantizer_bnb_4bit.py / quantizer_bnb_8bit.py `update_dtype`), see merge.py.
TF4_DEFAULTS: dict[str, dict[str, Any]] = {
    "transformers": {"gradient_checkpointing_kwargs": {"use_reentrant": True}, "torch_dtype": "float32"},
    "trl": {"gradient_checkpointing_kwargs": {"use_reentrant": True}},
}


def read_file(fmt: Format, doc: Doc, stack: str = "transformers-5") -> Reading:
    reading = Reading()
    stacked = TF4_DEFAULTS.get(fmt.name, {}) if stack == "transformers-4" else {}
    defaults = {**_applicable_defaults(fmt, doc), **_absent(stacked, fmt, doc)}
    effective = {**defaults, **doc}
    _read_level(fmt.fields, doc, effective, effective, "", list(defaults), reading, unlisted_silent=False)
    return reading


def _applicable_defaults(fmt: Format, doc: Doc) -> dict[str, Any]:
    """The framework's defaults for fields absent from the file (and none of whose aliases is set either)."""
    return _absent(fmt.defaults(doc), fmt, doc)


def _absent(values: dict[str, Any], fmt: Format, doc: Doc) -> dict[str, Any]:
    return {
        key: value
        for key, value in values.items()
        if key not in doc and not any(alias in doc for alias in fmt.aliases.get(key, ()))
    }


def _read_level(
    fields: Mapping[str, Rule],
    doc: Doc,
    effective: Doc,
    root: Doc,
    prefix: str,
    defaulted: list[str],
    reading: Reading,
    *,
    unlisted_silent: bool,
    key_of: Callable[[str], str] = str,
) -> None:
    """Reads the keys of `doc`, then the defaulted ones, each against `fields`."""
    ctx = Ctx(effective, root)
    for key, default in [(k, False) for k in doc] + [(k, True) for k in defaulted]:
        rule = fields.get(key_of(key))
        name = prefix + key
        if rule is None:
            if not default:  # a credential never changes memory: accepted silently
                silent = unlisted_silent or is_secret_key(key)
                reading.entries.append(Entry("ignored" if silent else "unknown", name))
            continue
        entries, errors = len(reading.entries), len(reading.errors)
        _apply(rule, name, effective[key], ctx, default, reading)
        if not default and len(reading.entries) == entries and len(reading.errors) == errors:
            reading.entries.append(Entry("ignored", name))


def _apply(rule: Rule, name: str, value: Any, ctx: Ctx, default: bool, reading: Reading) -> None:
    """Adds the entries `rule` makes of `value` (none when it sets nothing: the caller lists it as ignored)."""
    if rule is SILENT_RULE:
        return
    if isinstance(rule, Unmodelled):
        if rule.matters(value, ctx):
            reading.entries.append(Entry("not_modelled", name, value, why=rule.why, default=default))
        return
    if isinstance(rule, Nested):
        _nested(rule, name, value, ctx, default, reading)
        return
    assert isinstance(rule, Maps)
    try:
        outcome = rule.convert(value, ctx)
    except NotModelledValue as exc:
        reading.entries.append(Entry("not_modelled", name, value, why=exc.why, default=default))
        return
    except BadValue as exc:
        reading.errors.append((name, f"{exc}: {shown(value, name)!r}"))
        return
    values, why = (outcome.values, outcome.why) if isinstance(outcome, Approx) else (outcome, None)
    for target, plan_value in values.items():
        reading.entries.append(Entry("mapped", name, value, target, plan_value, why, default))


def _nested(rule: Nested, name: str, value: Any, ctx: Ctx, default: bool, reading: Reading) -> None:
    """A mapping read with its own table; a defaulted mapping (the framework's) reports only what it changes."""
    if value in (None, {}) or not rule.active(ctx):
        return
    if not isinstance(value, dict):
        reading.errors.append((name, f"expected a mapping, got {type(value).__name__}"))
        return
    sub = Reading()
    absent = [k for k in rule.defaults if k not in value]
    effective = {**rule.defaults, **value}
    _read_level(
        rule.table,
        value,
        effective,
        ctx.root,
        name + ".",
        absent,
        sub,
        unlisted_silent=rule.unlisted_silent,
        key_of=rule.key,
    )
    reading.errors.extend(sub.errors)
    if default:
        sub.entries = [replace(e, default=True) for e in sub.entries if e.kind in ("mapped", "not_modelled")]
    reading.entries.extend(sub.entries)
    set_here = {e.target for e in sub.entries if e.kind == "mapped"}
    for target, plan_value in rule.implies.items():
        if target not in set_here:
            reading.entries.append(Entry("mapped", name, value, target, plan_value, default=default))
