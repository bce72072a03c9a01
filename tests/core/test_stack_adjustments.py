"""Plans the real stack refuses: answered for the nearest accepted plan (stated), or refused when strict."""

from __future__ import annotations

import pytest

from app.catalog import catalog_ids
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.errors import StackRefusal
from tests.configs import spec

MOE = ("mistralai/Mixtral-8x7B-v0.1",)


def test_dropout_on_parameter_wrapped_experts_is_answered_at_dropout_zero() -> None:
    model = spec("mistralai/Mixtral-8x7B-v0.1")
    adjusted = estimate(model, TrainingPlan())
    assert [(a.field, a.requested, a.used) for a in adjusted.adjustments] == [("dropout", 0.05, 0.0)]
    assert "ParamWrapper" in adjusted.adjustments[0].why
    assert adjusted.plan.dropout == 0.0
    explicit = estimate(model, TrainingPlan(dropout=0.0))
    assert explicit.adjustments == () and explicit.peak_allocated_bytes == adjusted.peak_allocated_bytes


def test_dora_and_dropout_are_both_changed_and_both_said() -> None:
    adjusted = estimate(spec("mistralai/Mixtral-8x7B-v0.1"), TrainingPlan(dora=True))
    assert [a.field for a in adjusted.adjustments] == ["dropout", "dora"]
    assert adjusted.plan.dora is False


def test_strict_plans_are_refused_with_peft_reason() -> None:
    with pytest.raises(StackRefusal) as caught:
        estimate(spec("mistralai/Mixtral-8x7B-v0.1"), TrainingPlan(strict=True))
    assert caught.value.field == "dropout" and "without strict" in caught.value.detail


def test_attention_only_targets_need_no_change() -> None:
    est = estimate(spec("mistralai/Mixtral-8x7B-v0.1"), TrainingPlan(targets="q_proj,v_proj", strict=True))
    assert est.adjustments == ()


def test_dense_models_are_never_adjusted() -> None:
    assert estimate(spec("meta-llama/Llama-3.1-8B"), TrainingPlan(dora=True, strict=True)).adjustments == ()


@pytest.mark.parametrize("model_id", catalog_ids())
def test_the_default_plan_answers_for_every_catalog_model(model_id: str) -> None:
    est = estimate(spec(model_id), TrainingPlan())
    assert est.peak_allocated_bytes > 0
    assert all(a.field in ("dropout", "dora") for a in est.adjustments)
