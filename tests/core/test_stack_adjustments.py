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
    assert all(a.field in ("dropout", "dora", "targets", "attn") for a in est.adjustments)


@pytest.mark.parametrize("model_id", ["google/gemma-2-9b", "openai/gpt-oss-20b"])
def test_models_without_sdpa_are_answered_with_eager(model_id: str) -> None:
    est = estimate(spec(model_id), TrainingPlan(dropout=0.0))
    assert [(a.field, a.requested, a.used) for a in est.adjustments] == [("attn", "sdpa", "eager")]
    assert "_supports_sdpa" in est.adjustments[0].why and est.plan.attn == "eager"
    with pytest.raises(StackRefusal) as caught:
        estimate(spec(model_id), TrainingPlan(dropout=0.0, strict=True))
    assert caught.value.field == "attn"


def test_llama4_without_flash_attention_is_answered_with_sdpa() -> None:
    est = estimate(spec("meta-llama/Llama-4-Scout-17B-16E"), TrainingPlan(attn="flash_attention_2", targets="q_proj"))
    assert [(a.field, a.used) for a in est.adjustments] == [("attn", "sdpa")]


def test_llama4_router_is_left_out_of_all_linear() -> None:
    """PEFT's lora.Linear cannot wrap Llama4Router (an nn.Linear whose forward returns a tuple): the step fails."""
    est = estimate(spec("meta-llama/Llama-4-Scout-17B-16E"), TrainingPlan())
    targets = next(a for a in est.adjustments if a.field == "targets")
    assert targets.requested == "all-linear" and "router" not in targets.used and "q_proj" in targets.used
    assert est.plan.targets == targets.used
    with pytest.raises(StackRefusal) as caught:
        estimate(spec("meta-llama/Llama-4-Scout-17B-16E"), TrainingPlan(targets="q_proj,router", strict=True))
    assert caught.value.field == "targets" and caught.value.accepted == ("q_proj",)


@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V3"])
def test_converted_moe_families_wrap_their_experts_so_dropout_is_answered_at_zero(model_id: str) -> None:
    """transformers' conversion table maps qwen3_moe and deepseek_v3 to the qwen2_moe pattern, so PEFT wraps them."""
    est = estimate(spec(model_id), TrainingPlan())
    assert [(a.field, a.used) for a in est.adjustments] == [("dropout", 0.0)]


def test_lora_on_fused_experts_under_fsdp1_is_answered_under_fsdp2() -> None:
    """PEFT's ParamWrapper fails under FSDP1's flat parameters (measured on CPU ranks: app/core/adapters.py
    fsdp1_refusal): the nearest plan is FSDP2, its backward prefetch dropped with it."""
    model = spec("mistralai/Mixtral-8x7B-v0.1")
    fsdp1 = {"dropout": 0.0, "sharding": "fsdp", "gpus": 8, "fsdp_version": 1, "fsdp_backward_prefetch": "pre"}
    adjusted = estimate(model, TrainingPlan(**fsdp1))
    assert [(a.field, a.requested, a.used) for a in adjusted.adjustments] == [("fsdp_version", 1, 2)]
    assert "ParamWrapper" in adjusted.adjustments[0].why
    assert adjusted.plan.fsdp_version == 2 and adjusted.plan.fsdp_backward_prefetch == "none"
    fsdp2 = {**fsdp1, "fsdp_version": 2, "fsdp_backward_prefetch": "none"}
    assert adjusted.peak_allocated_bytes == estimate(model, TrainingPlan(**fsdp2)).peak_allocated_bytes
    with pytest.raises(StackRefusal, match="use fsdp_version 2"):
        estimate(model, TrainingPlan(**fsdp1, strict=True))
    attention = estimate(model, TrainingPlan(**{**fsdp1, "targets": "q_proj,v_proj"}, strict=True))
    assert attention.adjustments == () and attention.plan.fsdp_version == 1
