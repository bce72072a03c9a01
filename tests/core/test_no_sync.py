"""Gradient accumulation under FSDP as transformers' Trainer runs it (app/core/sharding.py no_sync_gradient_bytes,
app/core/estimate.py no_sync_terms): no sync before an accumulation window's last micro-batch, so every unit's
gradient stays unsharded on each rank through the window. The CPU-rank runs it was measured on
(calibration/cpu-matrix-multi-accum.toml) are held by tests/calibration/test_shipped_accuracy.py; these check what
the term counts and where it applies."""

from __future__ import annotations

from typing import Any

import pytest

from app.core import estimate as E
from app.core.plan import TrainingPlan
from tests.configs import spec

LLAMA = "meta-llama/Llama-2-7b-hf"
FULL = {"method": "full", "optimizer": "adamw", "sharding": "fsdp", "gpus": 8, "grad_accum_steps": 4}


def _terms(**fields: Any) -> E.StepTerms:
    plan = TrainingPlan(**{**FULL, **fields})
    return E._prepared(spec(LLAMA), plan)[3]


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_accumulates_every_gradient_unsharded(version: int) -> None:
    terms = _terms(fsdp_version=version)
    inv = E._prepared(spec(LLAMA), TrainingPlan(**FULL))[2].inventory
    assert terms.accumulated == inv.grads.layers + inv.grads.other  # bf16, the whole model's, on every rank
    assert terms.accumulated > 7 * terms.resident.grads  # against the 1/8 shard a synced step keeps


def test_under_the_mixed_precision_policy_the_accumulated_gradient_is_in_the_reduce_dtype() -> None:
    param = _terms(fsdp_mixed_precision=True, fsdp_reduce_dtype="param").accumulated
    assert _terms(fsdp_mixed_precision=True, fsdp_reduce_dtype="fp32").accumulated == 2 * param


@pytest.mark.parametrize(
    "fields",
    [{"grad_accum_steps": 1}, {"sharding": "ddp"}, {"sharding": "zero3"}, {"gpus": 1, "sharding": "none"}],
)
def test_no_unsharded_accumulation_outside_fsdp_accumulating(fields: dict[str, Any]) -> None:
    terms = _terms(**fields)
    assert terms.accumulated in (0, terms.resident.grads)  # nothing, or every (unsharded anyway) gradient


def test_the_estimate_grows_by_about_the_unsharded_gradients() -> None:
    plan = TrainingPlan(**FULL)
    synced = E.estimate(spec(LLAMA), plan.model_copy(update={"grad_accum_steps": 1})).peak_allocated_bytes
    accumulating = E.estimate(spec(LLAMA), plan).peak_allocated_bytes
    terms = _terms()
    assert accumulating - synced >= 0.8 * (terms.accumulated - terms.resident.grads)
