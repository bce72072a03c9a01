"""accelerate's `mixed_precision: bf16` over an FSDP mixed-precision policy: fsdp_mixed_precision with autocast.

accelerate 1.16's prepare_model wraps the forward in torch.autocast and then FSDP1 wraps the model with its
MixedPrecision: each unit is gathered in bf16, so autocast's casts of the weights and of the 16-bit stream are no-ops
(`TrainingPlan.autocast_over_fp32` is False); under FSDP1, LoRA's adapters are their own units and PEFT casts their
input to the fp32 shard's dtype, which autocast casts back for lora_A (`step.fsdp1_adapter_casts`). The CPU-rank points
are calibration/results/cpu-matrix-multi-mp-autocast.store.jsonl, held by tests/calibration/test_shipped_accuracy.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.calibration.distributed import check_distributed_plan
from app.core import estimate as E
from app.core.activations import adapter_cast_bytes, adapter_forward_bytes, adapter_recompute_bytes, layer_stack
from app.core.evidence import measured_policy
from app.core.fsdp1 import mp_lora_late_gather
from app.core.plan import TrainingPlan
from app.core.step import fsdp1_adapter_casts, step
from tests.configs import spec

LLAMA = "meta-llama/Llama-2-7b-hf"
BASE = {"optimizer": "adamw", "sharding": "fsdp", "gpus": 8, "seq_len": 1024, "fsdp_mixed_precision": True}
LORA = {"method": "lora", "targets": "all-linear", "dropout": 0.05}


def _plan(**fields: Any) -> TrainingPlan:
    return TrainingPlan(**{**BASE, **fields})


def _peak(plan: TrainingPlan) -> int:
    return E.estimate(spec(LLAMA), plan).peak_allocated_bytes


def test_the_plan_expresses_autocast_over_the_policy_and_weights_stay_fp32() -> None:
    for version in (1, 2):
        plan = _plan(method="full", fsdp_version=version, autocast=True)
        assert plan.autocast and plan.fsdp_mixed_precision and plan.weight_dtype == "fp32"
        assert not plan.autocast_over_fp32  # the policy gathers in bf16: autocast's weight casts are no-ops
    assert TrainingPlan(method="full", autocast=True).autocast_over_fp32  # autocast alone casts the fp32 weights
    with pytest.raises(ValueError, match="lora or full"):
        _plan(method="qlora", autocast=True)


@pytest.mark.parametrize("fields", [{"method": "full"}, LORA, {"method": "full", "fsdp_version": 1}])
def test_autocast_adds_nothing_where_the_gathered_weights_are_already_16_bit(fields: dict[str, Any]) -> None:
    """FSDP2 full and LoRA (the adapters gathered in bf16 with their layer) and FSDP1 full fine-tuning: the same
    estimate as the policy alone (CPU ranks: llama FSDP1 full x2 and FSDP2 full / LoRA x2 read the same peaks within
    0.1 %, cpu-matrix-multi-mp-autocast's probes)."""
    assert _peak(_plan(**fields, autocast=True)) == _peak(_plan(**fields))


def test_lora_under_fsdp1_casts_each_adapted_input_to_fp32_under_autocast() -> None:
    with_autocast = _plan(**LORA, fsdp_version=1, autocast=True)
    assert fsdp1_adapter_casts(with_autocast) and mp_lora_late_gather(with_autocast)
    assert not fsdp1_adapter_casts(_plan(**LORA, autocast=True))  # FSDP2: gathered with the layer
    assert not fsdp1_adapter_casts(_plan(**LORA, fsdp_version=1))  # no autocast: PEFT's forward fails, unchanged
    model = spec(LLAMA)
    x = step(model, with_autocast, E._prepared(model, with_autocast)[2].by_leaf)
    t, i = x.t, x.i
    assert adapter_cast_bytes(x) == t * i * 4 * 2  # down_proj's fp32 cast and dropout's fp32 output
    assert adapter_forward_bytes(x) == adapter_cast_bytes(x) + t * i * (2 + 4) + t * x.h * 2
    assert adapter_recompute_bytes(x) == t * x.h * 2 + adapter_forward_bytes(x) - t * i * 4
    cpu = [_plan(**LORA, fsdp_version=1, device="cpu", autocast=a) for a in (True, False)]
    saved = [layer_stack(model, p, E._prepared(model, p)[2].by_leaf).saved for p in cpu]
    assert saved[0] > saved[1]  # the CPU path's fp32 mask beside the 16-bit cast for lora_A, where it was bf16
    without = cpu[1]
    stacks = [layer_stack(model, p, E._prepared(model, p)[2].by_leaf) for p in (with_autocast, without)]
    assert stacks[0].kinds[0][1].recompute_transient > stacks[1].kinds[0][1].recompute_transient
    assert _peak(with_autocast) >= _peak(without.model_copy(update={"device": "cuda"}))


def test_the_harness_runs_lora_under_fsdp1_mixed_precision_with_autocast_only() -> None:
    cpu = {**LORA, "fsdp_version": 1, "device": "cpu", "gpus": 2}
    check_distributed_plan(_plan(**cpu, autocast=True))
    with pytest.raises(Exception, match="or autocast"):
        check_distributed_plan(_plan(**cpu))


def test_the_layout_counts_as_measured_on_cpu_ranks() -> None:
    assert measured_policy(_plan(**LORA, fsdp_version=1, autocast=True))
    assert measured_policy(_plan(method="full", fsdp_version=1, autocast=True))
    assert not measured_policy(_plan(**LORA, fsdp_version=1))  # fails in PEFT's forward: no run
    assert measured_policy(_plan(**LORA, fsdp_version=1, dtype="fp16", autocast=True))  # cpu-matrix-multi-fsdp1-mp-fp16
    assert not measured_policy(_plan(**LORA, dtype="fp16", autocast=True))  # FSDP2 fp16 under autocast: not run
