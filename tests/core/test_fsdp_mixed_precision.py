"""FSDP2's MixedPrecisionPolicy over fp32 shards: fp32 weights, gradients and states; gathers in the param dtype."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.catalog import load_spec
from app.core.estimate import _prepared, estimate
from app.core.plan import TrainingPlan
from app.core.result import Estimate
from app.core.sharding import in_param_dtype, in_reduce_dtype, layer_param_bytes, root_param_bytes

LLAMA = "meta-llama/Llama-2-7b-hf"
FULL = {"method": "full", "optimizer": "adamw", "gpus": 8, "sharding": "fsdp", "seq_len": 2048}


def _estimate(**fields: Any) -> Estimate:
    spec = load_spec(LLAMA)
    assert spec is not None
    return estimate(spec, TrainingPlan(**{**FULL, **fields}))


def _terms(est: Estimate) -> dict[str, int]:
    return {t.term: t.bytes for t in est.breakdown}


def test_the_policy_is_off_by_default_and_leaves_the_plan_as_it_was() -> None:
    plan = TrainingPlan(**FULL)
    assert (plan.fsdp_mixed_precision, plan.fsdp_reduce_dtype, plan.weight_dtype) == (False, "param", "bf16")
    assert in_param_dtype(plan, 1000) == in_reduce_dtype(plan, 1000) == 1000


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"sharding": "ddp"}, "use sharding fsdp or fsdp_grad_op"),
        ({"sharding": "zero3"}, "use sharding fsdp or fsdp_grad_op"),
        ({"dtype": "fp32"}, "use dtype bf16 or fp16"),
        ({"method": "qlora"}, "method lora or full"),
    ],
)
def test_the_policy_is_refused_where_it_does_not_apply(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        TrainingPlan(**{**FULL, "fsdp_mixed_precision": True, **fields})


def test_a_reduce_dtype_needs_the_policy() -> None:
    with pytest.raises(ValidationError, match="turn fsdp_mixed_precision on"):
        TrainingPlan(**{**FULL, "fsdp_reduce_dtype": "fp32"})


def test_shards_are_fp32_and_gathers_are_in_the_param_dtype() -> None:
    """Against the plain bf16 plan: the sharded weights and every state double (fp32 masters, accelerate's upcast),
    the gathered root and layers (`R`, `W_l`) are the same 16-bit bytes."""
    spec = load_spec(LLAMA)
    assert spec is not None
    plain = _prepared(spec, TrainingPlan(**FULL))
    mixed = _prepared(spec, TrainingPlan(**FULL, fsdp_mixed_precision=True))
    inv_plain, inv_mixed = plain[2].inventory, mixed[2].inventory
    assert mixed[3].resident.weights == pytest.approx(2 * plain[3].resident.weights, rel=1e-3)
    assert mixed[3].resident.grads == pytest.approx(2 * plain[3].resident.grads, rel=1e-3)
    assert root_param_bytes(inv_mixed, mixed[0]) == pytest.approx(root_param_bytes(inv_plain, plain[0]), rel=1e-3)
    assert layer_param_bytes(inv_mixed, 32, mixed[0]) == pytest.approx(layer_param_bytes(inv_plain, 32), rel=1e-3)
    assert mixed[3].sharded.first_gather == pytest.approx(plain[3].sharded.first_gather, rel=1e-3)


def test_an_fp32_reduce_scatter_input_is_twice_the_param_dtype_one() -> None:
    spec = load_spec(LLAMA)
    assert spec is not None
    param = _prepared(spec, TrainingPlan(**FULL, fsdp_mixed_precision=True))[3].sharded
    fp32 = _prepared(spec, TrainingPlan(**FULL, fsdp_mixed_precision=True, fsdp_reduce_dtype="fp32"))[3].sharded
    assert fp32.reduce_scatter_layer == pytest.approx(2 * param.reduce_scatter_layer, rel=1e-6)
    # the unsharded gradients stay in the param dtype: G_l·2/4 + G_l·4/4 against G_l·2/4 + G_l·2/4
    assert fp32.reduce_scatter_peak == pytest.approx(1.5 * param.reduce_scatter_peak, rel=1e-6)
    assert fp32.root_grads == param.root_grads


@pytest.mark.parametrize("units", ["accelerate", "layers"])
def test_the_policy_costs_more_per_gpu_than_bf16_shards_and_no_more_than_fp32_compute(units: str) -> None:
    """Under accelerate's units nothing of the root is held through backward, so at 8 GPUs both fp32 plans peak at
    the optimizer step, where the policy's fp32 shards, gradients and states are fp32 compute's: equal there; the
    layers-then-model units hold the root through backward, gathered in bf16 under the policy: less."""
    bf16 = _estimate(fsdp_units=units).device_bytes
    mixed = _estimate(fsdp_mixed_precision=True, fsdp_units=units).device_bytes
    fp32 = _estimate(dtype="fp32", fsdp_units=units).device_bytes
    assert bf16 < mixed <= fp32
    assert mixed < fp32 or units == "accelerate"


def test_the_policy_is_measured_on_cpu_ranks_under_fsdp2_and_fsdp1_full_fine_tuning() -> None:
    """bf16 (cpu-matrix-multi-mp), fp16 and CPU offload (cpu-matrix-multi-mp2) ran on CPU ranks under FSDP2, FSDP1's
    MixedPrecision in bf16 and fp16 for full fine-tuning (cpu-matrix-multi-fsdp1-mp, cpu-matrix-multi-fsdp1-mp-fp16);
    LoRA under FSDP1's fails in PEFT's forward without autocast, so its terms stay first-principles."""
    measured: list[dict[str, Any]] = [{}, {"dtype": "fp16"}, {"offload": True}, {"fsdp_version": 1}]
    measured.append({"fsdp_version": 1, "dtype": "fp16"})
    for fields in measured:
        ev = {t.term: t.evidence for t in _estimate(fsdp_mixed_precision=True, **fields).breakdown}
        # offload moves the weights, states and (accelerate's tail reduce-scattered first) every gradient shard off
        assert ev.get("gradient_bytes", "offloaded" if fields.get("offload") else None) in (
            "measured-cpu-ranks",
            "offloaded",
        ), fields
        assert all(v == "measured-cpu-ranks" for k, v in ev.items() if not k.startswith(("cu", "allocator"))), fields
    lora = {"method": "lora", "optimizer": "adamw", "targets": "q_proj,v_proj"}
    for fields in ({"fsdp_version": 1, "dtype": "fp16", **lora}, {"fsdp_version": 1, **lora}):
        ev = {t.term: t.evidence for t in _estimate(fsdp_mixed_precision=True, **fields).breakdown}
        assert set(ev.values()) == {"first-principles"}, fields


def test_the_collectives_move_the_param_and_reduce_dtypes_not_the_fp32_shards() -> None:
    """The time model's traffic: bf16 gathers and bf16 reduce-scatters move what the bf16 plan's do; an fp32
    reduce-scatter moves twice the gradients."""
    from app.core.throughput import communication_bytes

    spec = load_spec(LLAMA)
    assert spec is not None
    plain = communication_bytes(spec, TrainingPlan(**FULL), 8)
    mixed = communication_bytes(spec, TrainingPlan(**FULL, fsdp_mixed_precision=True), 8)
    fp32 = communication_bytes(spec, TrainingPlan(**FULL, fsdp_mixed_precision=True, fsdp_reduce_dtype="fp32"), 8)
    assert mixed == pytest.approx(plain, rel=1e-3)
    assert fp32 == pytest.approx(plain * 4 / 3, rel=1e-3)  # 2·W + G against 2·W + 2·G, W = G for full fine-tuning


def test_the_breakdown_and_the_plan_line_say_the_shards_are_fp32() -> None:
    from app.exports.report import plan_line

    est = _estimate(fsdp_mixed_precision=True, fsdp_reduce_dtype="fp32")
    note = {t.term: t.note for t in est.breakdown}["base_weight_bytes"]
    assert note == "base model weights (fp32 shards, gathered in bf16 by FSDP2's MixedPrecisionPolicy)"
    assert "fsdp (MixedPrecisionPolicy: fp32 shards, bf16 gathers, reduce fp32)" in plan_line(est)
    assert "MixedPrecisionPolicy" not in plan_line(_estimate())
    fsdp1 = _estimate(fsdp_mixed_precision=True, fsdp_version=1)
    note = {t.term: t.note for t in fsdp1.breakdown}["base_weight_bytes"]
    assert note == "base model weights (fp32 shards, gathered in bf16 by FSDP1's MixedPrecision)"
