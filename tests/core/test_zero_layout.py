"""ZeRO-2's parameter layout rank by rank (app/core/zero_layout.py), held to what the allocation-site probe read on 8
CPU ranks (calibration/cpu-matrix-zero-flatten.toml: mistral, 3 layers, hidden 256, vocabulary 2048): the contiguous
gradient buffer is whole parameters, twice from the second micro-batch's backward, and the step's norm copies the
largest slice to fp64."""

from __future__ import annotations

from app.core.adapters import adapted_groups
from app.core.estimate import estimate
from app.core.plan import TrainingPlan
from app.core.quant import rounded
from app.core.spec import ModelSpec
from app.core.zero import zero_terms
from app.core.zero_layout import (
    backward_partition_bytes,
    grad_norm_bytes,
    grads_in_partition_bytes,
    parameter_order,
    partition_layout,
    step_cast_bytes,
)
from app.inventory.cache import cached_spec
from tests.core.test_zero import tiny

MISTRAL = {
    "model_type": "mistral",
    "architectures": ["MistralForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 896,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "max_position_embeddings": 2048,
}
PLAN = {"method": "full", "sharding": "zero2", "zero_buckets": "auto", "device": "cpu", "gpus": 8}


def mistral() -> ModelSpec:
    return cached_spec(MISTRAL, model_id="mistral", source="file", cache_dir=None)


def test_the_order_is_module_order_layer_by_layer() -> None:
    params = parameter_order(mistral(), (), "full")
    assert sum(p.numel for p in params) == 3_606_272 and len(params) == 30
    assert params[0].numel == 2048 * 256 and params[0].layer == -1  # the embedding first
    # layer 0: q, k, v, o, gate, up, down, the two norms; then layer 1
    assert [p.numel for p in params[1:11]] == [65536, 16384, 16384, 65536, 229376, 229376, 229376, 256, 256, 65536]
    assert [p.layer for p in params[-3:]] == [2, 3, 3]  # the last layer's norm, then the final norm and lm_head


def test_the_worst_ranks_buffer_is_the_whole_parameters_its_partition_intersects() -> None:
    layout = partition_layout(parameter_order(mistral(), (), "full"), 8, 3)
    # rank 6: the last layer's up_proj and down_proj, the norms and the start of lm_head (probe: 3,935,232 B in fp32)
    assert layout[6].whole == 983_808 and layout[6].tail
    assert layout[0].whole == 524_288 and not layout[0].tail  # rank 0: the embedding only, reduced last
    assert layout[0].largest_slice == 450_784  # its partition's share of the embedding
    assert grads_in_partition_bytes(layout, 4) == 3_935_232
    # accumulation: the previous micro-batch's buffer beside the new one (probe: 7,870,464 B at step 2's backward)
    assert backward_partition_bytes(layout, 4, accumulation=True) == 7_870_464
    assert backward_partition_bytes(layout, 4, accumulation=False) == 3_935_232


def test_the_norm_copies_the_largest_slice_to_fp64_beside_the_buffer() -> None:
    layout = partition_layout(parameter_order(mistral(), (), "full"), 8, 3)
    # bf16: rank 0's optimizer peak held the embedding's gradient 1,048,576 B and 3,607,040 B of fp64 copy and norm
    assert grad_norm_bytes(layout, 2) == 1_048_576 + 3_607_040
    # fp32: the cast is the flattened partition itself, so only the buffer is beside the fp32 gradient
    assert step_cast_bytes(layout, 4, 450_784) == 3_935_232
    assert step_cast_bytes(layout, 2, 450_784) == rounded(2 * 983_808) + rounded(2 * 450_784)


def test_the_estimate_reaches_the_measured_worst_rank() -> None:
    """mistral-88dd053f (fp32, SGD, accumulation 2, checkpointing): measured 33,847,808 B on rank 6, -14.8 % with
    `d·Pn`; mistral-85d73950 (bf16, AdamW): 17,533,952 B, -7.4 %."""
    fp32 = TrainingPlan(
        **PLAN,
        dtype="fp32",
        optimizer="sgd",
        grad_accum_steps=2,
        gradient_checkpointing=True,
        seq_len=128,
        batch_size=2,
    )
    bf16 = TrainingPlan(**PLAN, dtype="bf16", optimizer="adamw", gradient_checkpointing=True, seq_len=128)
    for plan, measured in ((fp32, 33_847_808), (bf16, 17_533_952)):
        assert abs(estimate(mistral(), plan).room_peak_bytes / measured - 1) < 0.05


def test_lora_lays_out_its_adapters_and_offload_keeps_its_own_terms() -> None:
    plan = TrainingPlan(**{**PLAN, "method": "lora"}, dtype="bf16", rank=8, dropout=0.0)
    adapted, _ = adapted_groups(tiny(), plan)
    params = parameter_order(tiny(), adapted, "lora")
    assert sum(p.numel for p in params) == sum(a.params for a in adapted)
    assert params[0].numel == 8 * 256 and params[0].layer == 0  # layer 0's q_proj lora_A first
    offload = zero_terms(tiny(), TrainingPlan(**PLAN, dtype="bf16", offload=True), ())
    assert offload is not None and offload.grad_norm == 0 and offload.cast == 0
