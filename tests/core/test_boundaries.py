"""GPU tiers: boundary cases of the recommendation, and plan validation messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.estimate import estimate
from app.core.gpus import GPU_TIERS, GpuTier, budget_bytes, find_tier, first_passing, recommend
from app.core.plan import TrainingPlan
from tests.configs import spec


def test_fit_boundary_is_inclusive_and_exact() -> None:
    tier = GpuTier(name="X", segment="consumer", memory_gb=1, usable_bytes=1000)
    assert budget_bytes(tier, 0.10) == 900
    assert budget_bytes(tier, 0.0) == 1000
    # a fraction whose budget is not whole: the floored budget is the same test as device <= usable x (1 - h)
    assert budget_bytes(tier, 0.0995) == 900 and 900 <= 1000 * (1 - 0.0995) < 901


def test_monotone_search_finds_the_first_passing_value() -> None:
    probes: list[int] = []

    def at_least_37(n: int) -> bool:
        probes.append(n)
        return n >= 37

    assert first_passing(at_least_37, 1, 4096) == 37
    assert len(probes) <= 12  # bisection: log2 of the range
    assert first_passing(at_least_37, 36, 37) == 37 and first_passing(at_least_37, 1, 2) == 2


def test_small_qlora_fits_a_consumer_card_and_the_smallest_is_recommended() -> None:
    model = spec("meta-llama/Llama-2-7b-hf")
    rec = recommend(model, estimate(model, TrainingPlan()))
    assert rec.recommended_gpus == 1
    best = next(t for t in GPU_TIERS if t.name == rec.recommended)
    fitting = [f for f in rec.tiers if f.fits]
    assert best.usable_bytes == min(f.usable_bytes for f in fitting)
    # every tier smaller than the recommendation does not fit
    assert all(not f.fits for f in rec.tiers if f.usable_bytes < best.usable_bytes)


def test_full_70b_needs_many_gpus_under_zero3_and_none_under_ddp() -> None:
    model = spec("meta-llama/Llama-2-70b-hf")
    plan = TrainingPlan(method="full", optimizer="adamw", sharding="zero3")
    rec = recommend(model, estimate(model, plan))
    h100 = next(f for f in rec.tiers if f.gpu == "H100 80GB")
    assert not h100.fits and h100.gpus_needed is not None and h100.gpus_needed > 8
    # one GPU fewer than needed does not fit, the count needed does
    tier = find_tier("H100 80GB")
    assert tier is not None
    at = estimate(model, plan.model_copy(update={"gpus": h100.gpus_needed})).device_bytes
    below = estimate(model, plan.model_copy(update={"gpus": h100.gpus_needed - 1})).device_bytes
    assert at <= budget_bytes(tier, 0.10) < below
    ddp_plan = TrainingPlan(method="full", optimizer="adamw", sharding="ddp")
    ddp = recommend(model, estimate(model, ddp_plan))
    assert all(f.gpus_needed is None and f.reason for f in ddp.tiers)
    assert ddp.recommended is None


def test_find_tier_is_forgiving_about_case_and_spaces() -> None:
    assert find_tier("rtx4090") is not None and find_tier("H100 80gb") is not None and find_tier("nope") is None


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"method": "qlora", "quant": "none"}, "qlora needs a quantized base"),
        ({"method": "lora", "quant": "nf4"}, "use method qlora"),
        ({"offload": True}, "offload needs sharding"),
        ({"targets": "q_proj,,v_proj"}, "non-empty module name"),
        ({"targets": "q_proj;rm -rf"}, "is not a module name"),
        ({"seq_len": 0}, "greater than or equal to 1"),
        ({"rank": 5000}, "less than or equal to 4096"),
    ],
)
def test_plan_errors_say_what_to_fix(kw: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingPlan(**kw)
    assert fragment in str(info.value)


def test_targets_that_match_nothing_or_unsupported_modules() -> None:
    from app.errors import PlanError

    with pytest.raises(PlanError, match="none of the targets"):
        estimate(spec("meta-llama/Llama-2-7b-hf"), TrainingPlan(targets="qkv_proj"))
    with pytest.raises(PlanError, match="LoRA cannot adapt"):
        estimate(spec("mistralai/Mixtral-8x7B-v0.1"), TrainingPlan(targets="experts"))
    # PEFT refuses dropout (and DoRA) on the fused experts all-linear wraps with ParamWrapper: a strict plan is
    # refused (tests/core/test_stack_adjustments.py: otherwise answered for the nearest accepted plan)
    with pytest.raises(PlanError, match="dropout"):
        estimate(spec("mistralai/Mixtral-8x7B-v0.1"), TrainingPlan(targets="all-linear", dropout=0.05, strict=True))
    with pytest.raises(PlanError, match="DoRA"):
        plan = TrainingPlan(targets="all-linear", dropout=0, dora=True, strict=True)
        estimate(spec("mistralai/Mixtral-8x7B-v0.1"), plan)
    est = estimate(spec("meta-llama/Llama-2-7b-hf"), TrainingPlan(targets="q_proj,qkv_proj"))
    assert any("qkv_proj" in n for n in est.notes)
