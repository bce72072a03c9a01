"""The serving estimate's value objects: terms, per-tier capacity, the stretch on a chosen tier, the estimate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from app.core.result import Counted
from app.serving.layout import KvLayout
from app.serving.plan import ServingPlan

ServingCategory = Literal["weights", "adapters", "kv_cache", "activations", "transient", "overhead"]
Moment = Literal["prefill", "decode", "serving"]


class ServingTerm(BaseModel):
    """One named memory term per GPU, in bytes; `first_principles` until a GPU run measures it."""

    model_config = ConfigDict(frozen=True)

    term: str
    bytes: int = Field(ge=0)
    note: str
    category: ServingCategory
    counted: Counted = "allocated"
    first_principles: bool = Field(False, description="Derived from first principles; no GPU run has measured it.")
    source: str = Field("", description="The library lines (repo and path) the formula follows.")


class ServingTierFit(BaseModel):
    """How one GPU tier serves the plan: at plan.tp GPUs, and the fewest GPUs (tensor parallel) that would do."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    usable_bytes: int
    fits: bool = Field(description="Serves `concurrency` sequences of `context` tokens on plan.tp GPUs of this tier.")
    kv_pool_bytes: int | None = Field(None, description="vLLM: KV-cache memory per GPU on plan.tp GPUs (<0: short).")
    num_blocks: int | None = Field(None, description="vLLM: KV-cache blocks in the pool.")
    kv_capacity_tokens: int | None = Field(
        None, description="vLLM: tokens of KV the pool holds (max concurrency x context, as vLLM logs it)."
    )
    max_concurrency: int | None = Field(None, description="Most sequences of `context` tokens on plan.tp GPUs.")
    gpus_needed: int | None = Field(description="Fewest GPUs (tensor parallel) of this tier; None if none do.")
    reason: str | None = Field(None, description="Why it does not fit, or why gpus_needed is None.")


class ServingRecommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    headroom: float = Field(description="transformers: fraction of usable memory kept free (vLLM keeps 1 - util).")
    recommended: str | None = Field(description="Smallest tier that serves the plan on plan.tp, else fewest GPUs.")
    recommended_gpus: int | None
    tiers: tuple[ServingTierFit, ...]


class Stretch(BaseModel):
    """On a chosen tier and plan.tp GPUs: the largest concurrency at the plan's context, and the largest context
    at its concurrency."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    tp: int
    max_concurrency: int = Field(ge=0, description="At the plan's context (0: not even one sequence).")
    max_context: int = Field(ge=0, description="At the plan's concurrency (0: not even one token).")
    at_limit: bool = Field(description="A value stopped at the input limit, not at memory.")


class ServingEstimate(BaseModel):
    """What serving `plan` on `model` needs per GPU, and what each GPU tier holds."""

    model_config = ConfigDict(frozen=True)

    model: str
    revision: str | None = None
    plan: ServingPlan
    params: int = Field(description="Parameters of the served model, tied weights once.")
    layout: KvLayout
    breakdown: tuple[ServingTerm, ...]
    moment: Moment = Field(description="transformers: the larger of the prefill and last-decode peaks; vLLM: serving.")
    kv_bytes_per_token: int = Field(description="KV bytes one more token of one sequence costs per GPU (all layers).")
    vllm_version: str | None = Field(None, description="The vLLM whose allocation the estimate models.")
    vllm_tag: str | None = Field(None, description="vLLM: the release tag whose code the estimate follows.")
    vllm_files: tuple[str, ...] = Field((), description="vLLM: the files at that tag the formulas follow.")
    notes: tuple[str, ...] = ()
    recommendations: ServingRecommendation | None = None
    stretch: Stretch | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def peak_allocated_bytes(self) -> int:
        """Bytes torch's caching allocator hands out on one GPU at the peak."""
        return sum(t.bytes for t in self.breakdown if t.counted == "allocated")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def peak_reserved_bytes(self) -> int:
        return self.peak_allocated_bytes + sum(t.bytes for t in self.breakdown if t.counted == "reserved")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def device_bytes(self) -> int:
        """What nvidia-smi would show per GPU for this concurrency x context (vLLM reserves its whole pool)."""
        return self.peak_reserved_bytes + sum(t.bytes for t in self.breakdown if t.counted == "device")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def first_principles(self) -> tuple[str, ...]:
        """The terms no GPU run has measured yet."""
        return tuple(t.term for t in self.breakdown if t.first_principles)

    def term(self, name: str) -> ServingTerm | None:
        return next((t for t in self.breakdown if t.term == name), None)
