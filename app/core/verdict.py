"""The one verdict of a plan: fits with the headroom, fits but tight, or does not fit — with its words and counts.

Every edge (the result page, the CLI, the Markdown export, the JSON) says the verdict through `verdict()` and the
tiers' "headroom left" through `left_text()`, so the headline, the colours and the tiers table cannot disagree.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.gpus import Recommendation, TierFit
from app.core.plan import MAX_GPUS
from app.core.result import Estimate
from app.core.spec import ModelSpec
from app.core.tiers import find_tier
from app.core.units import GIB

VerdictState = Literal["fits", "tight", "does_not_fit"]
STATE_WORDS: dict[VerdictState, str] = {
    "fits": "fits with the headroom kept free",
    "tight": "fits, but only inside the headroom reserve",
    "does_not_fit": "does not fit",
}


class Verdict(BaseModel):
    """What the headline says: the state, one sentence, and the GPUs it names."""

    model_config = ConfigDict(frozen=True)

    state: VerdictState
    label: str = Field(description="The state in words (STATE_WORDS).")
    text: str = Field(description="The headline sentence (plain text).")
    gpu: str | None = Field(description="The tier the sentence names, if any.")
    gpus: int | None = Field(description="How many of it the sentence names (the count the cost is for).")
    fewest_gpus: int | None = Field(None, description="Fewest GPUs of that tier that hold the plan (tiers table).")
    max_gpus: int | None = Field(None, description="Largest GPU count searched, when nothing holds the plan.")
    tie_break: str | None = Field(None, description="Why this tier over an equal one, when a tie decided it.")


def _plural(n: int) -> str:
    return f"{n} GPU{'s' if n != 1 else ''}"


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:,.2f} GiB"


def gpu_limit(model: ModelSpec, est: Estimate) -> int:
    """The most GPUs the recommendation searches: layers split across GPUs need a layer each (sharding none)."""
    return min(MAX_GPUS, model.arch.num_layers) if est.plan.sharding == "none" else MAX_GPUS


def left_text(t: TierFit, headroom: float) -> str:
    """The tiers table's "headroom left", in the verdict's own terms: what is left after the reserve, how far into
    the reserve a tight plan reaches, or how far over budget it is."""
    left = t.budget_bytes - t.judged_bytes
    reserve = f"{headroom:.0%} reserve"
    if t.state == "fits":
        return f"{_gib(left)} left after the {reserve}"
    if t.state == "tight":
        return f"tight: {_gib(-left)} into the {reserve}"
    return f"over budget by {_gib(-left)}"


def _tight(rec: Recommendation) -> TierFit | None:
    """The smallest tier that runs the plan and holds it on plan.gpus only inside its headroom reserve."""
    tight = [t for t in rec.tiers if t.state == "tight" and t.runs]
    order = {t.gpu: (tier.memory_gb, tier.launched) if (tier := find_tier(t.gpu)) else (0, 0) for t in tight}
    return min(tight, key=lambda t: (*order[t.gpu], t.gpu)) if tight else None


def tie_break(rec: Recommendation) -> str | None:
    """One line when the recommended option tied another (same count, same marketed size, same or no cost) and
    the tie went to the older, cheaper generation (gpus.TIE_BREAK)."""
    if len(rec.options) < 2:
        return None
    best, tiers = rec.options[0], {o.gpu: find_tier(o.gpu) for o in rec.options}
    mine = tiers[best.gpu]
    for other in rec.options[1:]:
        theirs = tiers[other.gpu]
        same_cost = best.cost_usd == other.cost_usd or (best.cost_usd is None and other.cost_usd is None)
        if mine and theirs and other.gpus == best.gpus and theirs.memory_gb == mine.memory_gb and same_cost:
            return (
                f"{best.gpu} over {other.gpu}: the same {mine.memory_gb} GB marketed size"
                f"{'' if best.cost_usd is None else ' and cost'}, so the older ({mine.launched}), cheaper generation"
            )
    return None


def _fits(est: Estimate, rec: Recommendation) -> Verdict:
    assert rec.recommended is not None and rec.recommended_gpus is not None
    n, plan = rec.recommended_gpus, est.plan
    tier = next((t for t in rec.tiers if t.gpu == rec.recommended), None)
    fewest = tier.gpus_needed if tier else None
    keep = f"{rec.headroom:.0%} headroom kept free"
    why = "the cheapest run" if rec.options[0].cost_usd is not None else "the smallest GPU that holds it"
    if n == plan.gpus:
        fewer = f"; {fewest} would already hold it (see the tiers)" if fewest is not None and fewest < n else ""
        text = f"Fits on {n} × {rec.recommended}, {why} among the GPUs that can run this plan ({keep}){fewer}."
    else:
        text = (
            f"Cheapest run: {n} × {rec.recommended} under sharding {plan.sharding}; it also fits on "
            f"{_plural(plan.gpus)} of a costlier tier ({keep})."
        )
    return Verdict(
        state="fits",
        label=STATE_WORDS["fits"],
        text=text,
        gpu=rec.recommended,
        gpus=n,
        fewest_gpus=fewest,
        tie_break=tie_break(rec),
    )


def _elsewhere(rec: Recommendation, est: Estimate, limit: int) -> str:
    if rec.recommended is not None:
        return f"needs {rec.recommended_gpus} × {rec.recommended} under sharding {est.plan.sharding}"
    if est.plan.sharding == "ddp":
        return "no tier holds it: every DDP replica holds the whole model (use fsdp or zero3 to split it)"
    if rec.recommended is not None:
        return f"needs {rec.recommended_gpus} × {rec.recommended} under sharding {est.plan.sharding}"
    return f"no GPU count of any tier up to {limit:,} holds it under sharding {est.plan.sharding}"


def verdict(model: ModelSpec, est: Estimate, rec: Recommendation | None) -> Verdict | None:
    """The headline's state and sentence (None for a CPU reference plan, which has no GPU verdict).

    fits: a tier that runs the plan holds it on plan.gpus GPUs within usable × (1 − headroom) — the
    recommendation's own test. tight: none does, but one holds it within its usable memory (the plan eats into the
    headroom reserve). does_not_fit: neither; the sentence gives the multi-GPU answer, or says that no count up to
    the search limit holds it.
    """
    if rec is None:
        return None
    plan, limit = est.plan, gpu_limit(model, est)
    if rec.recommended is not None and any(t.fits and t.runs for t in rec.tiers):
        return _fits(est, rec)
    on = _plural(plan.gpus)
    tight = _tight(rec)
    if tight is not None:
        into = tight.judged_bytes - tight.budget_bytes
        text = (
            f"Fits on {plan.gpus} × {tight.gpu} only inside the {rec.headroom:.0%} headroom reserve "
            f"({_gib(into)} of it used); with the reserve kept it {_elsewhere(rec, est, limit)}."
        )
        return Verdict(state="tight", label=STATE_WORDS["tight"], text=text, gpu=tight.gpu, gpus=plan.gpus)
    if rec.recommended is not None:
        text = f"Does not fit on {on} of any tier; {_elsewhere(rec, est, limit)}."
        gpu, gpus = rec.recommended, rec.recommended_gpus
    else:
        blocked = any(t.gpus_needed is not None and not t.runs for t in rec.tiers)
        why = " (the tiers that would hold it cannot run it: see the tiers)" if blocked else ""
        text = (
            f"Does not fit: {_elsewhere(rec, est, limit)}{why}. Try QLoRA, gradient checkpointing, a shorter "
            "sequence, a smaller batch, or zero3/fsdp sharding."
        )
        gpu, gpus = None, None
    return Verdict(
        state="does_not_fit",
        label=STATE_WORDS["does_not_fit"],
        text=text,
        gpu=gpu,
        gpus=gpus,
        max_gpus=limit if rec.recommended is None else None,
    )
