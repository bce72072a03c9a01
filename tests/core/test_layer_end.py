"""FSDP2 full fine-tuning's layer-backward-end moment (estimate.layer_end_bytes): the layer's whole unsharded gradient
beside the last layer's kept reduce-scatter input, and with checkpointing the attention half of its recomputed set.
The shipped CPU-rank points it was read from (calibration/cpu-matrix-multi-offload.toml) are held by
tests/calibration/test_shipped_accuracy.py; these check where the moment applies and what it counts."""

from __future__ import annotations

from typing import Any

import pytest

from app.core import estimate as E
from app.core.plan import TrainingPlan
from tests.configs import spec

LLAMA = "meta-llama/Llama-2-7b-hf"
FULL = {"method": "full", "optimizer": "adamw", "sharding": "fsdp", "gpus": 8}


def _layer_end(**fields: Any) -> tuple[int, int]:
    plan = TrainingPlan(**{**FULL, **fields})
    _plan, _adj, _tensors, terms = E._prepared(spec(LLAMA), plan)
    return terms.layer_end


def test_full_fsdp2_counts_one_whole_layer_gradient_and_the_recomputed_attention_half() -> None:
    grads, attention = _layer_end()
    h, i = 4096, 11008
    assert grads == pytest.approx(2 * (4 * h * h + 3 * h * i), rel=0.001)  # bf16, unsharded
    assert attention > 0
    assert _layer_end(gradient_checkpointing=False)[1] == 0  # the attention half is among the activations then


def test_under_mixed_precision_the_gradient_is_in_the_param_dtype() -> None:
    assert _layer_end(fsdp_mixed_precision=True)[0] == pytest.approx(_layer_end()[0], rel=0.001)


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "lora", "optimizer": "paged_adamw_32bit"},
        {"fsdp_version": 1},
        {"sharding": "ddp"},
        {"gpus": 1, "sharding": "none"},
    ],
)
def test_no_such_moment_outside_fsdp2_full_fine_tuning(fields: dict[str, Any]) -> None:
    assert _layer_end(**fields) == (0, 0)
