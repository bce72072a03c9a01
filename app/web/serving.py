"""The Serve page: a form of ServingPlan's fields and, once a model is named, the serving estimate (GET permalink)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from app import catalog
from app.errors import GpuplanError, InputError
from app.http import API_PREFIX
from app.http.deps import PlannerDep
from app.http.problems import from_gpuplan
from app.plan_input import PlanField, as_text
from app.serving.estimate import plan_serving
from app.serving.inputs import build_serving_plan, canonical_pairs, read_values, serving_fields
from app.serving.plan import ServingPlan
from app.serving.sources import layout_for

router = APIRouter(include_in_schema=False)

LABELS = {
    "engine": "Engine",
    "weights": "Weight precision",
    "adapters": "Unmerged LoRA adapters",
    "adapter_rank": "Adapter rank",
    "context": "Context (prompt + output)",
    "output_tokens": "Output tokens",
    "concurrency": "Concurrent sequences",
    "kv_dtype": "KV-cache dtype",
    "tp": "Tensor-parallel GPUs",
    "gpu_memory_utilization": "GPU memory utilization",
    "max_num_batched_tokens": "Max batched tokens",
    "max_num_seqs": "Max sequences",
    "block_size": "Block size",
    "enforce_eager": "Enforce eager",
    "profile_cudagraphs": "CUDA graphs in budget",
    "gpu": "Stretch on GPU tier",
    "device": "Device",
}
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Model as served", ("engine", "weights", "adapters", "adapter_rank", "kv_dtype", "tp")),
    ("Load", ("context", "output_tokens", "concurrency", "gpu")),
    (
        "vLLM engine",
        (
            "gpu_memory_utilization",
            "max_num_batched_tokens",
            "max_num_seqs",
            "block_size",
            "enforce_eager",
            "profile_cudagraphs",
        ),
    ),
)
EXPORTS = (("Markdown", "md"), ("CSV", "csv"), ("JSON", "json"))
MAX_TRAIN_QUERY = 2000  # a carried training plan, as the report's halves take it (app/compare/entries.MAX_PLAN_TEXT)


@dataclass(frozen=True)
class ServeField:
    """One input of the Serve form, from ServingPlan's field (kind, choices, limits, default, help)."""

    field: PlanField
    label: str

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def options(self) -> tuple[tuple[str, str], ...]:
        if self.field.kind == "bool":
            return (("true", "on"), ("false", "off"))
        return tuple((c, c) for c in self.field.choices)

    @property
    def step(self) -> str:
        return "1" if self.field.kind == "int" else "any"


def form_groups() -> list[tuple[str, list[ServeField]]]:
    fields = {f.name: ServeField(f, LABELS.get(f.name, f.name)) for f in serving_fields()}
    return [(title, [fields[n] for n in names]) for title, names in GROUPS]


def form_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The submitted values, else ServingPlan's defaults (model: empty)."""
    values = {f.name: as_text(f.default) for f in serving_fields()}
    values["model"] = ""
    values.update({k: v for k, v in pairs if k in values})
    return values


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def _links(model_id: str, plan: ServingPlan, train: str) -> dict[str, Any]:
    """The permalink (carrying the training plan, when one came along), the exports, and the procurement report of
    this serving plan with the training plan beside it."""
    pairs = [("model", model_id), *canonical_pairs(plan)]
    query = urlencode(pairs)
    api = f"{API_PREFIX}/inference?{query}"
    carried = [("train", train)] if train else []
    return {
        "permalink": f"/serve?{urlencode(pairs + carried)}",
        "exports": [(label, f"{api}&format={fmt}") for label, fmt in EXPORTS],
        "report_link": "/report?" + urlencode([*carried, ("serve", urlencode(pairs, safe="/@"))]),
    }


def carried_training(pairs: Iterable[tuple[str, str]]) -> str:
    """The training plan the result page's "Serve this model" link carried (`train=<its query string>`), or ""."""
    found = [v.strip() for k, v in pairs if k == "train" and v.strip()]
    return found[-1][:MAX_TRAIN_QUERY] if found else ""


@router.get("/serve", response_class=HTMLResponse)
async def serve_page(request: Request, planner: PlannerDep) -> Response:
    """The Serve form; with ?model=... also the serving estimate, its tiers and exports (the URL is the permalink)."""
    pairs = request.query_params.multi_items()
    context: dict[str, Any] = {
        "groups": form_groups(),
        "values": form_values(pairs),
        "catalog_ids": catalog.catalog_ids(),
        "train": carried_training(pairs),
    }
    context |= {"est": None, "model": None, "problem": None}
    name = context["values"]["model"].strip()
    status = 200
    if name:
        try:
            context |= await _estimate(planner, name, read_values(pairs), context["train"])
        except GpuplanError as exc:
            context["problem"], status = from_gpuplan(exc), exc.status
    return _templates(request).TemplateResponse(request, "serve.html", context, status_code=status)


async def _estimate(planner: PlannerDep, name: str, values: dict[str, str], train: str) -> dict[str, Any]:
    if len(name) > 300:
        raise InputError(
            "model: give a catalog or Hub id under 300 characters", errors=[{"field": "model", "message": "too long"}]
        )
    plan = build_serving_plan(values)
    model = await planner.resolve(name)
    est = await asyncio.to_thread(
        plan_serving, model, plan, layout_for(model, settings=planner.settings), planner.settings.headroom
    )
    return {"model": model, "est": est, **_links(model.id, plan, train)}
