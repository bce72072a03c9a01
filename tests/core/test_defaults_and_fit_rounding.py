"""Defaults follow the method; a bitsandbytes optimizer under ZeRO gets the real stack's note; inverse planning's
nearest common values are rounded down and still fit."""

from __future__ import annotations

import pytest

from app.catalog import load_spec
from app.core.estimate import estimate
from app.core.fit import common_value, fit, power_of_two_at_most
from app.core.gpus import budget_bytes
from app.core.plan import TrainingPlan
from app.core.spec import ModelSpec
from app.core.tiers import find_tier


def llama() -> ModelSpec:
    spec = load_spec("meta-llama/Llama-2-7b-hf")
    assert spec is not None
    return spec


def test_the_optimizer_default_follows_the_method() -> None:
    assert TrainingPlan(method="full").optimizer == "adamw"
    assert TrainingPlan.model_validate({"method": "full", "optimizer": None}).optimizer == "adamw"
    assert TrainingPlan(method="lora").optimizer == "paged_adamw_32bit"
    assert TrainingPlan().optimizer == "paged_adamw_32bit"
    assert TrainingPlan(method="full", optimizer="paged_adamw_8bit").optimizer == "paged_adamw_8bit"  # as given


def test_a_paged_optimizer_under_zero3_gets_the_stacks_note_not_a_refusal() -> None:
    plan = TrainingPlan(method="full", optimizer="paged_adamw_32bit", gpus=8, sharding="zero3")
    notes = estimate(llama(), plan).notes
    (note,) = [n for n in notes if "DeepSpeed" in n]
    assert "no `optimizer` section" in note and "zero_allow_untested_optimizer" in note
    offload = estimate(llama(), plan.model_copy(update={"offload": True})).notes
    assert any("CPU implementation" in n for n in offload)
    assert not any("DeepSpeed" in n for n in estimate(llama(), TrainingPlan(method="full", sharding="zero3")).notes)


@pytest.mark.parametrize(
    ("knob", "value", "expected"),
    [
        ("seq_len", 2385, (2304, "a multiple of 256")),
        ("seq_len", 255, (128, "a multiple of 128")),
        ("seq_len", 100, (64, "a power of two")),
        ("seq_len", 4096, (4096, "a multiple of 256")),
        ("rank", 39, (32, "a power of two")),
        ("rank", 64, (64, "a power of two")),
        ("batch_size", 5, (4, "a power of two")),
        ("rank", 1, (1, "a power of two")),
    ],
)
def test_common_values_round_down(knob: str, value: int, expected: tuple[int, str]) -> None:
    assert common_value(knob, value) == expected  # type: ignore[arg-type]


def test_power_of_two_at_most() -> None:
    assert [power_of_two_at_most(n) for n in (1, 2, 3, 7, 8, 9, 1000)] == [1, 2, 2, 4, 8, 8, 512]


def test_inverse_planning_gives_common_values_that_still_fit() -> None:
    tier = find_tier("RTX 4090")
    assert tier is not None
    plan = TrainingPlan(method="lora")
    result = fit(llama(), plan, tier, 0.1)
    budget = budget_bytes(tier, 0.1)
    for limit in (result.batch_size, result.seq_len, result.rank):
        assert limit.value is not None and limit.common_value is not None
        assert limit.common_value <= limit.value
        rounded = plan.model_copy(update={limit.field: limit.common_value})
        assert estimate(llama(), rounded).device_bytes <= budget, limit.field
    assert result.seq_len.common_value % 256 == 0  # type: ignore[operator]
    assert result.rank.common_value & (result.rank.common_value - 1) == 0  # type: ignore[operator]


def test_sgd_and_adafactor_under_zero_are_measured_terms_not_a_caveat() -> None:
    """calibration/cpu-matrix-zero-optim.toml measured them (the step's fp32 cast, Adafactor's two updates): no
    margin note any more, and their step terms carry CPU-rank evidence."""
    for optimizer, sharding in (("sgd", "zero2"), ("adafactor", "zero3")):
        plan = TrainingPlan(method="full", optimizer=optimizer, gpus=8, sharding=sharding)
        result = estimate(llama(), plan)
        assert not any("probe runs" in n or "margin" in n for n in result.notes)
        steps = [t for t in result.breakdown if t.term in ("gradient_bytes", "optimizer_temp_bytes")]
        assert steps and all(t.evidence == "measured-cpu-ranks" for t in steps)
