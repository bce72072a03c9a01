"""FSDP1 full fine-tuning's gradient pieces (app/core/fsdp1.py): at a layer's backward peak only the gradients made
by then (the down projections') beside the transients, the flat gradient's concatenation with the layer still
gathered (the last layer's, layer 0's). The shipped CPU-rank points they were read from (the old +7.85 % miss of
calibration/cpu-validation-multi-fsdp1-prefetch.toml and two llama points) and the two validation matrices measured
after them are held by tests/calibration/test_shipped_accuracy.py; these check what the terms count and where."""

from __future__ import annotations

from typing import Any

import pytest

from app.core import estimate as E
from app.core.fsdp1 import layer_grad_pieces
from app.core.plan import TrainingPlan
from app.core.sharding import ShardedMoments
from tests.configs import spec

LLAMA = "meta-llama/Llama-2-7b-hf"
FULL = {"method": "full", "optimizer": "adamw", "sharding": "fsdp", "fsdp_version": 1, "gpus": 8}
H, INTER = 4096, 11008
LAYER = 4 * H * H + 3 * H * INTER + 2 * H  # q, k, v, o, gate, up, down and the two norms


def _sharded(**fields: Any) -> ShardedMoments:
    plan = TrainingPlan(**{**FULL, **fields})
    _plan, _adj, _tensors, terms = E._prepared(spec(LLAMA), plan)
    return terms.sharded


def test_the_pieces_at_the_peak_are_the_down_projection_of_all_the_layer() -> None:
    assert layer_grad_pieces(spec(LLAMA), TrainingPlan(**FULL)) == (H * INTER, LAYER)


@pytest.mark.parametrize(
    "fields",
    [{"attn": "eager"}, {"method": "lora", "optimizer": "paged_adamw_32bit"}, {"method": "qlora"}],
)
def test_eager_attention_and_adapters_count_the_whole_gradient(fields: dict[str, Any]) -> None:
    assert layer_grad_pieces(spec(LLAMA), TrainingPlan(**{**FULL, **fields})) == (1, 1)


def test_a_layers_backward_counts_only_its_down_projections_gradient() -> None:
    sharded = _sharded()
    whole = sharded.first_cat // 2  # G_l: one layer's bf16 gradient
    assert whole == pytest.approx(2 * LAYER, rel=0.001)
    assert sharded.reduce_scatter_layer == pytest.approx(whole * H * INTER / LAYER, rel=0.001)
    assert _sharded(attn="eager").reduce_scatter_layer == whole


def test_the_last_layer_stays_gathered_at_its_concatenation_but_a_lora_one_is_resharded() -> None:
    for prefetch in ("none", "post", "pre"):
        assert _sharded(fsdp_backward_prefetch=prefetch).backward_last_done is None
    lora = _sharded(method="lora", optimizer="paged_adamw_32bit", fsdp_backward_prefetch="none")
    assert lora.backward_last_done is not None and lora.backward_last_done < lora.backward_last


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "lora", "optimizer": "paged_adamw_32bit"},
        {"fsdp_version": 2},
        {"sharding": "ddp", "fsdp_version": 2},
    ],
)
def test_layer_0s_concatenation_is_fsdp1_full_fine_tuning_alone(fields: dict[str, Any]) -> None:
    assert _sharded(**fields).first_cat == 0
