"""POST/GET /inference: the GPU memory of serving a model (vLLM paged KV cache or transformers generate())."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import ConfigDict, Field

from app.api.queries import query_dependency, query_parameters
from app.api.responses import HUB_PROBLEMS, problems
from app.core.spec import ModelSpec
from app.http.deps import PlannerDep
from app.http.schemas import ModelRef
from app.serving.estimate import plan_serving
from app.serving.plan import ServingPlan
from app.serving.report import csv_text, markdown, payload
from app.serving.result import ServingEstimate
from app.serving.sources import layout_for

router = APIRouter(tags=["serving"])

InferenceFormat = Literal["json", "md", "csv"]
MEDIA_TYPES: dict[InferenceFormat, str] = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
}
MAX_MODEL_CHARS = 300


class InferenceRequest(ServingPlan):
    """A model and a serving plan: every ServingPlan field, with ServingPlan's names, defaults and limits."""

    model_config = ConfigDict(strict=True)  # a JSON body uses the schema's types

    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_CHARS,
        description="A catalog id (see /api/v1/models) or a Hub id `org/name[@revision]`.",
        examples=["meta-llama/Llama-3.1-8B"],
    )

    def to_plan(self) -> ServingPlan:
        """The ServingPlan part (a plain ServingPlan, so equal plans hash equal)."""
        return ServingPlan.model_validate(self.model_dump(include=set(ServingPlan.model_fields)))


class InferenceQuery(InferenceRequest):
    """GET /inference's query: the serving fields parsed from text, and the export format."""

    model_config = ConfigDict(strict=False)

    format: InferenceFormat = Field("json", description="json (the serving estimate), md or csv.")


InferenceQueryDep = Annotated[InferenceQuery, Depends(query_dependency(InferenceQuery))]


class InferenceResponse(ServingEstimate):
    """GET/POST /inference's JSON: the serving estimate, with the resolved model."""

    model: ModelRef  # type: ignore[assignment]


_TEXT = {"schema": {"type": "string"}}
INFERENCE_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": "The serving estimate: JSON by default; Markdown or CSV with `format`.",
        "content": {"text/markdown": _TEXT, "text/csv": _TEXT},
    }
}


def render(model: ModelSpec, est: ServingEstimate, fmt: InferenceFormat) -> Response:
    if fmt == "md":
        text = markdown(model, est)
    elif fmt == "csv":
        text = csv_text(est)
    else:
        text = json.dumps(payload(model, est), separators=(",", ":"))
    return Response(text, media_type=MEDIA_TYPES[fmt])


async def serve_estimate(planner: PlannerDep, name: str, plan: ServingPlan) -> tuple[ModelSpec, ServingEstimate]:
    """Resolve the model (catalog or Hub), read its KV layout, and plan serving it in a worker thread."""
    model = await planner.resolve(name)
    layout = layout_for(model, settings=planner.settings)
    est = await asyncio.to_thread(plan_serving, model, plan, layout, planner.settings.headroom)
    return model, est


@router.post("/inference", response_model=None, responses={**INFERENCE_OK, **HUB_PROBLEMS, **problems(413)})
async def post_inference(
    body: InferenceRequest,
    planner: PlannerDep,
    format: Annotated[InferenceFormat, Query(description="json, md or csv.")] = "json",
) -> Response:
    """Estimate the GPU memory of serving a model (weights, KV cache, engine overheads) and the GPUs it needs."""
    model, est = await serve_estimate(planner, body.model, body.to_plan())
    return render(model, est, format)


@router.get(
    "/inference",
    response_model=None,
    responses={**INFERENCE_OK, **HUB_PROBLEMS},
    openapi_extra={"parameters": query_parameters(InferenceQuery)},
)
async def get_inference(query: InferenceQueryDep, planner: PlannerDep) -> Response:
    """Estimate the GPU memory of serving a model; serving fields as query parameters."""
    model, est = await serve_estimate(planner, query.model, query.to_plan())
    return render(model, est, query.format)
