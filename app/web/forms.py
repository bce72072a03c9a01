"""The planner form: its fields derived from TrainingPlan, query parsing, and canonical permalinks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlencode

import annotated_types
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from app.core.plan import TrainingPlan
from app.http.problems import from_validation, input_error
from app.http.schemas import EstimateRequest, PlanQuery
from app.plan_input import as_text, bounds, literal_values, read_values

Kind = Literal["text", "number", "select"]

# Labels and groups are presentation; names, choices, limits, defaults and help come from TrainingPlan.
LABELS: dict[str, str] = {
    "method": "Method",
    "quant": "Base quantization",
    "mxfp4": "MXFP4 experts (gpt-oss)",
    "double_quant": "Double quantization",
    "dtype": "Compute dtype",
    "autocast": "Autocast over fp32 weights",
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
    "reentrant": "Reentrant checkpointing",
    "checkpoint_every": "Checkpoint every n-th layer",
    "grad_accum_steps": "Gradient accumulation steps",
    "keep_logits": "Loop keeps the logits",
    "loop": "Training loop",
    "checkpoint_offload": "Checkpoints in host memory",
    "packing": "Packed rows",
    "fused_cross_entropy": "Liger fused cross-entropy",
    "router_aux_loss": "MoE router aux loss",
    "optimizer": "Optimizer",
    "attn": "Attention",
    "gpus": "GPUs",
    "sharding": "Sharding",
    "fsdp_version": "FSDP version",
    "fsdp_units": "FSDP2 units",
    "fsdp_backward_prefetch": "FSDP1 backward prefetch",
    "zero_buckets": "DeepSpeed ZeRO bucket sizes",
    "offload": "CPU offload",
    "fsdp_mixed_precision": "FSDP2 mixed precision (fp32 shards)",
    "fsdp_reduce_dtype": "FSDP2 reduce dtype",
    "device": "Device",
    "strict": "Strict",
    "stack": "Software stack",
}
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Method", ("method", "quant", "double_quant", "mxfp4", "dtype", "autocast")),
    ("LoRA adapters", ("rank", "alpha", "dropout", "targets", "dora", "rslora")),
    (
        "Batch and activations",
        (
            "seq_len",
            "batch_size",
            "grad_accum_steps",
            "gradient_checkpointing",
            "checkpointing",
            "reentrant",
            "checkpoint_every",
            "checkpoint_offload",
            "attn",
            "packing",
            "keep_logits",
            "loop",
            "fused_cross_entropy",
            "router_aux_loss",
        ),
    ),
    (
        "Optimizer and GPUs",
        (
            "optimizer",
            "gpus",
            "sharding",
            "fsdp_version",
            "fsdp_units",
            "fsdp_backward_prefetch",
            "zero_buckets",
            "offload",
            "fsdp_mixed_precision",
            "fsdp_reduce_dtype",
            "device",
            "stack",
            "strict",
        ),
    ),
)


def field_label(name: str) -> str:
    """The form's label of a field (`seq_len` -> "Sequence length"), for error messages; other names as they are."""
    return {"model": "Model", "body": "Request body", "plan": "Plan", **LABELS}.get(name, name)


AUTO_QUANT = ("", "auto: nf4 for QLoRA, none for LoRA/full")
AUTO_OPTIMIZER = ("", "auto: adamw for full, paged_adamw_32bit for LoRA/QLoRA")
AUTO = {"quant": AUTO_QUANT, "optimizer": AUTO_OPTIMIZER}  # fields whose default follows the method
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
        low, high = _browser_bounds(info) if annotation is float else bounds(info)
        return replace(base, kind="number", min=low, max=high, step="1" if annotation is int else "any")
    values = literal_values(annotation)
    if name in AUTO:  # empty means "follow the method"
        return replace(base, kind="select", default="", options=(AUTO[name], *((v, v) for v in values)))
    if values:
        return replace(base, kind="select", options=tuple((v, v) for v in values))
    return base


# HTML min/max are inclusive: an exclusive bound (alpha > 0, dropout < 1) moves in by this much, so the browser
# refuses the bound itself as the server does
EXCLUSIVE_MARGIN = 1e-9


def _browser_bounds(info: FieldInfo) -> tuple[str | None, str | None]:
    """A float field's min/max for the browser: inclusive bounds as they are, exclusive ones moved in."""
    low, high = bounds(info)
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Gt):
            low = as_text(float(meta.gt) + EXCLUSIVE_MARGIN)  # type: ignore[arg-type]
        if isinstance(meta, annotated_types.Lt):
            high = as_text(float(meta.lt) - EXCLUSIVE_MARGIN)  # type: ignore[arg-type]
    return low, high


def form_groups() -> list[tuple[str, list[FormField]]]:
    """The plan inputs in display groups, with TrainingPlan's defaults, limits and descriptions."""
    defaults = TrainingPlan.model_fields
    fields = {name: _field(name, info) for name, info in defaults.items()}
    return [(title, [fields[n] for n in names]) for title, names in GROUPS]


def form_values(params: Mapping[str, str]) -> dict[str, str]:
    """What the form shows: the submitted values, else the defaults (model: empty)."""
    values = {f.name: f.default for _, group in form_groups() for f in group}
    values["model"] = ""
    values["safe"] = ""  # the verdict option (app/http/band.py AnswerOptions), not a plan field
    values.update({k: v for k, v in params.items() if k in values})
    return values


def parse_query(pairs: Iterable[tuple[str, str]]) -> EstimateRequest:
    """The planner's GET query (key, value pairs; repeated targets joined) as an EstimateRequest; empty inputs
    mean "the default". Raises InputError."""
    pairs = list(pairs)
    data: dict[str, str] = read_values(pairs)
    model = [v for k, v in pairs if k == "model" and v.strip()]
    if model:
        data["model"] = model[-1]
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


CATALOG_FILTERS = ("q", "family", "min_b", "max_b", "released_from", "released_to", "moe", "sort")


def catalog_query(params: Mapping[str, str]) -> tuple[Any, dict[str, str]]:
    """The catalog page's filters as a CatalogQuery (sizes in billions of parameters), and the values to show."""
    from app.catalog.search import CatalogQuery

    values = {k: params.get(k, "").strip() for k in CATALOG_FILTERS}
    data: dict[str, Any] = {k: v for k, v in values.items() if v and k not in ("min_b", "max_b", "moe")}
    try:
        for field, key in (("min_params", "min_b"), ("max_params", "max_b")):
            if values[key]:
                data[field] = int(float(values[key]) * 1e9)
        if values["moe"] in ("true", "false"):
            data["moe"] = values["moe"] == "true"
        return CatalogQuery.model_validate(data), values
    except ValidationError as exc:
        raise from_validation(exc) from None
    except ValueError:
        raise input_error([{"loc": ("size",), "msg": "give sizes as billions of parameters, e.g. 7 or 0.5"}]) from None
