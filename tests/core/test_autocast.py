"""autocast: bf16/fp16 autocast over fp32-loaded weights (TrainingArguments bf16=True on a float32 model)."""

from __future__ import annotations

import pytest

from app.core.adapters import lora_key
from app.core.estimate import estimate, step_terms
from app.core.plan import TrainingPlan
from app.core.quant import rounded
from app.core.result import Estimate
from app.core.tensors import base_key, plan_tensors
from tests.configs import spec

MODEL = "meta-llama/Llama-2-7b-hf"


def _term(est: Estimate, name: str) -> int:
    term = est.term(name)
    return term.bytes if term is not None else 0


def test_autocast_is_for_16_bit_compute_over_lora_or_full() -> None:
    with pytest.raises(ValueError, match="use dtype bf16 or fp16"):
        TrainingPlan(method="lora", dtype="fp32", autocast=True)
    with pytest.raises(ValueError, match="method lora or full"):
        TrainingPlan(method="qlora", autocast=True)
    assert TrainingPlan(method="lora", autocast=True).weight_dtype == "fp32"
    assert TrainingPlan(method="lora").weight_dtype == "bf16"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_weights_gradients_and_states_are_those_of_fp32_weights(method: str) -> None:
    model = spec(MODEL)
    mixed = estimate(model, TrainingPlan(method=method, optimizer="adamw", autocast=True))
    fp32 = estimate(model, TrainingPlan(method=method, optimizer="adamw", dtype="fp32"))
    for name in ("base_weight_bytes", "optimizer_state_bytes", "lora_adapter_bytes"):
        assert _term(mixed, name) == _term(fp32, name), name
    assert mixed.plan.autocast and _term(mixed, "base_weight_bytes") > 4 * 6_000_000_000 - 1


def test_the_cache_holds_every_trainable_weight_copy_through_a_checkpointed_forward() -> None:
    model = spec(MODEL)

    def cache(plan: TrainingPlan) -> int:
        return step_terms(model, plan, plan_tensors(model, base_key(plan), lora_key(plan))).autocast_cache

    linear = [g for g in model.groups if g.kind == "linear" and g.in_layers]
    copies = sum(g.count * rounded(g.in_features * g.out_features * 2) for g in linear)
    full = TrainingPlan(method="full", optimizer="adamw", autocast=True)
    assert cache(full) == copies > 6 * 2**30  # Llama 2 7B's decoder linears in bf16
    assert 0 < cache(TrainingPlan(method="lora", autocast=True)) < copies // 100  # LoRA A/B only
    assert cache(TrainingPlan(method="lora", autocast=True, gradient_checkpointing=False)) == 0  # they are saved
    # the forward phase is the non-autocast-cache forward + the cache (the terms of each moment add up)
    plain = TrainingPlan(method="full", optimizer="sgd", autocast=True, seq_len=256)
    forward = {p.name: p.bytes for p in estimate(model, plain).phases}["forward"]
    assert forward >= cache(plain) + estimate(model, plain).params.base * 4


def test_without_checkpointing_every_layer_keeps_its_frozen_weight_copies() -> None:
    """LoRA over fp32 weights under autocast keeps a 16-bit copy of every frozen weight for backward: the activations
    grow by at least those copies against the same plan's non-autocast saved set, in 16-bit."""
    model = spec(MODEL)
    plan = TrainingPlan(method="lora", gradient_checkpointing=False, seq_len=512)
    mixed = estimate(model, plan.model_copy(update={"autocast": True}))
    linear = [g for g in model.groups if g.kind == "linear" and (g.in_layers or g.output_layer)]
    copies = sum(g.count * g.in_features * g.out_features * 2 for g in linear)
    assert _term(mixed, "activation_bytes") > copies
    assert not any("autocast" in n for n in mixed.notes)


def test_fused_experts_say_their_copies_are_not_counted() -> None:
    est = estimate(spec("Qwen/Qwen3-30B-A3B"), TrainingPlan(method="lora", autocast=True))
    assert any("fused 3-D expert tensors are not counted" in n for n in est.notes)
