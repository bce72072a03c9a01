"""Request and response models of the JSON API; plan fields come from TrainingPlan itself, never copied."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.band import BandAnswer
from app.core.gpus import Recommendation
from app.core.plan import TrainingPlan
from app.core.result import Adjustment, Params, PhasePeak, Term
from app.core.spec import ArchSummary, ModelSource, ModelSpec
from app.core.verdict import Verdict
from app.service import ExportFormat

MAX_MODEL_CHARS = 300


class EstimateRequest(TrainingPlan):
    """A model and a training plan: every TrainingPlan field, with TrainingPlan's names, defaults and limits."""

    # A JSON body must use the schema's types (no 0 for false); query strings are parsed leniently below.
    model_config = ConfigDict(strict=True)

    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_CHARS,
        description="A catalog id (see /api/v1/models) or a Hub id `org/name[@revision]`.",
        examples=["meta-llama/Llama-2-7b-hf"],
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_are_strings(cls, value: object) -> object:
        """Runs before TrainingPlan's own splitter, which would str() a 5 into the module name "5"."""
        if isinstance(value, list | tuple) and not all(isinstance(v, str) for v in value):
            raise ValueError('targets must be module names as strings, e.g. ["q_proj", "v_proj"], or "all-linear"')
        return value

    def to_plan(self) -> TrainingPlan:
        """The TrainingPlan part (a plain TrainingPlan, so equal plans hash equal)."""
        return TrainingPlan.model_validate(self.model_dump(include=set(TrainingPlan.model_fields)))


class PlanQuery(EstimateRequest):
    """A model and plan from a query string: values parsed from text, targets comma-separated or repeated."""

    model_config = ConfigDict(strict=False)

    @field_validator("targets", mode="before")
    @classmethod
    def _join_repeated(cls, value: object) -> object:
        """A query string gives a list: `targets=q_proj,v_proj` or `targets=q_proj&targets=v_proj`."""
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        return value


class EstimateQuery(PlanQuery):
    """GET /estimate's query: the plan fields (targets comma-separated) and the export format."""

    format: ExportFormat | Literal["pdf"] = Field(
        "json", description="json (the estimate object), md, csv, svg (a standalone chart) or pdf (the printed report)."
    )


class FitQuery(PlanQuery):
    """GET /fit's query: the plan fields and the GPU tier to fit."""

    gpu: str = Field(min_length=1, max_length=60, description="A GPU tier name from /api/v1/gpus, e.g. 'RTX 4090'.")


class ModelRef(BaseModel):
    """The resolved model an estimate is for."""

    id: str
    source: ModelSource
    revision: str | None
    architecture: str
    model_type: str
    num_params: int


class EstimateResponse(BaseModel):
    """One estimate: the breakdown at the peak, the phases, the totals and the GPU recommendation."""

    model: ModelRef
    plan: TrainingPlan
    params: Params
    breakdown: list[Term]
    phases: list[PhasePeak]
    peak_phase: str
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_bytes: int
    double_quant_saving_bytes: int | None
    offloaded_bytes: int = Field(0, description="Bytes in host RAM instead of on a GPU (offload); in no device total.")
    notes: list[str]
    adjustments: list[Adjustment] = Field(
        default_factory=list,
        description="Settings the real stack refuses, changed to the nearest accepted plan (`plan` is that plan).",
    )
    recommendations: Recommendation | None = Field(description="None for device cpu plans.")
    verdict: Verdict | None = Field(
        None, description="fits / tight / does_not_fit with the headline sentence; None for device cpu plans."
    )
    uncertainty: BandAnswer | None = Field(
        None,
        description="The range the measured peak is likely in, from comparable verified runs (`band`), or None "
        "with the `reason` (no comparable runs, too few, no store).",
    )
    safe_answer: bool = Field(False, description="The verdict was judged on the band's upper end (`safe=true`).")


class ModelSummary(BaseModel):
    """A resolved model: where it came from, its architecture fields and the size of its inventory."""

    id: str
    source: ModelSource
    revision: str | None = Field(description="Commit sha the config was read at (Hub models).")
    architecture: str
    model_type: str
    num_params: int
    published_params: int | None
    arch: ArchSummary
    module_groups: int = Field(description="Distinct module groups of the inventory (layers folded).")
    notes: list[str]

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelSummary:
        return cls(
            id=spec.id,
            source=spec.source,
            revision=spec.revision,
            architecture=spec.arch.architecture,
            model_type=spec.arch.model_type,
            num_params=spec.num_params,
            published_params=spec.published_params,
            arch=spec.arch,
            module_groups=len(spec.groups),
            notes=list(spec.notes),
        )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Created(BaseModel):
    """The id the store gave a new measurement."""

    id: int


def jsonable_accuracy(value: object) -> dict[str, Any]:
    """store.accuracy() as a JSON object, whether the store returns a dict or a pydantic model."""
    if isinstance(value, BaseModel):
        dumped: dict[str, Any] = value.model_dump(mode="json")
        return dumped
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(f"store.accuracy() returned {type(value).__name__}, not a mapping")


class BuildSlots(BaseModel):
    """The inventory build pool: slots, builds running and builds waiting for a slot."""

    workers: int
    queue: int
    running: int
    waiting: int


class Readiness(BaseModel):
    """Ready to take traffic: inventory build slots free (saturated answers 503)."""

    status: Literal["ready"] = "ready"
    inventory_builds: BuildSlots
