"""The planner form: its fields derived from TrainingPlan, query parsing, and canonical permalinks."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlencode

import annotated_types
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from app.core.plan import TrainingPlan
from app.http.problems import from_validation
from app.http.schemas import EstimateRequest, PlanQuery

Kind = Literal["text", "number", "select"]

# Labels and groups are presentation; names, choices, limits, defaults and help come from TrainingPlan.
LABELS: dict[str, str] = {
    "method": "Method",
    "quant": "Base quantization",
    "double_quant": "Double quantization",
    "dtype": "Compute dtype",
    "rank": "LoRA rank r",
    "alpha": "LoRA alpha α",
    "dropout": "LoRA dropout",
    "targets": "LoRA targets",
    "dora": "DoRA",
    "rslora": "rsLoRA",
    "seq_len": "Sequence length",
    "batch_size": "Micro-batch size",
    "gradient_checkpointing": "Gradient checkpointing",
    "checkpointing": "Checkpointing strategy",
    "optimizer": "Optimizer",
    "attn": "Attention",
    "gpus": "GPUs",
    "sharding": "Sharding",
    "offload": "CPU offload",
    "device": "Device",
}
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Method", ("method", "quant", "double_quant", "dtype")),
    ("LoRA adapters", ("rank", "alpha", "dropout", "targets", "dora", "rslora")),
    ("Batch and activations", ("seq_len", "batch_size", "gradient_checkpointing", "checkpointing", "attn")),
    ("Optimizer and GPUs", ("optimizer", "gpus", "sharding", "offload", "device")),
)
AUTO_QUANT = ("", "auto: nf4 for QLoRA, none for LoRA/full")
BOOL_OPTIONS = (("true", "on"), ("false", "off"))


@dataclass(frozen=True)
class FormField:
    """One input of the planner form."""

    name: str
    label: str
    help: str
    kind: Kind
    default: str
    options: tuple[tuple[str, str], ...] = ()
    min: str | None = None
    max: str | None = None
    step: str | None = None


def as_text(value: object) -> str:
    """A plan value as it appears in a form or a query string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _literal_values(annotation: Any) -> tuple[str, ...]:
    """The choices of a Literal (or an optional Literal); () for anything else."""
    if get_origin(annotation) is Literal:
        return tuple(str(v) for v in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _literal_values(args[0])
    return ()


def _bounds(info: FieldInfo) -> tuple[str | None, str | None]:
    low = high = None
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge | annotated_types.Gt):
            low = as_text(meta.ge if isinstance(meta, annotated_types.Ge) else meta.gt)
        if isinstance(meta, annotated_types.Le | annotated_types.Lt):
            high = as_text(meta.le if isinstance(meta, annotated_types.Le) else meta.lt)
    return low, high


def _field(name: str, info: FieldInfo) -> FormField:
    base = FormField(
        name=name,
        label=LABELS.get(name, name),
        help=(info.description or "").strip(),
        kind="text",
        default=as_text(info.default),
    )
    annotation = info.annotation
    if annotation is bool:
        return replace(base, kind="select", options=BOOL_OPTIONS)
    if annotation in (int, float):
        low, high = _bounds(info)
        return replace(base, kind="number", min=low, max=high, step="1" if annotation is int else "any")
    values = _literal_values(annotation)
    if name == "quant":  # None means "follow the method"
        return replace(base, kind="select", default="", options=(AUTO_QUANT, *((v, v) for v in values)))
    if values:
        return replace(base, kind="select", options=tuple((v, v) for v in values))
    return base


def form_groups() -> list[tuple[str, list[FormField]]]:
    """The plan inputs in display groups, with TrainingPlan's defaults, limits and descriptions."""
    defaults = TrainingPlan.model_fields
    fields = {name: _field(name, info) for name, info in defaults.items()}
    return [(title, [fields[n] for n in names]) for title, names in GROUPS]


def form_values(params: Mapping[str, str]) -> dict[str, str]:
    """What the form shows: the submitted values, else the defaults (model: empty)."""
    values = {f.name: f.default for _, group in form_groups() for f in group}
    values["model"] = ""
    values.update({k: v for k, v in params.items() if k in values})
    return values


def parse_query(params: Mapping[str, str]) -> EstimateRequest:
    """The planner's GET query as an EstimateRequest; empty inputs mean "the default". Raises InputError."""
    data = {k: v for k, v in params.items() if v.strip() != ""}
    try:
        return PlanQuery.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


def canonical_query(request: EstimateRequest) -> str:
    """The shortest query naming this model and plan: the model and every field that differs from the default."""
    default = TrainingPlan().model_dump()
    chosen = request.to_plan().model_dump()
    pairs = [("model", request.model)]
    pairs += [(k, as_text(v)) for k, v in chosen.items() if v != default[k]]
    return urlencode(pairs)
