"""FSDP1's MixedPrecision (app/core/fsdp1_mp.py): gathers and flat gradients in the param dtype, a unit's
reduce-scatter from its 16-bit flat gradient to the fp32 cast of its new shard. The CPU-rank points are
calibration/results/cpu-matrix-multi-fsdp1-mp.store.jsonl, held by tests/calibration/test_shipped_accuracy.py."""

from __future__ import annotations

from typing import Any

import pytest

from app.calibration.distributed import check_distributed_plan
from app.core import estimate as E
from app.core.fsdp1_mp import mp_reduce_bytes, unsharded_bytes
from app.core.plan import TrainingPlan
from app.core.sharding import ShardedMoments
from app.errors import CalibrationError
from tests.configs import spec

LLAMA = "meta-llama/Llama-2-7b-hf"
FULL = {"method": "full", "optimizer": "adamw", "sharding": "fsdp", "fsdp_version": 1, "gpus": 8}
G = 8_000_000  # one unit's gradient, fp32 bytes


def _sharded(**fields: Any) -> ShardedMoments:
    plan = TrainingPlan(**{**FULL, **fields})
    _plan, _adj, _tensors, terms = E._prepared(spec(LLAMA), plan)
    return terms.sharded


def test_without_the_policy_nothing_changes() -> None:
    plan = TrainingPlan(**FULL)
    assert unsharded_bytes(plan, G) == G and mp_reduce_bytes(plan, G) == 0
    assert _sharded().mp_reduce == (0, 0, 0)
    fsdp2 = TrainingPlan(**{**FULL, "fsdp_version": 2, "fsdp_mixed_precision": True})
    assert mp_reduce_bytes(fsdp2, G) == 0


def test_a_unit_is_gathered_in_bf16_over_its_fp32_shard() -> None:
    plain, mixed = _sharded(), _sharded(fsdp_mixed_precision=True)
    # bf16 weights gathered either way: the fp32 shards the policy keeps gather into the same bf16 FlatParameter
    assert mixed.forward_layer == pytest.approx(plain.forward_layer, rel=1e-3)
    assert mixed.first_cat == pytest.approx(plain.first_cat, rel=1e-3)


@pytest.mark.parametrize(
    ("reduce", "expected"),
    [
        # flat bf16 G/2, gloo's copy G/2, new bf16 shard G/16, its fp32 cast G/8
        ("param", G // 2 + G // 2 + G // 16 + G // 8),
        # flat bf16 G/2, its fp32 cast G, gloo's copy G, the new fp32 shard G/8
        ("fp32", G // 2 + G + G + G // 8),
    ],
)
def test_a_units_reduce_scatter_from_the_flat_gradient_to_the_fp32_shard(reduce: str, expected: int) -> None:
    plan = TrainingPlan(**FULL, fsdp_mixed_precision=True, fsdp_reduce_dtype=reduce)
    assert mp_reduce_bytes(plan, G) == expected
    assert _sharded(fsdp_mixed_precision=True, fsdp_reduce_dtype=reduce).mp_reduce[0] > 0


def test_lora_has_no_layer_reduce_moment_and_the_harness_refuses_it() -> None:
    lora = {"method": "lora", "targets": "q_proj,v_proj", "fsdp_mixed_precision": True}
    assert _sharded(**lora).mp_reduce == (0, 0, 0)
    with pytest.raises(CalibrationError, match="PEFT casts lora_A's input"):
        check_distributed_plan(TrainingPlan(**{**FULL, **lora, "device": "cpu", "gpus": 2}))
